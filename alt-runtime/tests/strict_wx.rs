//! Strict W^X: the writer can patch read-only executable text without ever making a page
//! writable, by writing through `/proc/self/mem`.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use alt_runtime::os::linux::{read_maps, MprotectWriter};
use alt_runtime::writer::{Chunk, Writer};

/// One page mapped read+execute holding `mov eax, 1; ret`.
fn rx_page() -> *mut u8 {
    // SAFETY: a fresh anonymous private mapping; written while writable, then made R-X.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let code: [u8; 6] = [0xb8, 1, 0, 0, 0, 0xc3];
        std::ptr::copy_nonoverlapping(code.as_ptr(), p as *mut u8, code.len());
        assert_eq!(
            libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        p as *mut u8
    }
}

fn perms(addr: u64) -> String {
    read_maps()
        .unwrap()
        .into_iter()
        .find(|m| m.range.contains(&addr))
        .map(|m| m.perms)
        .unwrap()
}

#[test]
fn text_is_patched_without_ever_becoming_writable() {
    let page = rx_page();
    let addr = page as u64;
    // SAFETY: the page holds a complete function `mov eax, 1; ret`.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(page) };
    assert_eq!(f(), 1);
    assert_eq!(perms(addr), "r-xp");

    let mut w = MprotectWriter::new().through_proc_self_mem();
    // SAFETY: the page is private to this test; no other thread runs it.
    let stats = unsafe {
        w.write(
            &[Chunk {
                addr: addr + 1,
                bytes: &[42],
            }][..],
        )
    }
    .unwrap();
    assert_eq!(stats.protection_changes, 0, "no mprotect at all");
    assert_eq!(stats.pages, 1);
    assert_eq!(perms(addr), "r-xp", "the page kept its protection");
    assert_eq!(f(), 42, "the patched code runs");
    // SAFETY: unmapping the test's own page; `f` is not used afterwards.
    unsafe { libc::munmap(page as *mut libc::c_void, 4096) };
}
