//! Site writers: how text becomes writable, is written, and is made safe to execute again.
//!
//! A [`Writer`] receives every change of one patching pass at once, so it can batch pages and
//! keep text writable for as short a time as possible. After writing it synchronises the
//! instruction stream ([`serialize`]). Writers:
//!
//! - [`DirectWriter`]: bare metal, text already writable (early boot);
//! - [`crate::os::linux::MprotectWriter`]: hosted Linux, `mprotect` around the writes, the
//!   exact original protections restored (with the `std` feature).
//!
//! A writer that maps a temporary writable alias of read-only text (as Linux's `text_poke` and
//! Xen do) fits the same trait: `write` maps the alias, copies, unmaps.

use core::fmt;

/// Read access to the code being planned (the process's own text, a test buffer, or a file).
pub trait Memory {
    /// Copies `buf.len()` bytes starting at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
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

/// Reads the memory of the running program.
#[derive(Debug)]
pub struct LiveMemory(());

impl LiveMemory {
    /// A reader of this address space.
    ///
    /// # Safety
    ///
    /// Every address the planner may read, that is every address inside the planner's layout's text
    /// ranges and replacement range, must be mapped and readable for as long as this reader is
    /// used.
    pub unsafe fn new() -> Self {
        Self(())
    }
}

impl Memory for LiveMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        // SAFETY: the constructor's contract makes every address the planner reads readable; the
        // planner reads only inside the layout's ranges after checking the bounds.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }
}

/// One contiguous change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Address of the first byte.
    pub addr: u64,
    /// The new bytes.
    pub bytes: &'a [u8],
}

/// What a writer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Pages (4 KiB) whose contents changed.
    pub pages: usize,
    /// Calls that changed page protections (0 for writers that need none).
    pub protection_changes: usize,
}

/// A write that failed. Writers check everything they can before the first byte changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError {
    /// Address concerned.
    pub addr: u64,
    /// What went wrong.
    pub reason: &'static str,
    /// The operating system's error number, where there is one.
    pub os_error: Option<i32>,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write text at {:#x}: {}", self.addr, self.reason)?;
        if let Some(e) = self.os_error {
            write!(f, " (os error {e})")?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WriteError {}

/// Makes text writable, writes, restores, synchronises.
pub trait Writer: Memory {
    /// Writes every chunk. Either all chunks are written or, if the writer finds a problem
    /// before writing, none is.
    fn write(&mut self, chunks: &[Chunk<'_>]) -> Result<WriteStats, WriteError>;
}

/// Page size used for batching and statistics.
pub const PAGE_SIZE: u64 = 4096;

/// Number of distinct pages the chunks touch.
pub fn pages_touched(chunks: &[Chunk<'_>]) -> usize {
    let mut count = 0;
    let mut last: Option<u64> = None;
    // Chunks come sorted by address from the patcher; count page transitions.
    for c in chunks {
        if c.bytes.is_empty() {
            continue;
        }
        let first = c.addr / PAGE_SIZE;
        let end = (c.addr + c.bytes.len() as u64 - 1) / PAGE_SIZE;
        for page in first..=end {
            if last.is_none_or(|l| page > l) {
                count += 1;
                last = Some(page);
            }
        }
    }
    count
}

/// Serialises the instruction stream of the calling CPU, so that it executes the bytes just
/// written and not a stale prefetch (x86-64: `cpuid`, which is architecturally serialising).
#[inline]
pub fn serialize() {
    // cpuid leaf 0 is available on every x86-64 CPU and has no effect beyond serialising.
    #[cfg(target_arch = "x86_64")]
    core::arch::x86_64::__cpuid(0);
}

/// Writes text that is already writable (bare metal, before protections are set up).
#[derive(Debug)]
pub struct DirectWriter(());

impl DirectWriter {
    /// A writer for writable text.
    ///
    /// # Safety
    ///
    /// Every address that will be written must be mapped writable, and no other CPU may be
    /// executing the code being written.
    pub unsafe fn new() -> Self {
        Self(())
    }
}

impl Memory for DirectWriter {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        // SAFETY: the constructor's contract: every address we are asked about is mapped.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }
}

impl Writer for DirectWriter {
    fn write(&mut self, chunks: &[Chunk<'_>]) -> Result<WriteStats, WriteError> {
        for c in chunks {
            // SAFETY: the constructor's contract: the text is writable and not executing.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    c.bytes.as_ptr(),
                    c.addr as usize as *mut u8,
                    c.bytes.len(),
                )
            };
        }
        serialize();
        Ok(WriteStats {
            pages: pages_touched(chunks),
            protection_changes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_counted_once() {
        let b = [0u8; 8];
        let chunks = [
            Chunk {
                addr: 0x1000,
                bytes: &b,
            },
            Chunk {
                addr: 0x1010,
                bytes: &b,
            },
            Chunk {
                addr: 0x1ffc,
                bytes: &b,
            },
            Chunk {
                addr: 0x5000,
                bytes: &b[..1],
            },
        ];
        assert_eq!(pages_touched(&chunks), 3);
        assert_eq!(pages_touched(&[]), 0);
    }
}
