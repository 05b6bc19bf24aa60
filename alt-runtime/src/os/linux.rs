//! Hosted Linux: the `mprotect` writer and the process's own text ranges.
//!
//! [`MprotectWriter`] makes the pages of a batch writable, one contiguous run at a time, writes,
//! and restores each page's exact original protection as read from `/proc/self/maps`. While a
//! run is writable it keeps its execute permission (code on the same page, possibly the writer's
//! own, may run), so the window is made as short as possible: protect one run, copy its bytes,
//! restore it. After the batch no page is writable and executable unless it was before.
//!
//! Rewriting code that another thread may be executing is not safe without a rendezvous, so the
//! writer refuses when the process has more than one thread, unless the caller takes that
//! responsibility with [`MprotectWriter::allow_other_threads`].
//!
//! Strict W^X: with [`MprotectWriter::through_proc_self_mem`] no page is ever made writable; the
//! bytes are written through `/proc/self/mem`, which the kernel lets a process use on its own
//! read-only mappings (as debuggers poke text). The writer also falls back to that path by itself
//! when the kernel refuses to make text writable (SELinux `execmod`, PaX `MPROTECT`) before
//! anything was written.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use std::io::Read;

use crate::plan::{Memory, MemoryError};
use crate::writer::{pages_touched, serialize, Chunk, WriteError, WriteStats, Writer, PAGE_SIZE};

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Address range.
    pub range: Range<u64>,
    /// `PROT_*` bits.
    pub prot: i32,
    /// The permission field as printed (`r-xp`).
    pub perms: String,
    /// The path or pseudo-path, if any.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is both writable and executable.
    pub fn is_writable_and_executable(&self) -> bool {
        self.prot & libc::PROT_WRITE != 0 && self.prot & libc::PROT_EXEC != 0
    }
}

/// Reads and parses `/proc/self/maps`.
pub fn read_maps() -> Result<Vec<Mapping>, WriteError> {
    let mut text = String::new();
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| WriteError {
            addr: 0,
            reason: "cannot read /proc/self/maps",
            os_error: e.raw_os_error(),
        })?;
    Ok(parse_maps(&text))
}

/// Parses the text of a `/proc/PID/maps` file. Lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let p = perms.as_bytes();
            if p.len() < 3 {
                return None;
            }
            let mut prot = 0;
            if p[0] == b'r' {
                prot |= libc::PROT_READ;
            }
            if p[1] == b'w' {
                prot |= libc::PROT_WRITE;
            }
            if p[2] == b'x' {
                prot |= libc::PROT_EXEC;
            }
            let path = fields.nth(3).unwrap_or("").into();
            Some(Mapping {
                range: start..end,
                prot,
                perms: perms.into(),
                path,
            })
        })
        .collect()
}

/// Number of threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> Result<usize, WriteError> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .map_err(|e| WriteError {
            addr: 0,
            reason: "cannot list /proc/self/task",
            os_error: e.raw_os_error(),
        })
}

/// Number of threads, allowing threads that were just joined a moment to leave
/// `/proc/self/task` (a joined thread can still be listed while the kernel reaps it).
fn settled_thread_count() -> Result<usize, WriteError> {
    let mut n = thread_count()?;
    for _ in 0..50 {
        if n <= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        n = thread_count()?;
    }
    Ok(n)
}

/// Writes the process's own text with `mprotect`.
#[derive(Debug, Default)]
pub struct MprotectWriter {
    allow_threads: bool,
    proc_mem: bool,
    /// `/proc/self/maps` as last read: reads of many sites parse it once. A read that the cache
    /// does not cover reads it again; `write` always reads it fresh and drops the cache.
    maps: core::cell::RefCell<Option<Vec<Mapping>>>,
}

impl MprotectWriter {
    /// A writer that refuses to write while the process has other threads.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the writer write while other threads exist.
    ///
    /// # Safety
    ///
    /// No other thread may execute, or be about to execute, any byte being written while
    /// [`Writer::write`] runs, and each other thread must execute a serialising instruction
    /// before it next runs patched code.
    pub unsafe fn allow_other_threads(mut self) -> Self {
        self.allow_threads = true;
        self
    }

    /// Writes through `/proc/self/mem` instead of changing protections: no page of the process
    /// is ever writable and executable, not even for the moment of the copy.
    pub fn through_proc_self_mem(mut self) -> Self {
        self.proc_mem = true;
        self
    }
}

/// Writes every chunk through `/proc/self/mem`; the pages keep their protections.
fn write_proc_self_mem(chunks: &[Chunk<'_>]) -> Result<(), WriteError> {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .map_err(|e| WriteError {
            addr: chunks.first().map_or(0, |c| c.addr),
            reason: "cannot open /proc/self/mem for writing",
            os_error: e.raw_os_error(),
        })?;
    for c in chunks {
        mem.write_all_at(c.bytes, c.addr).map_err(|e| WriteError {
            addr: c.addr,
            reason: "writing through /proc/self/mem failed",
            os_error: e.raw_os_error(),
        })?;
    }
    Ok(())
}

impl Memory for MprotectWriter {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let end = addr
            .checked_add(buf.len() as u64)
            .ok_or(MemoryError { addr })?;
        let mut cache = self.maps.borrow_mut();
        let covered = cache
            .as_ref()
            .is_some_and(|m| check_covered(m, addr..end, libc::PROT_READ).is_ok());
        if !covered {
            let maps = read_maps().map_err(|_| MemoryError { addr })?;
            check_covered(&maps, addr..end, libc::PROT_READ)
                .map_err(|a| MemoryError { addr: a })?;
            *cache = Some(maps);
        }
        // SAFETY: /proc/self/maps says every byte of the range is mapped readable.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }
}

/// Checks that `range` is covered by mappings with at least `prot`; returns the first address
/// that is not.
fn check_covered(maps: &[Mapping], range: Range<u64>, prot: i32) -> Result<(), u64> {
    let mut at = range.start;
    while at < range.end {
        let m = maps
            .iter()
            .find(|m| m.range.contains(&at) && m.prot & prot == prot)
            .ok_or(at)?;
        at = m.range.end;
    }
    Ok(())
}

/// A run of pages with one original protection.
struct Piece {
    range: Range<u64>,
    prot: i32,
}

impl Writer for MprotectWriter {
    fn write(&mut self, chunks: &[Chunk<'_>]) -> Result<WriteStats, WriteError> {
        if chunks.is_empty() {
            return Ok(WriteStats::default());
        }
        if !self.allow_threads {
            let n = settled_thread_count()?;
            if n > 1 {
                return Err(WriteError {
                    addr: chunks[0].addr,
                    reason: "the process has other threads; patch before starting them, or \
                             take responsibility with MprotectWriter::allow_other_threads",
                    os_error: None,
                });
            }
        }

        // Contiguous page runs, split where the original protection changes.
        self.maps.get_mut().take();
        let maps = read_maps()?;
        let mut pages: Vec<u64> = Vec::new();
        for c in chunks {
            if c.bytes.is_empty() {
                continue;
            }
            let end = c.addr.checked_add(c.bytes.len() as u64).ok_or(WriteError {
                addr: c.addr,
                reason: "chunk wraps the address space",
                os_error: None,
            })?;
            let first = c.addr / PAGE_SIZE;
            let last = (end - 1) / PAGE_SIZE;
            pages.extend(first..=last);
        }
        pages.sort_unstable();
        pages.dedup();
        let mut pieces: Vec<Piece> = Vec::new();
        for page in pages {
            let start = page * PAGE_SIZE;
            let m = maps
                .iter()
                .find(|m| m.range.contains(&start))
                .ok_or(WriteError {
                    addr: start,
                    reason: "page is not mapped",
                    os_error: None,
                })?;
            match pieces.last_mut() {
                Some(p) if p.range.end == start && p.prot == m.prot => p.range.end += PAGE_SIZE,
                _ => pieces.push(Piece {
                    range: start..start + PAGE_SIZE,
                    prot: m.prot,
                }),
            }
        }

        if self.proc_mem {
            write_proc_self_mem(chunks)?;
            serialize();
            return Ok(WriteStats {
                pages: pages_touched(chunks),
                protection_changes: 0,
            });
        }

        let mut protection_changes = 0;
        for (i, piece) in pieces.iter().enumerate() {
            let len = (piece.range.end - piece.range.start) as usize;
            let ptr = piece.range.start as usize as *mut libc::c_void;
            // SAFETY: the range is page-aligned and mapped (checked against /proc/self/maps);
            // adding PROT_WRITE to a private mapping does not affect other mappings.
            let rc = unsafe { libc::mprotect(ptr, len, piece.prot | libc::PROT_WRITE) };
            if rc != 0 {
                let err = std::io::Error::last_os_error().raw_os_error();
                let refused = matches!(err, Some(libc::EACCES) | Some(libc::EPERM));
                if i == 0 && refused {
                    // The kernel will not make this text writable (and nothing is written
                    // yet): write through /proc/self/mem instead.
                    write_proc_self_mem(chunks)?;
                    serialize();
                    return Ok(WriteStats {
                        pages: pages_touched(chunks),
                        protection_changes: 0,
                    });
                }
                return Err(WriteError {
                    addr: piece.range.start,
                    reason: "mprotect to writable failed",
                    os_error: std::io::Error::last_os_error().raw_os_error(),
                });
            }
            for c in chunks {
                let start = c.addr.max(piece.range.start);
                let end = (c.addr + c.bytes.len() as u64).min(piece.range.end);
                if start < end {
                    let from = (start - c.addr) as usize;
                    let n = (end - start) as usize;
                    // SAFETY: the destination lies inside the piece just made writable; the
                    // source is a live slice of at least `from + n` bytes.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            c.bytes.as_ptr().add(from),
                            start as usize as *mut u8,
                            n,
                        )
                    };
                }
            }
            // SAFETY: as above; restores the protection the pages had.
            let rc = unsafe { libc::mprotect(ptr, len, piece.prot) };
            if rc != 0 {
                return Err(WriteError {
                    addr: piece.range.start,
                    reason: "mprotect back to the original protection failed",
                    os_error: std::io::Error::last_os_error().raw_os_error(),
                });
            }
            protection_changes += 2;
        }
        serialize();
        Ok(WriteStats {
            pages: pages_touched(chunks),
            protection_changes,
        })
    }
}

/// The executable segments of the loaded object (executable or shared library) that contains
/// `addr`, from the dynamic loader's program headers.
pub fn executable_segments_containing(addr: u64) -> Vec<Range<u64>> {
    struct Search {
        addr: u64,
        found: Vec<Range<u64>>,
    }
    unsafe extern "C" fn callback(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info pointer, and `data` is the `Search` we
        // passed, alive for the whole iteration.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        let base = info.dlpi_addr;
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader guarantees dlpi_phnum headers at dlpi_phdr.
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let load = |p: &&libc::Elf64_Phdr| p.p_type == libc::PT_LOAD;
        let contains = phdrs.iter().filter(load).any(|p| {
            let start = base.wrapping_add(p.p_vaddr);
            (start..start.wrapping_add(p.p_memsz)).contains(&search.addr)
        });
        if !contains {
            return 0;
        }
        search.found = phdrs
            .iter()
            .filter(load)
            .filter(|p| p.p_flags & libc::PF_X != 0)
            .map(|p| {
                let start = base.wrapping_add(p.p_vaddr);
                start..start.wrapping_add(p.p_memsz)
            })
            .collect();
        1
    }
    let mut search = Search {
        addr,
        found: Vec::new(),
    };
    // SAFETY: the callback only reads what the loader hands it and writes `search`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(callback),
            &mut search as *mut Search as *mut libc::c_void,
        );
    }
    search.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a25000 r-xp 00002000 fe:01 123 /usr/bin/x\n\
             7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]\n\
             garbage\n\
             7f00-7f10 rwxp 00000000 00:00 0\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].range, 0x55d0c0a00000..0x55d0c0a25000);
        assert_eq!(m[0].prot, libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(m[0].path, "/usr/bin/x");
        assert_eq!(m[1].path, "[stack]");
        assert!(!m[1].is_writable_and_executable());
        assert!(m[2].is_writable_and_executable());
        assert_eq!(m[2].path, "");
    }

    #[test]
    fn coverage_checks_find_the_first_hole() {
        let maps =
            parse_maps("1000-2000 r-xp 0 0:0 0\n2000-3000 r--p 0 0:0 0\n4000-5000 r-xp 0 0:0 0\n");
        assert_eq!(
            check_covered(&maps, 0x1800..0x2800, libc::PROT_READ),
            Ok(())
        );
        assert_eq!(
            check_covered(&maps, 0x1800..0x2800, libc::PROT_EXEC),
            Err(0x2000)
        );
        assert_eq!(
            check_covered(&maps, 0x2800..0x4800, libc::PROT_READ),
            Err(0x3000)
        );
    }

    #[test]
    fn this_test_binary_has_executable_segments() {
        let here = this_test_binary_has_executable_segments as *const () as usize as u64;
        let segs = executable_segments_containing(here);
        assert!(segs.iter().any(|r| r.contains(&here)), "{segs:x?}");
    }
}
