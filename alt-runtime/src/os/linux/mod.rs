//! Hosted Linux: the process's text, its mappings and threads, and the writer.
//!
//! - `/proc/self/maps`, in [`maps`];
//! - the system calls the writer makes, behind one trait (fault injection in tests), in
//!   [`sys`];
//! - [`MprotectWriter`]: writes the process's own text, all or nothing;
//! - [`LoadSegments`] ([`executable_segments_containing`], [`loader_text_mappings_containing`]):
//!   an object's text ranges and their protections from the dynamic loader.

use alloc::vec::Vec;
use core::ops::Range;

use crate::writer::WriteError;

pub mod maps;
pub mod sys;
mod writer;

pub use maps::{parse_maps, read_maps, Mapping};
pub use sys::{Call, Fault, FaultInjector, LinuxSys, TextSys};
pub use writer::MprotectWriter;

/// The address of the weak symbol `$name` (a string literal) from this object's GOT: null
/// where nothing in the process defines it. x86-64 only.
#[cfg(target_arch = "x86_64")]
macro_rules! weak_symbol_address {
    ($name:literal) => {{
        let p: *const u8;
        // SAFETY: loads the address of a weak symbol from the GOT, null if nothing defines
        // it; the asm reads only the GOT entry.
        unsafe {
            core::arch::asm!(
                concat!(".weak ", $name),
                concat!("mov {}, qword ptr [rip + ", $name, "@GOTPCREL]"),
                out(reg) p,
                options(nostack, readonly, preserves_flags)
            )
        };
        p
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use weak_symbol_address;

/// Number of threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> Result<usize, WriteError> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .map_err(|e| WriteError::unchanged(0, "cannot list /proc/self/task", e.raw_os_error()))
}

/// The file name of the loaded object (executable or shared library) that contains `addr`, as
/// the dynamic loader knows it (`?` where it does not).
pub fn object_name_containing(addr: u64) -> alloc::string::String {
    let mut info = core::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let found = unsafe { libc::dladdr(addr as usize as *const libc::c_void, info.as_mut_ptr()) };
    // SAFETY: zero-initialised, and filled by dladdr when it returns non-zero.
    let info = unsafe { info.assume_init() };
    if found == 0 || info.dli_fname.is_null() {
        return alloc::string::String::from("?");
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let name = unsafe { core::ffi::CStr::from_ptr(info.dli_fname) };
    match name.to_string_lossy() {
        n if n.is_empty() => std::env::current_exe()
            .map(|p| alloc::format!("{}", p.display()))
            .unwrap_or_else(|_| alloc::string::String::from("?")),
        n => n.into_owned(),
    }
}

/// The executable segments of the loaded object (executable or shared library) that contains
/// `addr`, from the dynamic loader's program headers.
pub fn executable_segments_containing(addr: u64) -> Vec<Range<u64>> {
    LoadSegments::containing(addr).executable()
}

/// [`LoadSegments::loader_text_mappings`] of the object that contains `addr`.
pub fn loader_text_mappings_containing(addr: u64) -> Vec<(Range<u64>, i32)> {
    LoadSegments::containing(addr).loader_text_mappings()
}

/// The `PT_LOAD` segments (address range, `p_flags`) of one loaded object, read once from the
/// dynamic loader's program headers.
#[derive(Clone, Debug)]
pub struct LoadSegments(Vec<(Range<u64>, u32)>);

impl LoadSegments {
    /// The segments of the loaded object (executable or shared library) that contains `addr`;
    /// none if no object does.
    pub fn containing(addr: u64) -> Self {
        LoadSegments(load_segments_containing(addr))
    }

    /// The executable segments' address ranges.
    pub fn executable(&self) -> Vec<Range<u64>> {
        self.0
            .iter()
            .filter(|(_, flags)| flags & libc::PF_X != 0)
            .map(|(range, _)| range.clone())
            .collect()
    }

    /// The pages of the executable segments with the protection the dynamic loader mapped them
    /// with (from each segment's `p_flags`), for [`MprotectWriter::loader_mappings`]. A segment
    /// whose first or last page it shares with another segment is left out (that page's
    /// protection is not the segment's alone).
    pub fn loader_text_mappings(&self) -> Vec<(Range<u64>, i32)> {
        let segments = &self.0;
        let pages = |r: &Range<u64>| {
            let page = crate::writer::PAGE_SIZE;
            r.start / page * page..r.end.div_ceil(page) * page
        };
        segments
            .iter()
            .enumerate()
            .filter(|(_, (_, flags))| flags & libc::PF_X != 0)
            .filter(|&(i, (r, _))| {
                let mine = pages(r);
                segments.iter().enumerate().all(|(k, (other, _))| {
                    let theirs = pages(other);
                    k == i || theirs.end <= mine.start || mine.end <= theirs.start
                })
            })
            .map(|(_, (r, flags))| {
                let mut prot = 0;
                for (flag, p) in [
                    (libc::PF_R, libc::PROT_READ),
                    (libc::PF_W, libc::PROT_WRITE),
                    (libc::PF_X, libc::PROT_EXEC),
                ] {
                    if flags & flag != 0 {
                        prot |= p;
                    }
                }
                (pages(r), prot)
            })
            .collect()
    }
}

/// The `PT_LOAD` segments (address range, `p_flags`) of the loaded object that contains
/// `addr`, from the dynamic loader's program headers.
fn load_segments_containing(addr: u64) -> Vec<(Range<u64>, u32)> {
    struct Search {
        addr: u64,
        found: Vec<(Range<u64>, u32)>,
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
        let range = |p: &libc::Elf64_Phdr| {
            let start = base.wrapping_add(p.p_vaddr);
            start..start.wrapping_add(p.p_memsz)
        };
        let load = |p: &&libc::Elf64_Phdr| p.p_type == libc::PT_LOAD;
        if !phdrs
            .iter()
            .filter(load)
            .any(|p| range(p).contains(&search.addr))
        {
            return 0;
        }
        search.found = phdrs
            .iter()
            .filter(load)
            .map(|p| (range(p), p.p_flags))
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
    fn this_test_binary_has_executable_segments() {
        let here = this_test_binary_has_executable_segments as *const () as usize as u64;
        let segs = executable_segments_containing(here);
        assert!(segs.iter().any(|r| r.contains(&here)), "{segs:x?}");
    }

    #[test]
    fn loader_text_mappings_agree_with_proc_self_maps() {
        let here = loader_text_mappings_agree_with_proc_self_maps as *const () as usize as u64;
        let known = loader_text_mappings_containing(here);
        assert!(known.iter().any(|(r, _)| r.contains(&here)), "{known:x?}");
        let maps = read_maps().unwrap();
        for (range, prot) in &known {
            assert_eq!(range.start % 4096, 0);
            assert_eq!(range.end % 4096, 0);
            // Every page of it is in a private mapping with exactly that protection.
            let mut at = range.start;
            while at < range.end {
                let m = maps
                    .iter()
                    .find(|m| m.range.contains(&at))
                    .unwrap_or_else(|| panic!("{at:#x} not mapped: {maps:#x?}"));
                assert_eq!(m.prot, *prot, "{at:#x} in {m:#x?}");
                assert!(!m.shared, "{m:#x?}");
                at = m.range.end.min(range.end);
            }
        }
    }
}
