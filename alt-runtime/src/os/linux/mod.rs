//! Hosted Linux: the process's text, its mappings and threads, and the writer.
//!
//! - `/proc/self/maps`, in [`maps`];
//! - the system calls the writer makes, behind one trait (fault injection in tests), in
//!   [`sys`];
//! - [`MprotectWriter`]: writes the process's own text, all or nothing;
//! - [`executable_segments_containing`]: an object's text ranges from the dynamic loader.

use alloc::vec::Vec;
use core::ops::Range;

use crate::writer::WriteError;

pub mod maps;
pub mod sys;
mod writer;

pub use maps::{parse_maps, read_maps, Mapping};
pub use sys::{Call, Fault, FaultInjector, LinuxSys, TextSys};
pub use writer::MprotectWriter;

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
    fn this_test_binary_has_executable_segments() {
        let here = this_test_binary_has_executable_segments as *const () as usize as u64;
        let segs = executable_segments_containing(here);
        assert!(segs.iter().any(|r| r.contains(&here)), "{segs:x?}");
    }
}
