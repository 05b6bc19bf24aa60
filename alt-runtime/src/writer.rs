//! Site writers: how text becomes writable and is written.
//!
//! A [`Writer`] receives every change of one patching pass at once, so it can batch pages and
//! keep text writable for as short a time as possible. The pass is in two steps:
//! [`Writer::prepare`] does everything that can fail or allocate (lookups, checks, room for the
//! bytes it will overwrite) while the rest of the system still runs; [`Writer::write`] then
//! writes, possibly while every other CPU or thread is stopped at a rendezvous, so it must not
//! allocate or take a lock another thread may hold.
//!
//! A batch is any [`Chunks`]: a slice of [`Chunk`]s, or a view that reads each chunk where it
//! lies (the driver passes its plan's sites, copying none).
//!
//! **All or nothing.** When `write` fails, it first restores every byte it changed; the error
//! says whether that succeeded ([`WriteError::text_changed`]). Synchronising the instruction
//! stream afterwards is not the writer's job but the instruction set's
//! ([`crate::isa::Isa::sync`]), done by the [driver](crate::driver).
//!
//! Writers:
//!
//! - [`DirectWriter`]: text already writable (bare metal, early boot);
//! - `os::linux::MprotectWriter`: hosted Linux, `mprotect` around the writes or `/proc/self/mem`,
//!   the exact original protections restored (with the `std` feature);
//! - a writer that maps a temporary writable alias of read-only text (as Linux's `text_poke` and
//!   Xen do) fits the same trait: the test kernel's `AliasWriter` is one.

use core::fmt;
use core::ops::Range;

use crate::memory::{check_within, Memory, MemoryError, Spans};

/// One contiguous change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Address of the first byte.
    pub addr: u64,
    /// The new bytes.
    pub bytes: &'a [u8],
}

impl Chunk<'_> {
    /// The addresses the chunk covers.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr.saturating_add(self.bytes.len() as u64)
    }
}

/// A batch of chunks in address order, read one at a time: a slice of [`Chunk`]s, or a batch
/// of site changes read as chunks where it lies ([`crate::patch::carry_out`] writes the sites'
/// new bytes from the plan itself, copying none). As [`Spans`], the ranges the chunks cover.
pub trait Chunks: Spans {
    /// The `i`-th chunk (`i < len()`); its range is `span(i)`.
    fn chunk(&self, i: usize) -> Chunk<'_>;

    /// The chunks in order.
    fn iter(&self) -> impl Iterator<Item = Chunk<'_>> + '_ {
        (0..self.len()).map(move |i| self.chunk(i))
    }

    /// The bytes to put back in chunk `i`'s range if writing the batch fails, where the batch
    /// says (as long as the chunk): a writer given them for every chunk restores those and
    /// saves nothing of its own, and "as before" then means "as these bytes say". A batch of
    /// site changes gives what each site held (checked before the writer prepares; that no
    /// one else writes the text meanwhile is [`Writer::write`]'s contract), and its undo what
    /// the change wrote. `None`, the default: the writer saves what each range holds.
    fn restore(&self, i: usize) -> Option<&[u8]> {
        let _ = i;
        None
    }

    /// The chunks from the `start`-th on, in order, each with what [`Chunks::restore`] gives
    /// for it: read one after another (for some batches much cheaper than one at a time).
    fn chunks_from(&self, start: usize) -> impl Iterator<Item = (Chunk<'_>, Option<&[u8]>)> + '_ {
        (start..self.len()).map(move |i| (self.chunk(i), self.restore(i)))
    }
}

impl Chunks for [Chunk<'_>] {
    fn chunk(&self, i: usize) -> Chunk<'_> {
        self[i]
    }
}

#[cfg(feature = "alloc")]
impl Chunks for alloc::vec::Vec<Chunk<'_>> {
    fn chunk(&self, i: usize) -> Chunk<'_> {
        self[i]
    }
}

impl Spans for [Chunk<'_>] {
    fn len(&self) -> usize {
        <[Chunk<'_>]>::len(self)
    }

    fn span(&self, i: usize) -> Range<u64> {
        self[i].range()
    }
}

#[cfg(feature = "alloc")]
impl Spans for alloc::vec::Vec<Chunk<'_>> {
    fn len(&self) -> usize {
        <[Chunk<'_>]>::len(self)
    }

    fn span(&self, i: usize) -> Range<u64> {
        self[i].range()
    }
}

/// What a writer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Pages (4 KiB) whose contents changed.
    pub pages: usize,
    /// Calls that changed page protections (0 for writers that need none).
    pub protection_changes: usize,
}

/// A write that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError {
    /// Address concerned.
    pub addr: u64,
    /// What went wrong.
    pub reason: &'static str,
    /// The operating system's error number, where there is one.
    pub os_error: Option<i32>,
    /// Whether the text may differ from before: the writer changed bytes and could not restore
    /// them all. `false` means every byte is exactly as it was before the call (for a batch
    /// that gives the bytes to restore, [`Chunks::restore`], as those bytes say).
    pub text_changed: bool,
}

impl WriteError {
    /// An error found before anything was written.
    pub const fn unchanged(addr: u64, reason: &'static str, os_error: Option<i32>) -> Self {
        Self {
            addr,
            reason,
            os_error,
            text_changed: false,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write text at {:#x}: {}", self.addr, self.reason)?;
        if let Some(e) = self.os_error {
            write!(f, " (os error {e})")?;
        }
        if self.text_changed {
            f.write_str("; the text could not be fully restored")?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WriteError {}

/// Makes text writable, writes, restores.
pub trait Writer: Memory {
    /// Everything that must happen before the batch `chunks` is written and may fail or
    /// allocate: lookups, checks, room for the bytes to be overwritten. Changes nothing.
    /// [`Writer::write`] is then called with the same chunks. The default does nothing.
    fn prepare<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<(), WriteError> {
        let _ = chunks;
        Ok(())
    }

    /// Writes every chunk (sorted by address, not overlapping), or none.
    ///
    /// On error every byte changed has been restored, unless [`WriteError::text_changed`] says
    /// otherwise. A writer called without [`Writer::prepare`] for these chunks prepares them
    /// itself first. It must not allocate or take locks once prepared: other CPUs or threads
    /// may be stopped while it runs.
    ///
    /// # Safety
    ///
    /// Every chunk must be code (or data) of this program that the new bytes are valid for, no
    /// reference into it may be held (nor may a chunk's bytes lie inside the ranges written),
    /// and no other CPU or thread may execute or access it while the call runs (a
    /// [rendezvous](crate::rendezvous) stopped them, or none exists). Where the batch gives the
    /// bytes to restore ([`Chunks::restore`]), they are valid for the range as the new bytes
    /// are.
    unsafe fn write<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<WriteStats, WriteError>;
}

/// Page size used for batching and statistics.
pub const PAGE_SIZE: u64 = 4096;

/// Number of distinct pages the chunks touch.
pub fn pages_touched<C: Chunks + ?Sized>(chunks: &C) -> usize {
    let mut count = 0;
    let mut last: Option<u64> = None;
    // Chunks come sorted by address from the patcher; count page transitions.
    for c in chunks.iter() {
        if c.bytes.is_empty() {
            continue;
        }
        let first = c.addr / PAGE_SIZE;
        // The last byte's page (a chunk that would pass the end of the address space stops
        // there).
        let end = (c.range().end - 1) / PAGE_SIZE;
        let from = match last {
            Some(l) if end <= l => continue,
            Some(l) => first.max(l + 1),
            None => first,
        };
        count += (end - from + 1) as usize;
        last = Some(end);
    }
    count
}

/// Writes text that is already writable (bare metal, before protections are set up), inside
/// ranges its creator vouches for.
#[derive(Debug)]
pub struct DirectWriter<'a> {
    writable: &'a [Range<u64>],
}

impl<'a> DirectWriter<'a> {
    /// A writer for the text in `writable` (and reader of it).
    ///
    /// # Safety
    ///
    /// Every byte of `writable` must be mapped readable and writable for as long as the writer is
    /// used, written by no one but this writer (no `&mut` into it, such as the buffer a read
    /// fills), and no other CPU may execute or write the code being written while
    /// [`Writer::write`] runs.
    pub unsafe fn new(writable: &'a [Range<u64>]) -> Self {
        Self { writable }
    }
}

impl Memory for DirectWriter<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        check_within(self.writable, addr, buf.len())?;
        // SAFETY: inside the ranges the creator vouched are mapped.
        unsafe {
            crate::short::copy_small(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn compare_in_place(&self, addr: u64, expected: &[u8]) -> Option<bool> {
        check_within(self.writable, addr, expected.len()).ok()?;
        // SAFETY: as for `read`.
        Some(unsafe { crate::memory::holds(addr, expected) })
    }
}

impl Writer for DirectWriter<'_> {
    fn prepare<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<(), WriteError> {
        for c in chunks.iter() {
            check_within(self.writable, c.addr, c.bytes.len())
                .map_err(|e| WriteError::unchanged(e.addr, "outside the writable text", None))?;
        }
        Ok(())
    }

    unsafe fn write<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<WriteStats, WriteError> {
        // Check every chunk before the first byte changes: then nothing below can fail.
        self.prepare(chunks)?;
        for c in chunks.iter() {
            // SAFETY: inside the ranges the creator vouched are writable; the caller's contract
            // keeps every other CPU away from them.
            unsafe {
                crate::short::copy_small(
                    c.bytes.as_ptr(),
                    c.addr as usize as *mut u8,
                    c.bytes.len(),
                )
            };
        }
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
        assert_eq!(pages_touched(&chunks[..]), 3);
        assert_eq!(pages_touched(&[][..]), 0);
        // A chunk that ends where a page ends touches no more.
        assert_eq!(
            pages_touched(
                &[Chunk {
                    addr: 0x1ff8,
                    bytes: &b
                }][..]
            ),
            1
        );
        // A chunk at the very end of the address space: its last page, no overflow.
        let end = [Chunk {
            addr: u64::MAX - 1,
            bytes: &b[..4],
        }];
        assert_eq!(pages_touched(&end[..]), 1);
    }

    #[test]
    fn the_direct_writer_writes_all_chunks_or_none() {
        let mut buf = [0u8; 16];
        let base = buf.as_mut_ptr() as u64;
        let range = base..base + 16;
        // SAFETY: the buffer is ours, writable, and holds no code.
        let mut w = unsafe { DirectWriter::new(core::slice::from_ref(&range)) };
        // SAFETY: the buffer is not code and no other thread sees it.
        let outside = unsafe {
            w.write(
                &[
                    Chunk {
                        addr: base,
                        bytes: &[1, 2],
                    },
                    Chunk {
                        addr: base + 15,
                        bytes: &[3, 4],
                    },
                ][..],
            )
        }
        .unwrap_err();
        assert_eq!(
            outside,
            WriteError::unchanged(base + 16, "outside the writable text", None)
        );
        let mut now = [9u8; 16];
        w.read(base, &mut now).unwrap();
        assert_eq!(now, [0; 16], "nothing written");
        // SAFETY: as above.
        unsafe {
            w.write(
                &[Chunk {
                    addr: base + 3,
                    bytes: &[7],
                }][..],
            )
        }
        .unwrap();
        w.read(base, &mut now).unwrap();
        assert_eq!(now[3], 7);
    }
}
