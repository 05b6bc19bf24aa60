//! Read access to the code being planned: the process's own text, a kernel's text, a test
//! buffer, or a file.

use core::fmt;
use core::ops::Range;

/// Reads bytes of the code being planned or patched.
pub trait Memory {
    /// Copies `buf.len()` bytes starting at `addr` into `buf`, or fails, naming the first
    /// address that cannot be read. Never faults.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Reads each of `ranges` into `out`, one after another (`out.len()` is the sum of their
    /// lengths). Readers that go through a system call do it in few calls.
    fn read_each(&self, ranges: &[Range<u64>], out: &mut [u8]) -> Result<(), MemoryError> {
        let mut at = 0;
        for r in ranges {
            let (addr, len) = start_len(r);
            let buf = out.get_mut(at..at + len).ok_or(MemoryError { addr })?;
            self.read(addr, buf)?;
            at += len;
        }
        Ok(())
    }
}

/// A range's start and length, as [`Memory::read_each`] reads it.
pub(crate) fn start_len(r: &Range<u64>) -> (u64, usize) {
    (r.start, r.end.saturating_sub(r.start) as usize)
}

/// A read that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// First address that could not be read.
    pub addr: u64,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read memory at {:#x}", self.addr)
    }
}

/// Checks that every byte of `addr..addr + len` lies inside `ranges`; returns the first address
/// that does not.
pub(crate) fn check_within(
    ranges: &[Range<u64>],
    addr: u64,
    len: usize,
) -> Result<(), MemoryError> {
    let end = addr.checked_add(len as u64).ok_or(MemoryError { addr })?;
    let mut at = addr;
    while at < end {
        let r = ranges
            .iter()
            .find(|r| r.contains(&at))
            .ok_or(MemoryError { addr: at })?;
        at = r.end;
    }
    Ok(())
}

/// Reads the memory of the running program, inside ranges the creator vouches for.
///
/// A read outside the ranges is an error, never a dereference.
#[derive(Clone, Copy, Debug)]
pub struct LiveMemory<'a> {
    ranges: &'a [Range<u64>],
}

impl<'a> LiveMemory<'a> {
    /// A reader of `ranges` of this address space.
    ///
    /// # Safety
    ///
    /// Every byte of every range must be mapped and readable, and hold no data another thread
    /// writes without synchronisation, for as long as this reader is used.
    pub unsafe fn new(ranges: &'a [Range<u64>]) -> Self {
        Self { ranges }
    }
}

impl Memory for LiveMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        check_within(self.ranges, addr, buf.len())?;
        // SAFETY: the range lies inside the creator's ranges, which it vouched are readable.
        unsafe {
            crate::short::copy_small(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }
}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }

    fn read_each(&self, ranges: &[Range<u64>], out: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read_each(ranges, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_memory_reads_only_inside_its_ranges() {
        static DATA: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let base = DATA.as_ptr() as u64;
        let ranges = [base..base + 4, base + 4..base + 6];
        // SAFETY: the ranges are inside a static.
        let mem = unsafe { LiveMemory::new(&ranges) };
        let mut b = [0u8; 4];
        mem.read(base, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        let mut two = [0u8; 2];
        mem.read(base + 4, &mut two).unwrap();
        assert_eq!(two, [5, 6]);
        // Adjacent ranges cover a read across both; past their end is refused.
        mem.read(base + 2, &mut b).unwrap();
        assert_eq!(b, [3, 4, 5, 6]);
        assert_eq!(
            mem.read(base + 4, &mut b),
            Err(MemoryError { addr: base + 6 })
        );
        assert_eq!(
            mem.read(base + 6, &mut two),
            Err(MemoryError { addr: base + 6 })
        );
        assert_eq!(
            mem.read(u64::MAX - 1, &mut b),
            Err(MemoryError { addr: u64::MAX - 1 })
        );
    }
}
