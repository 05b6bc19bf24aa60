//! [`MprotectWriter`]: the hosted Linux writer.
//!
//! It writes a batch one run of pages at a time (a run: contiguous pages with one original
//! protection). For each run it adds `PROT_WRITE` (keeping execute: code on the same pages,
//! possibly the writer's own, may run), copies, and restores the exact original protection read
//! from `/proc/self/maps` (or, for an object's own text, the protection its program headers gave
//! it: [`MprotectWriter::loader_mappings`], which the process's patching uses, so that patching
//! at load reads no maps). After the batch no page is writable and executable unless it was
//! before.
//!
//! Strict W^X: with [`MprotectWriter::through_proc_self_mem`] no page is ever made writable; the
//! bytes are written through `/proc/self/mem`, which the kernel lets a process use on its own
//! read-only mappings (as debuggers poke text). The writer also switches to that path by itself,
//! for the run concerned and every later one, when the kernel refuses to make text writable
//! (SELinux without `execmod`, PaX `MPROTECT`; such a refusal can come at any run, for example
//! once an earlier run gave a file mapping an anonymous copy).
//!
//! **All or nothing.** Before the first byte changes, [`Writer::prepare`] reads the maps, refuses
//! text that is not mapped or is in a shared mapping (`s` in `/proc/self/maps`: a write there
//! would reach the file on disk or another process), and makes room for the bytes to be
//! overwritten; [`Writer::write`] saves them there right before it writes (nothing is kept per
//! chunk in between: the batch written is checked against the runs prepared, byte for byte
//! covered). A batch that gives the bytes to restore ([`Chunks::restore`], as the driver's
//! batches of site changes do) has nothing saved: those are restored instead. If anything
//! fails after that, every run already written is restored, by the path that wrote it, before
//! the error is returned; the error says if even that failed. A failed attempt to restore a protection is retried once, so that no run is left
//! writable.
//!
//! Reads ([`Memory::read`]) go through `process_vm_readv` (or `/proc/self/mem`): an address
//! unmapped since it was planned is an error, not a crash.
//!
//! The writer does not know about other threads: the [driver](crate::driver)'s rendezvous
//! decides when it may write.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use super::maps::Mapping;
use super::sys::{Errno, LinuxSys, TextSys};
use crate::memory::{Memory, MemoryError, Spans};
use crate::writer::{Chunks, WriteError, WriteStats, Writer, PAGE_SIZE};

/// Writes the process's own text with `mprotect` (or `/proc/self/mem`).
#[derive(Debug, Default)]
pub struct MprotectWriter<S: TextSys = LinuxSys> {
    sys: S,
    proc_mem: bool,
    prepared: Option<Prepared>,
    /// Ranges the creator vouched stay mapped: read with plain copies, not system calls.
    direct: Vec<Range<u64>>,
    /// Mappings the creator vouched for (the loader's, from program headers): batches inside
    /// them need no `/proc/self/maps`.
    known: Vec<Mapping>,
}

/// A run of pages with one original protection, and the chunks that touch it.
#[derive(Debug)]
struct Run {
    range: Range<u64>,
    prot: i32,
    /// Indices of the chunks that touch the run.
    chunks: Range<usize>,
    /// Where the first of them starts in [`Prepared::originals`].
    originals_at: usize,
}

/// What [`Writer::prepare`] worked out for one batch.
#[derive(Debug)]
struct Prepared {
    /// How many chunks the batch has.
    chunks: usize,
    runs: Vec<Run>,
    /// The bytes each chunk overwrites, concatenated in chunk order: read by each `write` right
    /// before it writes (room for them is made by `prepare`); none when the batch gives the
    /// bytes to restore in every chunk (`known`).
    originals: Vec<u8>,
    /// Whether the batch gives the bytes to restore in every chunk ([`Chunks::restore`]): then
    /// those are what a roll back writes.
    known: bool,
    /// Per run: written through `/proc/self/mem` (else with `mprotect`).
    via_mem: Vec<bool>,
}

impl Prepared {
    /// Whether `chunks` is a batch these runs were prepared for: as many chunks; every byte of
    /// each inside a run that lists it (so the protections cover every byte written, and
    /// `originals` has room for them all: each byte lies in at most one run, so the bytes the
    /// runs cover add up to the chunks' total exactly when every byte is covered); and each
    /// run's first chunk starting in `originals` where its saved bytes start (a run restores
    /// its chunks' bytes from there on).
    fn fits<C: Chunks + ?Sized>(&self, chunks: &C) -> bool {
        let runs = &self.runs;
        // Runs list chunks of the batch, in order (a run's first is at or after the one
        // before's), each at least one.
        let listed = runs
            .iter()
            .all(|r| !r.chunks.is_empty() && r.chunks.end <= chunks.len())
            && runs
                .windows(2)
                .all(|w| w[0].chunks.start <= w[1].chunks.start);
        if self.chunks != chunks.len() || !listed {
            return false;
        }
        let (mut covered, mut offset) = (0usize, 0usize);
        let mut known = true;
        // The first run that may list the chunk: those before it end before it.
        let mut from = 0;
        for (i, (c, restore)) in chunks.chunks_from(0).enumerate() {
            while from < runs.len() && runs[from].chunks.end <= i {
                from += 1;
            }
            for r in runs[from..].iter().take_while(|r| r.chunks.start <= i) {
                if r.chunks.start == i && r.originals_at != offset {
                    // Its saved bytes start where the chunks before it end.
                    return false;
                }
                let (start, end) = (c.addr.max(r.range.start), c.range().end.min(r.range.end));
                covered += end.saturating_sub(start) as usize;
            }
            let n = c.bytes.len();
            known &= restores(restore, n);
            offset += n;
        }
        let saved = if self.known {
            known
        } else {
            offset == self.originals.len()
        };
        covered == offset && saved
    }

    /// Pages whose contents the batch changes: those of the runs (a run is made of the pages
    /// its chunks touch).
    fn pages(&self) -> usize {
        let bytes: u64 = self.runs.iter().map(|r| r.range.end - r.range.start).sum();
        (bytes / PAGE_SIZE) as usize
    }
}

/// Whether a chunk of `n` bytes comes with the bytes that restore it ([`Chunks::restore`]).
#[inline(always)]
fn restores(restore: Option<&[u8]>, n: usize) -> bool {
    restore.is_some_and(|b| b.len() == n)
}

/// How a run's bytes are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Protect,
    Mem,
}

/// Whether an `mprotect` refusal means the kernel will not make text writable at all (then
/// `/proc/self/mem` may still be allowed).
fn refused(errno: Errno) -> bool {
    errno == libc::EACCES || errno == libc::EPERM
}

impl MprotectWriter<LinuxSys> {
    /// A writer making the real system calls.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S: TextSys> MprotectWriter<S> {
    /// A writer that reaches the operating system through `sys` (tests inject faults there).
    pub fn with_sys(sys: S) -> Self {
        Self {
            sys,
            proc_mem: false,
            prepared: None,
            direct: Vec::new(),
            known: Vec::new(),
        }
    }

    /// Takes the pages of `mappings` to be private mappings with exactly their `prot` (as the
    /// dynamic loader mapped an object's segments from its program headers), so that a batch
    /// whose every chunk lies inside them is prepared without reading `/proc/self/maps` (about
    /// 20 us of kernel time for a small program, more for a large one). Other batches still read
    /// the maps.
    ///
    /// # Safety
    ///
    /// Each range must be page-aligned and mapped private (not shared) with protection `prot`
    /// for as long as the writer is used, apart from the writer's own changes: the writer
    /// restores exactly `prot` after writing, and a shared mapping would carry the write to
    /// its file.
    pub unsafe fn loader_mappings(mut self, mappings: Vec<(Range<u64>, i32)>) -> Self {
        self.known = mappings
            .into_iter()
            .map(|(range, prot)| Mapping {
                range,
                prot,
                perms: alloc::string::String::new(),
                shared: false,
                path: alloc::string::String::new(),
                deleted: false,
            })
            .collect();
        self
    }

    /// Reads inside `ranges` (the object's own text and replacement section, say) with plain
    /// copies instead of system calls: much cheaper for many sites. Reads elsewhere still go
    /// through `process_vm_readv`.
    ///
    /// # Safety
    ///
    /// Every byte of `ranges` must stay mapped and readable for as long as the writer is used,
    /// and be written by no one but this writer meanwhile (no other thread without
    /// synchronisation, no `&mut` into it, such as the buffer a read fills).
    pub unsafe fn reading_directly(mut self, ranges: Vec<Range<u64>>) -> Self {
        self.direct = ranges;
        self
    }

    /// Whether `addr..addr + len` lies in one of the ranges read directly.
    fn direct(&self, addr: u64, len: usize) -> bool {
        let end = addr.saturating_add(len as u64);
        self.direct.iter().any(|r| r.start <= addr && end <= r.end)
    }

    /// Writes through `/proc/self/mem` instead of changing protections: no page of the process
    /// is ever writable and executable, not even for the moment of the copy.
    pub fn through_proc_self_mem(mut self) -> Self {
        self.proc_mem = true;
        self
    }

    /// The system-call layer.
    pub fn sys(&self) -> &S {
        &self.sys
    }

    fn prepare_batch<C: Chunks + ?Sized>(&self, chunks: &C) -> Result<Prepared, WriteError> {
        if !self.known.is_empty() {
            if let Some(p) = self.runs_of(chunks, &self.known, true)? {
                return Ok(p);
            }
        }
        let maps = self.sys.maps()?;
        self.runs_of(chunks, &maps, false)?
            .ok_or(WriteError::unchanged(0, "page is not mapped", None))
    }

    /// The runs of pages `chunks` touch, by the mappings `maps`; `None` when `known` (the
    /// [loader's](Self::loader_mappings) mappings: they may not be all) and some page lies in
    /// none of them.
    fn runs_of<C: Chunks + ?Sized>(
        &self,
        chunks: &C,
        maps: &[Mapping],
        known: bool,
    ) -> Result<Option<Prepared>, WriteError> {
        let mut runs: Vec<Run> = Vec::new();
        let mut total = 0usize;
        let mut last_end = 0u64;
        let mut restoring = true;
        for (i, (c, restore)) in chunks.chunks_from(0).enumerate() {
            let at = total;
            total += c.bytes.len();
            restoring &= restores(restore, c.bytes.len());
            if c.bytes.is_empty() {
                continue;
            }
            let end = c.addr.checked_add(c.bytes.len() as u64).ok_or_else(|| {
                WriteError::unchanged(c.addr, "chunk wraps the address space", None)
            })?;
            if c.addr < last_end {
                return Err(WriteError::unchanged(
                    c.addr,
                    "chunks are not sorted by address or overlap",
                    None,
                ));
            }
            last_end = end;
            if let Some(r) = runs.last_mut() {
                if end <= r.range.end {
                    // Every page of the chunk is in the last run already (the common case:
                    // many sites share a page).
                    r.chunks.end = i + 1;
                    continue;
                }
            }
            for page in c.addr / PAGE_SIZE..=(end - 1) / PAGE_SIZE {
                let start = page * PAGE_SIZE;
                if let Some(r) = runs.last_mut() {
                    if r.range.end > start {
                        // The page is already in the last run (chunks share it).
                        r.chunks.end = i + 1;
                        continue;
                    }
                }
                let m = match mapping_of(maps, start) {
                    Ok(m) => m,
                    // Not one of the loader's: the maps say what it is.
                    Err(_) if known => return Ok(None),
                    Err(e) => return Err(e),
                };
                match runs.last_mut() {
                    Some(r) if r.range.end == start && r.prot == m.prot => {
                        r.range.end += PAGE_SIZE;
                        r.chunks.end = i + 1;
                    }
                    _ => runs.push(Run {
                        range: start..start + PAGE_SIZE,
                        prot: m.prot,
                        chunks: i..i + 1,
                        originals_at: at,
                    }),
                }
            }
        }
        Ok(Some(Prepared {
            chunks: chunks.len(),
            via_mem: vec![false; runs.len()],
            runs,
            originals: if restoring {
                Vec::new()
            } else {
                vec![0; total]
            },
            known: restoring,
        }))
    }

    /// Writes the parts of the run's chunks that fall inside it: the new bytes, or the saved
    /// originals.
    ///
    /// # Safety
    ///
    /// As [`Writer::write`]'s: the chunks are code (or data) of this program that their bytes
    /// (and the saved originals) are valid for, prepared as `p`, and no other thread executes or
    /// accesses them meanwhile.
    unsafe fn copy_run<C: Chunks + ?Sized>(
        &self,
        p: &Prepared,
        run: &Run,
        chunks: &C,
        originals: bool,
        path: Path,
    ) -> Result<(), (u64, Errno)> {
        let mut at = run.originals_at;
        let listed = chunks.chunks_from(run.chunks.start).take(run.chunks.len());
        for (c, restore) in listed {
            let offset = at;
            at += c.bytes.len();
            let start = c.addr.max(run.range.start);
            let end = c.range().end.min(run.range.end);
            if start >= end {
                continue;
            }
            let from = (start - c.addr) as usize;
            let n = (end - start) as usize;
            let bytes = if originals && p.known {
                // `fits` checked the batch says what each chunk holds, as long as the chunk.
                match restore.and_then(|b| b.get(from..from + n)) {
                    Some(b) => b,
                    None => return Err((start, libc::EINVAL)),
                }
            } else if originals {
                &p.originals[offset + from..offset + from + n]
            } else {
                &c.bytes[from..from + n]
            };
            let r = match path {
                // SAFETY: this function's contract: the bytes are valid there, no one else
                // touches them meanwhile.
                Path::Mem => unsafe { self.sys.mem_write(start, bytes) },
                // SAFETY: as above; and the run was just made writable.
                Path::Protect => unsafe { self.sys.copy(start, bytes) },
            };
            r.map_err(|e| (start, e))?;
        }
        Ok(())
    }

    /// Restores a run's original protection, trying twice.
    fn restore_protection(&self, run: &Run) -> Result<(), Errno> {
        // SAFETY: the protection the maps (or the loader) gave these pages: what the program
        // relies on.
        let again = || unsafe { self.sys.protect(run.range.clone(), run.prot) };
        again().or_else(|_| again())
    }

    /// Writes one run (new bytes or originals), by `path` or, if the kernel refuses to make it
    /// writable, through `/proc/self/mem`. Returns the path used and the protection changes
    /// made; an error says whether the run's bytes may have changed.
    ///
    /// # Safety
    ///
    /// As [`Writer::write`]'s: the chunks are code (or data) of this program that their bytes
    /// (and the saved originals) are valid for, prepared as `p`, and no other thread executes or
    /// accesses them meanwhile.
    unsafe fn write_run<C: Chunks + ?Sized>(
        &self,
        p: &Prepared,
        run: &Run,
        chunks: &C,
        originals: bool,
        path: Path,
    ) -> Result<(Path, usize), (WriteError, bool)> {
        let fail = |addr, reason, e| WriteError::unchanged(addr, reason, Some(e));
        if path == Path::Protect {
            // SAFETY: the pages keep their protection and gain write (code on them may run);
            // `restore_protection` gives them back their own right after the copy.
            match unsafe {
                self.sys
                    .protect(run.range.clone(), run.prot | libc::PROT_WRITE)
            } {
                Ok(()) => {
                    // SAFETY: this function's contract.
                    let copied = unsafe { self.copy_run(p, run, chunks, originals, Path::Protect) };
                    let restored = self.restore_protection(run);
                    if let Err((addr, e)) = copied {
                        return Err((fail(addr, "copying into the text failed", e), true));
                    }
                    if let Err(e) = restored {
                        let reason = "mprotect back to the original protection failed";
                        return Err((fail(run.range.start, reason, e), true));
                    }
                    return Ok((Path::Protect, 2));
                }
                Err(e) if !refused(e) => {
                    let reason = "mprotect to writable failed";
                    return Err((fail(run.range.start, reason, e), false));
                }
                // Refused: this text cannot be made writable; try /proc/self/mem.
                Err(_) => {}
            }
        }
        // SAFETY: this function's contract.
        unsafe { self.copy_run(p, run, chunks, originals, Path::Mem) }.map_err(|(addr, e)| {
            let reason = "writing through /proc/self/mem failed";
            (fail(addr, reason, e), true)
        })?;
        Ok((Path::Mem, 0))
    }

    /// Writes every run of a prepared batch; returns the protection changes made.
    ///
    /// # Safety
    ///
    /// As [`Writer::write`]'s: the chunks are code (or data) of this program that their bytes
    /// (and the saved originals) are valid for, prepared as `p`, and no other thread executes or
    /// accesses them meanwhile.
    unsafe fn write_prepared<C: Chunks + ?Sized>(
        &self,
        p: &mut Prepared,
        chunks: &C,
    ) -> Result<usize, WriteError> {
        let mut path = if self.proc_mem {
            Path::Mem
        } else {
            Path::Protect
        };
        let mut protection_changes = 0;
        for i in 0..p.runs.len() {
            // SAFETY: this function's contract.
            match unsafe { self.write_run(p, &p.runs[i], chunks, false, path) } {
                Ok((used, changes)) => {
                    // Once the kernel refused to make text writable, it will refuse again.
                    path = used;
                    p.via_mem[i] = used == Path::Mem;
                    protection_changes += changes;
                }
                Err((mut e, touched)) => {
                    // A run that may be partly written is restored too, by either path.
                    p.via_mem[i] = path == Path::Mem;
                    let upto = if touched { i + 1 } else { i };
                    // SAFETY: this function's contract.
                    e.text_changed = !unsafe { self.roll_back(p, chunks, upto) };
                    return Err(e);
                }
            }
        }
        Ok(protection_changes)
    }

    /// Restores the runs `0..upto` from the saved originals, by the path that wrote each.
    ///
    /// # Safety
    ///
    /// As [`Writer::write`]'s: the chunks are code (or data) of this program that their bytes
    /// (and the saved originals) are valid for, prepared as `p`, and no other thread executes or
    /// accesses them meanwhile.
    unsafe fn roll_back<C: Chunks + ?Sized>(&self, p: &Prepared, chunks: &C, upto: usize) -> bool {
        let mut ok = true;
        for i in (0..upto).rev() {
            let path = if p.via_mem[i] {
                Path::Mem
            } else {
                Path::Protect
            };
            // SAFETY: this function's contract; the originals are what the text held.
            ok &= unsafe { self.write_run(p, &p.runs[i], chunks, true, path) }.is_ok();
        }
        // A write may say it was done when it was not (`TextSys` lets it; a read may not):
        // the text is as before only if it reads back so.
        ok && self.holds_originals(p, chunks)
    }

    /// Whether every chunk holds the bytes saved for it again (those of runs not written
    /// still do), read back a few bytes at a time through a buffer on the stack (nothing is
    /// allocated: the others may be stopped).
    fn holds_originals<C: Chunks + ?Sized>(&self, p: &Prepared, chunks: &C) -> bool {
        let mut buf = [0u8; 64];
        let mut at = 0;
        chunks.chunks_from(0).all(|(c, restore)| {
            let saved = if p.known {
                restore
            } else {
                p.originals.get(at..at + c.bytes.len())
            };
            at += c.bytes.len();
            saved.is_some_and(|saved| {
                let mut addr = c.addr;
                saved.chunks(buf.len()).all(|part| {
                    let now = &mut buf[..part.len()];
                    let same = self.read(addr, now).is_ok() && *now == *part;
                    addr += part.len() as u64;
                    same
                })
            })
        })
    }
}

/// The mapping holding the page at `start`, if it may be written.
fn mapping_of(maps: &[Mapping], start: u64) -> Result<&Mapping, WriteError> {
    let m = maps
        .iter()
        .find(|m| m.range.contains(&start))
        .ok_or(WriteError::unchanged(start, "page is not mapped", None))?;
    if m.shared {
        return Err(WriteError::unchanged(
            start,
            "page is in a shared mapping: writing it would change the file or another process",
            None,
        ));
    }
    Ok(m)
}

impl<S: TextSys> Memory for MprotectWriter<S> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if self.direct(addr, buf.len()) {
            // SAFETY: inside the ranges the creator vouched stay mapped and readable.
            unsafe {
                crate::short::copy_small(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
            };
            return Ok(());
        }
        self.sys.read(addr, buf).map_err(|_| MemoryError { addr })
    }

    fn compare_in_place(&self, addr: u64, expected: &[u8]) -> Option<bool> {
        // SAFETY: inside the ranges the creator vouched stay mapped and readable.
        self.direct(addr, expected.len())
            .then(|| unsafe { crate::memory::holds(addr, expected) })
    }

    fn read_each<R: Spans + ?Sized>(&self, ranges: &R, out: &mut [u8]) -> Result<(), MemoryError> {
        // One pass: plain copies while every range is read directly; at the first that is
        // not, the whole batch goes through the system call instead.
        let mut at = 0;
        let mut direct = true;
        for i in 0..ranges.len() {
            let (addr, len) = crate::memory::start_len(&ranges.span(i));
            if !self.direct(addr, len) {
                direct = false;
                break;
            }
            let buf = crate::memory::room(out, at, len).ok_or(MemoryError { addr })?;
            // SAFETY: inside the ranges the creator vouched stay mapped and readable.
            unsafe { crate::short::copy_small(addr as usize as *const u8, buf.as_mut_ptr(), len) };
            at += len;
        }
        if direct {
            return Ok(());
        }
        self.sys
            .read_each(ranges, out)
            .map_err(|(addr, _)| MemoryError { addr })
    }
}

impl<S: TextSys> Writer for MprotectWriter<S> {
    fn prepare<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<(), WriteError> {
        self.prepared = None;
        self.prepared = Some(self.prepare_batch(chunks)?);
        Ok(())
    }

    unsafe fn write<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<WriteStats, WriteError> {
        let mut p = match self.prepared.take() {
            Some(p) if p.fits(chunks) => p,
            _ => self.prepare_batch(chunks)?,
        };
        let mut originals = core::mem::take(&mut p.originals);
        // What a roll back writes: the batch knows it, or it is read now.
        let read = if p.known {
            Ok(())
        } else {
            self.read_each(chunks, &mut originals)
        };
        p.originals = originals;
        if let Err(e) = read {
            let reason = "cannot read the text to be overwritten";
            self.prepared = Some(p);
            return Err(WriteError::unchanged(e.addr, reason, None));
        }
        // SAFETY: the caller's contract; `p` was prepared for these chunks (`fits`, or just now).
        let result = unsafe { self.write_prepared(&mut p, chunks) };
        let pages = p.pages();
        // Kept: writing the same chunks again (such as the originals, to undo) needs no
        // preparing, so it allocates nothing.
        self.prepared = Some(p);
        let protection_changes = result?;
        Ok(WriteStats {
            pages,
            protection_changes,
        })
    }
}
