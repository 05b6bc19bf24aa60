//! Writing one batch of site and slot changes, all or nothing.
//!
//! Every pass of the [driver](crate::driver), patching or reverting, comes down to a list of
//! [`SiteWrite`]s (a site, the bytes it holds, the bytes it should hold) and [`SlotWrite`]s
//! (8-byte function-pointer slots of paravirt tables), carried out by [`carry_out`]:
//!
//! 1. re-read every site (and slot) and refuse, writing nothing, unless it holds the expected
//!    bytes;
//! 2. [`Writer::prepare`]: everything that may fail or allocate, while the system still runs;
//! 3. [`Rendezvous::stop`]: every other CPU or thread stopped outside the sites;
//! 4. store the slots, write the sites ([`Writer::write`]), synchronise this CPU
//!    ([`Isa::sync`]), read every site back;
//! 5. [`Rendezvous::release`].
//!
//! If the writer fails, it has already restored the text (or says it could not); the slots are
//! restored here. If a site does not read back as written, the originals are written back.
//! Either way the caller learns whether the text is exactly as before
//! ([`Failure::text_changed`]).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::bytes::SiteBytes;
use crate::isa::Isa;
use crate::memory::{Memory, MemoryError, Spans, Window};
use crate::rendezvous::{Rendezvous, RendezvousError};
pub use crate::sites::{Changes, SiteChange};
use crate::writer::{Chunk, Chunks, WriteError, WriteStats, Writer};

/// One site's change: where, the bytes it holds, the bytes it will hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteWrite {
    /// Address of the site.
    pub addr: u64,
    /// The bytes found at the site when planning.
    pub original: SiteBytes,
    /// The bytes the site will hold.
    pub new: SiteBytes,
}

impl SiteWrite {
    /// Whether the site's bytes change.
    pub fn changed(&self) -> bool {
        self.original != self.new
    }

    /// The site's address range.
    pub fn range(&self) -> Range<u64> {
        self.change().range()
    }

    /// The change from the original to the new bytes.
    pub fn change(&self) -> SiteChange<'_> {
        SiteChange {
            addr: self.addr,
            from: &self.original,
            to: &self.new,
        }
    }
}

/// One 8-byte slot (a paravirt table's function pointer, or a dispatch slot) to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotWrite {
    /// Address of the slot.
    pub addr: u64,
    /// Value found when planning.
    pub old: u64,
    /// Value to store.
    pub new: u64,
}

/// Why patching or reverting stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// A site does not hold the bytes expected (the original when patching, what was written
    /// when reverting).
    UnexpectedBytes {
        /// Address of the site.
        addr: u64,
        /// The bytes expected.
        expected: Vec<u8>,
        /// The bytes found.
        found: Vec<u8>,
    },
    /// A slot does not hold the value expected.
    UnexpectedSlot {
        /// Address of the slot.
        addr: u64,
        /// Value expected.
        expected: u64,
        /// Value found.
        found: u64,
    },
    /// A site could not be read.
    Memory(MemoryError),
    /// The other CPUs or threads could not be stopped.
    Rendezvous(RendezvousError),
    /// The writer failed.
    Write(WriteError),
    /// A site did not read back as written.
    ReadBack {
        /// Address of the site.
        addr: u64,
    },
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::UnexpectedBytes {
                addr,
                expected,
                found,
            } => write!(
                f,
                "site at {addr:#x} holds unexpected bytes (expected {}, found {})",
                crate::bytes::Hex(expected),
                crate::bytes::Hex(found)
            ),
            PatchError::UnexpectedSlot {
                addr,
                expected,
                found,
            } => write!(
                f,
                "table slot at {addr:#x} holds {found:#x}, expected {expected:#x}"
            ),
            PatchError::Memory(e) => write!(f, "{e}"),
            PatchError::Rendezvous(e) => write!(f, "cannot stop the other threads: {e}"),
            PatchError::Write(e) => write!(f, "{e}"),
            PatchError::ReadBack { addr } => {
                write!(f, "site at {addr:#x} did not read back as written")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PatchError {}

/// A batch that was not carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub error: PatchError,
    /// Whether some site may differ from what it held before (the writer could not restore
    /// it). Slots are always restored.
    pub text_changed: bool,
}

impl From<PatchError> for Failure {
    fn from(error: PatchError) -> Self {
        Failure {
            error,
            text_changed: false,
        }
    }
}

/// # Safety
///
/// `addr` is a live, 8-aligned slot.
pub(crate) unsafe fn load_slot(addr: u64) -> u64 {
    // SAFETY: the caller's contract; atomic access cannot race with the patcher's stores.
    unsafe { AtomicU64::from_ptr(addr as usize as *mut u64) }.load(Ordering::Acquire)
}

/// # Safety
///
/// `addr` is a live, 8-aligned, writable slot.
unsafe fn store_slot(addr: u64, value: u64) {
    // SAFETY: the caller's contract.
    unsafe { AtomicU64::from_ptr(addr as usize as *mut u64) }.store(value, Ordering::Release)
}

/// Which way a batch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the originals to the new bytes (patching).
    Forward,
    /// From the new bytes back to the originals (reverting).
    Back,
}

impl Direction {
    #[inline]
    fn slot(self, s: &SlotWrite) -> (u64, u64) {
        match self {
            Direction::Forward => (s.old, s.new),
            Direction::Back => (s.new, s.old),
        }
    }
}

/// Carries out one batch: each of `sites` (sorted by address, not overlapping) changes from its
/// `from` bytes to its `to` bytes, and `slots` go `direction`. Slots are stored in order going
/// forward and in reverse order going back.
///
/// # Safety
///
/// Every site must be code of this program for which both byte strings are valid, every slot a
/// live, 8-aligned, writable slot whose values are valid for it, and `rendezvous` must really
/// keep every other CPU or thread out of the sites while they are written.
pub unsafe fn carry_out<I: Isa, W: Writer, R: Rendezvous + ?Sized, C: Changes + ?Sized>(
    sites: &C,
    slots: &[SlotWrite],
    direction: Direction,
    writer: &mut W,
    rendezvous: &mut R,
) -> Result<WriteStats, Failure> {
    // SAFETY: the caller's contract; the sites are read again.
    unsafe { carry_out_read::<I, W, R, C>(sites, slots, direction, writer, rendezvous, true) }
}

/// [`carry_out`], which reads every site again before it writes anything and refuses a site
/// that does not hold its `from` bytes; with `reread` false the sites are taken to hold them
/// (a batch planned just now from the sites themselves: what the planner read and checked is
/// there). Everything else is the same: the lengths and slots are checked, the sites read
/// back after the write.
///
/// # Safety
///
/// As for [`carry_out`]; without `reread`, every site must hold its `from` bytes (no one but
/// this thread writes them, and nothing did since they were read).
pub(crate) unsafe fn carry_out_read<
    I: Isa,
    W: Writer,
    R: Rendezvous + ?Sized,
    C: Changes + ?Sized,
>(
    sites: &C,
    slots: &[SlotWrite],
    direction: Direction,
    writer: &mut W,
    rendezvous: &mut R,
    reread: bool,
) -> Result<WriteStats, Failure> {
    // 1. Expected bytes and values. The batch is written as it is (its new bytes are the
    // chunks; read as ranges, they are the sites' ranges: what is read and what the rendezvous
    // keeps threads out of), nothing copied; one pass checks the lengths, and the sites are
    // read a few at a time and compared.
    for s in sites.changes_from(0) {
        if s.to.len() != s.from.len() {
            let reason = "the new bytes are not as long as the site";
            return Err(PatchError::Write(WriteError::unchanged(s.addr, reason, None)).into());
        }
    }
    let chunks = AsChunks {
        changes: sites,
        undo: false,
    };
    // What each site holds now, read as chunks: the batch the other way.
    let held = AsChunks {
        changes: sites,
        undo: true,
    };
    let unlike = if reread {
        first_unlike(writer, &held)
    } else {
        Ok(None)
    };
    match unlike {
        Ok(None) => {}
        Ok(Some(i)) => {
            let s = sites.change(i);
            let mut found = vec![0; s.from.len()];
            writer
                .read(s.addr, &mut found)
                .map_err(PatchError::Memory)?;
            return Err(PatchError::UnexpectedBytes {
                addr: s.addr,
                expected: s.from.to_vec(),
                found,
            }
            .into());
        }
        Err(e) => return Err(PatchError::Memory(e).into()),
    }
    for s in slots {
        let (from, _) = direction.slot(s);
        // SAFETY: the caller's contract.
        let now = unsafe { load_slot(s.addr) };
        if now != from {
            return Err(PatchError::UnexpectedSlot {
                addr: s.addr,
                expected: from,
                found: now,
            }
            .into());
        }
    }
    if sites.is_empty() && slots.is_empty() {
        return Ok(WriteStats::default());
    }

    // 2. Everything that allocates or may fail, before anyone is stopped.
    writer.prepare(&chunks).map_err(PatchError::Write)?;

    // 3. Stop the others.
    rendezvous.stop(&chunks).map_err(PatchError::Rendezvous)?;

    // 4. Write (nothing below allocates).
    let store_all = |to_new: bool| {
        let order: &mut dyn Iterator<Item = &SlotWrite> = match (direction, to_new) {
            (Direction::Forward, true) | (Direction::Back, false) => &mut slots.iter(),
            _ => &mut slots.iter().rev(),
        };
        for s in order {
            let (from, to) = direction.slot(s);
            // SAFETY: the caller's contract.
            unsafe { store_slot(s.addr, if to_new { to } else { from }) };
        }
    };
    store_all(true);
    // SAFETY: the sites are code of this program (the caller's contract): mapped.
    let sync = || unsafe { I::sync(&mut (0..chunks.len()).map(|i| chunks.span(i))) };
    // SAFETY: the caller's contract; the rendezvous holds every other CPU or thread.
    let stats = match unsafe { writer.write(&chunks) } {
        Ok(stats) => stats,
        Err(e) => {
            store_all(false);
            sync();
            rendezvous.release();
            let text_changed = e.text_changed;
            return Err(Failure {
                error: PatchError::Write(e),
                text_changed,
            });
        }
    };
    sync();
    if let Some(addr) = first_mismatch(writer, &chunks) {
        // The undo is the same batch read the other way: nothing is allocated while the
        // others are stopped.
        let undo = AsChunks {
            changes: sites,
            undo: true,
        };
        // SAFETY: as for the write: the originals are valid code for the sites.
        let undone =
            unsafe { writer.write(&undo) }.is_ok() && first_mismatch(writer, &undo).is_none();
        store_all(false);
        sync();
        rendezvous.release();
        return Err(Failure {
            error: PatchError::ReadBack { addr },
            text_changed: !undone,
        });
    }

    // 5. Let the others run.
    rendezvous.release();
    Ok(stats)
}

/// A batch of site changes read as the writer's chunks: each site's new bytes, or (`undo`) the
/// bytes it held.
struct AsChunks<'c, C: ?Sized> {
    changes: &'c C,
    undo: bool,
}

impl<C: Changes + ?Sized> Spans for AsChunks<'_, C> {
    fn len(&self) -> usize {
        self.changes.len()
    }

    #[inline(always)]
    fn span(&self, i: usize) -> Range<u64> {
        self.changes.change(i).range()
    }
}

impl<C: Changes + ?Sized> Chunks for AsChunks<'_, C> {
    #[inline(always)]
    fn chunk(&self, i: usize) -> Chunk<'_> {
        let c = self.changes.change(i);
        Chunk {
            addr: c.addr,
            bytes: if self.undo { c.from } else { c.to },
        }
    }

    /// What a failed write puts back: forward, what the site held (checked before the writer
    /// prepares); undone, what the forward batch wrote (the site may hold something else: a
    /// read-back found some site unlike it, which is why it is undone).
    #[inline(always)]
    fn restore(&self, i: usize) -> Option<&[u8]> {
        let c = self.changes.change(i);
        Some(if self.undo { c.to } else { c.from })
    }

    fn chunks_from(&self, start: usize) -> impl Iterator<Item = (Chunk<'_>, Option<&[u8]>)> + '_ {
        let undo = self.undo;
        self.changes.changes_from(start).map(move |c| {
            let (bytes, restore) = if undo { (c.from, c.to) } else { (c.to, c.from) };
            (
                Chunk {
                    addr: c.addr,
                    bytes,
                },
                Some(restore),
            )
        })
    }
}

/// The first chunk (its index) whose range does not hold the chunk's bytes. Every chunk is
/// read (in order: the first that cannot be read is the error, whichever chunks differ),
/// compared where it lies if the reader can ([`Memory::compare_in_place`]), else through a
/// buffer on the stack: nothing is allocated (the others may be stopped). Chunks in address
/// order whose extent fits the buffer are read as one range, the bytes between them too;
/// where that cannot be read, each chunk of them is read on its own.
fn first_unlike<M: Memory, C: Chunks + ?Sized>(
    mem: &M,
    chunks: &C,
) -> Result<Option<usize>, MemoryError> {
    let mut first = None;
    let mut note = |k: usize, same: bool| {
        if first.is_none() && !same {
            first = Some(k);
        }
    };
    let mut buf = [0u8; BUF];
    // The chunks read together next: `g` of them, the first of which is chunk `at`, ending at
    // `end` (`None` past the end of the address space).
    let mut group = [Chunk {
        addr: 0,
        bytes: &[],
    }; GROUP];
    let (mut g, mut at, mut end) = (0, 0, None);
    for (i, (c, _)) in chunks.chunks_from(0).enumerate() {
        if g > 0 {
            // Joins the group where it lies after it, within the buffer's length of its start.
            match (end, c.addr.checked_add(c.bytes.len() as u64)) {
                (Some(e), Some(c_end))
                    if g < GROUP && c.addr >= e && c_end - group[0].addr <= BUF as u64 =>
                {
                    group[g] = c;
                    (g, end) = (g + 1, Some(c_end));
                    continue;
                }
                _ => {
                    read_group(mem, chunks, &group[..g], at, end, &mut buf, &mut note)?;
                    g = 0;
                }
            }
        }
        if let Some(holds) = mem.compare_in_place(c.addr, c.bytes) {
            // Compared where it lies: nothing to copy.
            note(i, holds);
        } else if c.bytes.len() > BUF {
            // A chunk longer than the buffer (no site is): read in parts, on its own.
            for off in (0..c.bytes.len()).step_by(BUF) {
                let part = &c.bytes[off..c.bytes.len().min(off + BUF)];
                mem.read(c.addr + off as u64, &mut buf[..part.len()])?;
                note(i, crate::short::same(&buf[..part.len()], part));
            }
        } else {
            group[0] = c;
            (g, at, end) = (1, i, c.addr.checked_add(c.bytes.len() as u64));
        }
    }
    if g > 0 {
        read_group(mem, chunks, &group[..g], at, end, &mut buf, &mut note)?;
    }
    Ok(first)
}

/// [`first_unlike`]'s buffer, and the most chunks it reads together.
const BUF: usize = 512;
const GROUP: usize = 64;

/// Reads `group`, chunks `at..` of `chunks` in address order that end at `end` within
/// [`BUF`] bytes of the first one's start (or one chunk of at most [`BUF`] bytes), and notes
/// whether each holds its bytes: as one range, or each on its own where that cannot be read.
#[allow(clippy::too_many_arguments)]
fn read_group<M: Memory, C: Chunks + ?Sized>(
    mem: &M,
    chunks: &C,
    group: &[Chunk<'_>],
    at: usize,
    end: Option<u64>,
    buf: &mut [u8; BUF],
    note: &mut impl FnMut(usize, bool),
) -> Result<(), MemoryError> {
    let start = group[0].addr;
    let same = crate::short::same;
    let extent = end.map(|e| (e - start) as usize);
    if extent.is_some_and(|extent| mem.read(start, &mut buf[..extent]).is_ok()) {
        for (k, d) in group.iter().enumerate() {
            let off = (d.addr - start) as usize;
            note(at + k, same(&buf[off..off + d.bytes.len()], d.bytes));
        }
        return Ok(());
    }
    // Something between them (or the end of the address space) cannot be read.
    let total: usize = group.iter().map(|d| d.bytes.len()).sum();
    let spans = Window {
        spans: chunks,
        at: at..at + group.len(),
    };
    mem.read_each(&spans, &mut buf[..total])?;
    let mut off = 0;
    for (k, d) in group.iter().enumerate() {
        note(at + k, same(&buf[off..off + d.bytes.len()], d.bytes));
        off += d.bytes.len();
    }
    Ok(())
}

/// The first site that does not read back as its chunk, or the first that cannot be read:
/// its address. Allocates nothing while every site reads back right.
fn first_mismatch<W: Writer, C: Chunks + ?Sized>(writer: &W, chunks: &C) -> Option<u64> {
    match first_unlike(writer, chunks) {
        Ok(None) => None,
        Ok(Some(k)) => Some(chunks.chunk(k).addr),
        Err(e) => Some(e.addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::LiveMemory;

    #[test]
    fn a_batch_carried_out_as_planned_is_not_read_before_but_is_read_back() {
        use crate::isa::X86_64;
        use crate::rendezvous::Alone;
        use crate::writer::DirectWriter;
        let mut buf = [0x90u8; 16];
        let base = buf.as_mut_ptr() as u64;
        let range = base..base + 16;
        // Site 0 holds what the batch says; site 1 does not (something wrote it since).
        let changes = [
            SiteChange {
                addr: base,
                from: &[0x90; 4],
                to: &[1, 2, 3, 4],
            },
            SiteChange {
                addr: base + 8,
                from: &[0xcc; 4],
                to: &[5, 6, 7, 8],
            },
        ];
        let run = |reread: bool| {
            // SAFETY: the buffer is ours, not code, and no other thread sees it.
            let mut w = unsafe { DirectWriter::new(core::slice::from_ref(&range)) };
            // SAFETY: as above: no one else runs this "text".
            let mut alone = unsafe { Alone::new() };
            // SAFETY: as above.
            unsafe {
                carry_out_read::<X86_64, _, _, _>(
                    &changes[..],
                    &[],
                    Direction::Forward,
                    &mut w,
                    &mut alone,
                    reread,
                )
            }
        };
        // Read again: refused, nothing written.
        let refused = run(true).unwrap_err();
        assert!(
            matches!(refused.error, PatchError::UnexpectedBytes { addr, .. } if addr == base + 8),
            "{:?}",
            refused.error
        );
        assert!(!refused.text_changed);
        // SAFETY: nothing else holds the buffer now.
        let now = |at: usize| unsafe { *(base as *const [u8; 4]).byte_add(at) };
        assert_eq!((now(0), now(8)), ([0x90; 4], [0x90; 4]));
        // As planned: taken to hold its bytes, written, and read back.
        run(false).unwrap();
        assert_eq!((now(0), now(8)), ([1, 2, 3, 4], [5, 6, 7, 8]));
    }

    #[test]
    fn a_batch_read_as_chunks_in_order_is_each_chunk_and_what_restores_it() {
        let bytes = [[1u8, 2], [3, 4], [5, 6]];
        let changes: Vec<SiteChange<'_>> = (0..3)
            .map(|k| SiteChange {
                addr: 0x1000 + 0x10 * k as u64,
                from: &bytes[k],
                to: &bytes[(k + 1) % 3],
            })
            .collect();
        for undo in [false, true] {
            let chunks = AsChunks {
                changes: &changes[..],
                undo,
            };
            for start in 0..5 {
                let each: Vec<_> = (start..3)
                    .map(|i| (chunks.chunk(i), chunks.restore(i)))
                    .collect();
                let from: Vec<_> = chunks.chunks_from(start).collect();
                assert_eq!(from, each, "undo {undo}, from {start}");
            }
            let (first, restore) = chunks.chunks_from(0).next().unwrap();
            let (bytes, back) = if undo {
                (&[1, 2], &[3, 4])
            } else {
                (&[3, 4], &[1, 2])
            };
            assert_eq!((first.bytes, restore), (&bytes[..], Some(&back[..])));
        }
    }

    /// A reader that only copies: sites are read in groups, never compared in place.
    struct Copying<'a>(LiveMemory<'a>);

    impl Memory for Copying<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            self.0.read(addr, buf)
        }
    }

    /// [`first_unlike`] with sites compared in place and read in groups: the same answer.
    fn both<C: Chunks + ?Sized>(
        mem: &LiveMemory<'_>,
        chunks: &C,
    ) -> Result<Option<usize>, MemoryError> {
        let copied = first_unlike(&Copying(*mem), chunks);
        assert_eq!(first_unlike(mem, chunks), copied);
        copied
    }

    #[test]
    fn the_first_site_unlike_its_expected_bytes_is_found_in_groups_and_parts() {
        // Sites of 5 bytes, one of 1,300 (longer than the buffer) and more short ones: each
        // group read together, the long one in parts.
        let text: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let base = text.as_ptr() as u64;
        let range = base..base + text.len() as u64;
        // SAFETY: `text` outlives the reader and is not written meanwhile.
        let mem = unsafe { LiveMemory::new(core::slice::from_ref(&range)) };
        let mut spots: Vec<(usize, usize)> = (0..150).map(|k| (k * 6, 5)).collect();
        spots.push((1000, 1300));
        spots.extend((0..100).map(|k| (2400 + k * 10, 9)));
        let expected: Vec<Vec<u8>> = spots
            .iter()
            .map(|&(at, n)| text[at..at + n].to_vec())
            .collect();
        fn expecting<'b>(
            spots: &[(usize, usize)],
            base: u64,
            bytes: &'b [Vec<u8>],
        ) -> Vec<Chunk<'b>> {
            spots
                .iter()
                .zip(bytes)
                .map(|(&(at, _), b)| Chunk {
                    addr: base + at as u64,
                    bytes: b,
                })
                .collect()
        }
        assert_eq!(both(&mem, &expecting(&spots, base, &expected)), Ok(None));
        // 600 one-byte sites: groups fill the buffer exactly, never past it.
        let ones: Vec<Chunk<'_>> = (0..600)
            .map(|k| Chunk {
                addr: base + k as u64,
                bytes: &text[k..k + 1],
            })
            .collect();
        assert_eq!(both(&mem, &ones), Ok(None));
        let flipped = [text[599] ^ 1];
        let mut last_differs = ones.clone();
        last_differs[599].bytes = &flipped;
        assert_eq!(both(&mem, &last_differs), Ok(Some(599)));
        for (wrong, byte) in [
            (0, 0),
            (97, 4),
            (149, 2),
            (150, 0),
            (150, 1299),
            (150, 700),
            (250, 8),
        ] {
            let mut other = expected.clone();
            other[wrong][byte] ^= 1;
            assert_eq!(
                both(&mem, &expecting(&spots, base, &other)),
                Ok(Some(wrong)),
                "site {wrong} differs at byte {byte}"
            );
        }
        // Unreadable: the address that could not be read, even after a site that differs
        // (in an earlier group).
        let mut other = expected.clone();
        other[0][0] ^= 1;
        let mut past = expecting(&spots, base, &other);
        past.push(Chunk {
            addr: base + 3998,
            bytes: &[0; 4],
        });
        assert_eq!(both(&mem, &past), Err(MemoryError { addr: base + 4000 }));

        // Out of order and overlapping (no batch is, but no panic either): each read.
        let unsorted = [
            Chunk {
                addr: base + 10,
                bytes: &text[10..15],
            },
            Chunk {
                addr: base + 8,
                bytes: &text[8..13],
            },
            Chunk {
                addr: base + 9,
                bytes: &[0; 2],
            },
        ];
        assert_eq!(both(&mem, &unsorted[..]), Ok(Some(2)));

        // Two readable ranges with a hole between: sites on either side are read on their own.
        let ranges = [base..base + 100, base + 200..base + 300];
        // SAFETY: as above.
        let holed = unsafe { LiveMemory::new(&ranges) };
        let two = |second: &[u8]| {
            let sites = [
                Chunk {
                    addr: base + 90,
                    bytes: &text[90..95],
                },
                Chunk {
                    addr: base + 210,
                    bytes: second,
                },
            ];
            both(&holed, &sites[..])
        };
        assert_eq!(two(&text[210..215]), Ok(None));
        assert_eq!(two(&[0; 5]), Ok(Some(1)));
        assert_eq!(
            both(
                &holed,
                &[Chunk {
                    addr: base + 98,
                    bytes: &text[98..103]
                }][..]
            ),
            Err(MemoryError { addr: base + 100 })
        );
    }
}
