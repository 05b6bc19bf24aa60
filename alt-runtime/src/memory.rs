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
    fn read_each<S: Spans + ?Sized>(&self, ranges: &S, out: &mut [u8]) -> Result<(), MemoryError> {
        let mut at = 0;
        for i in 0..ranges.len() {
            let (addr, len) = start_len(&ranges.span(i));
            let buf = room(out, at, len).ok_or(MemoryError { addr })?;
            self.read(addr, buf)?;
            at += len;
        }
        Ok(())
    }

    /// Whether the bytes at `addr` are `expected`, compared where they lie, by a reader that
    /// reads them with plain copies; `None` (the default) where that cannot be, or the bytes
    /// cannot be read: then the caller reads them (many ranges at a time, through a reader's
    /// system call), which also names what cannot be read.
    fn compare_in_place(&self, addr: u64, expected: &[u8]) -> Option<bool> {
        let _ = (addr, expected);
        None
    }
}

/// Whether the `expected.len()` bytes at `addr` are `expected`.
///
/// # Safety
///
/// The bytes must be mapped and readable, and no one may write them while they are compared.
pub(crate) unsafe fn holds(addr: u64, expected: &[u8]) -> bool {
    if expected.is_empty() {
        // Nothing to compare (and `addr` may be anything, even null: no slice is made).
        return true;
    }
    // SAFETY: the caller's contract; not empty, so `addr` lies in a mapping (not null).
    let now = unsafe { core::slice::from_raw_parts(addr as usize as *const u8, expected.len()) };
    crate::short::same(now, expected)
}

/// Address ranges in order, read one at a time: a slice of ranges, or a batch of a writer's
/// chunks ([`crate::writer::Chunk`]) read as the ranges they cover, so that a batch is read or
/// kept clear of without being copied into a list of ranges first.
pub trait Spans {
    /// How many ranges.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th range (`i < len()`).
    fn span(&self, i: usize) -> Range<u64>;
}

impl Spans for [Range<u64>] {
    fn len(&self) -> usize {
        <[Range<u64>]>::len(self)
    }

    fn span(&self, i: usize) -> Range<u64> {
        self[i].clone()
    }
}

impl<const N: usize> Spans for [Range<u64>; N] {
    fn len(&self) -> usize {
        N
    }

    fn span(&self, i: usize) -> Range<u64> {
        self[i].clone()
    }
}

#[cfg(feature = "alloc")]
impl Spans for alloc::vec::Vec<Range<u64>> {
    fn len(&self) -> usize {
        <[Range<u64>]>::len(self)
    }

    fn span(&self, i: usize) -> Range<u64> {
        self[i].clone()
    }
}

/// The ranges of `spans` at `at`: a part of a batch, read on its own.
#[cfg(feature = "alloc")]
pub(crate) struct Window<'a, S: ?Sized> {
    /// The whole batch.
    pub spans: &'a S,
    /// The indices of the part.
    pub at: Range<usize>,
}

#[cfg(feature = "alloc")]
impl<S: Spans + ?Sized> Spans for Window<'_, S> {
    fn len(&self) -> usize {
        self.at.len()
    }

    fn span(&self, i: usize) -> Range<u64> {
        self.spans.span(self.at.start + i)
    }
}

/// Whether `addr` lies inside one of `spans`, which are sorted and do not overlap (a binary
/// search).
#[cfg(feature = "std")]
pub(crate) fn inside_sorted<S: Spans + ?Sized>(spans: &S, addr: u64) -> bool {
    let (mut lo, mut hi) = (0, spans.len());
    // The first span that ends after `addr`.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if spans.span(mid).end <= addr {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo < spans.len() && spans.span(lo).contains(&addr)
}

/// The `len` bytes of `out` at `at`, if it has them.
pub(crate) fn room(out: &mut [u8], at: usize, len: usize) -> Option<&mut [u8]> {
    out.get_mut(at..at.checked_add(len)?)
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
    if ranges.iter().any(|r| r.start <= addr && end <= r.end) {
        // Inside one range (the common case).
        return Ok(());
    }
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
    /// Every byte of every range must be mapped and readable, and no one (another thread, or
    /// the caller: no `&mut` into it, such as the buffer a read fills) may write it without
    /// synchronisation, for as long as this reader is used.
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

    fn compare_in_place(&self, addr: u64, expected: &[u8]) -> Option<bool> {
        check_within(self.ranges, addr, expected.len()).ok()?;
        // SAFETY: as for `read`.
        Some(unsafe { holds(addr, expected) })
    }
}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }

    fn read_each<S: Spans + ?Sized>(&self, ranges: &S, out: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read_each(ranges, out)
    }

    fn compare_in_place(&self, addr: u64, expected: &[u8]) -> Option<bool> {
        (**self).compare_in_place(addr, expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_compared_in_place_anywhere_even_at_null() {
        // SAFETY: no ranges: nothing is vouched for.
        let none = unsafe { LiveMemory::new(&[]) };
        assert_eq!(none.compare_in_place(0, &[]), Some(true));
        assert_eq!(none.compare_in_place(0, &[1]), None);
        let bytes = [1u8, 2, 3];
        let at = bytes.as_ptr() as u64;
        let range = at..at + 3;
        // SAFETY: `bytes` outlives the reader and is not written.
        let mem = unsafe { LiveMemory::new(core::slice::from_ref(&range)) };
        assert_eq!(mem.compare_in_place(at, &[1, 2, 3]), Some(true));
        assert_eq!(mem.compare_in_place(at + 1, &[2, 4]), Some(false));
        assert_eq!(
            mem.compare_in_place(at + 1, &[2, 3, 0]),
            None,
            "past the range"
        );
    }

    #[test]
    #[cfg(feature = "std")]
    fn a_binary_search_finds_the_sorted_range_an_address_is_in() {
        let spans = [0x10..0x15, 0x15..0x18, 0x20..0x28, 0x30..0x30, 0x40..0x41];
        let inside: alloc::vec::Vec<u64> =
            (0..0x50).filter(|&a| inside_sorted(&spans, a)).collect();
        let expected: alloc::vec::Vec<u64> =
            (0x10..0x18).chain(0x20..0x28).chain(0x40..0x41).collect();
        assert_eq!(inside, expected);
        assert!(!inside_sorted(&[] as &[core::ops::Range<u64>; 0], 0));
    }

    #[test]
    fn a_batch_read_longer_than_the_address_space_is_an_error_not_a_panic() {
        static DATA: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let base = DATA.as_ptr() as u64;
        let range = base..base + 8;
        // SAFETY: the range is a static.
        let mem = unsafe { LiveMemory::new(core::slice::from_ref(&range)) };
        let mut out = [0u8; 8];
        let huge = [base..base + 1, 0..u64::MAX];
        assert_eq!(mem.read_each(&huge, &mut out), Err(MemoryError { addr: 0 }));
    }

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
        // A batch read from a slice of ranges (every one of them).
        let mut five = [0u8; 5];
        let inside = [base + 4..base + 6, base..base + 2, base + 3..base + 4];
        mem.read_each(&inside[..], &mut five).unwrap();
        assert_eq!(five, [5, 6, 1, 2, 4]);
        assert!(!Spans::is_empty(&inside[..]) && Spans::is_empty(&inside[..0]));
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
