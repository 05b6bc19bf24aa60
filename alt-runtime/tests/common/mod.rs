//! Helpers for the patching tests: a mapped code buffer laid out like a small program, tables
//! whose self-relative fields point into it, an independent decoder (iced-x86), and a lock that
//! keeps page-protection changes of one test from being observed half-done by another.

#![allow(dead_code)]

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use alt_runtime::driver::{ApplyError, Patched, Prepared};
use alt_runtime::os::linux::MprotectWriter;
use alt_runtime::plan::{plan_alternatives, Layout, Plan, TableEntry, TableError};
use alt_runtime::rendezvous::Alone;
use alt_runtime::table::{relative, AltEntry, AltFlags, ALT_ENTRY_SIZE};
use alt_runtime::writer::{Chunk, Writer};
use alt_runtime::{Capability, CapabilitySet, Errata, Features};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};

pub const PAGE: u64 = 4096;
/// Pages 0..4: text (sites and call targets), R-X once sealed.
pub const TEXT: u64 = 0;
pub const TEXT_LEN: u64 = 4 * PAGE;
/// Page 4: the replacement section, R-X once sealed (it lies in the text range, as
/// `alt_replacement` lies in a program's executable segment).
pub const REPL: u64 = 4 * PAGE;
/// Page 5: data (tables, constants), RW, never executable.
pub const DATA: u64 = 5 * PAGE;
/// Page 6: PROT_NONE, unreadable.
pub const NONE: u64 = 6 * PAGE;
pub const PAGES: u64 = 7;

/// Tests that change page protections, or that read every mapping's protection, hold this lock:
/// the writer keeps a page writable *and* executable for the moment of a write, which another
/// test reading `/proc/self/maps` must not see.
pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer used by the tests.
pub fn writer() -> MprotectWriter {
    MprotectWriter::new()
}

/// The rendezvous used by the tests: none.
pub fn alone() -> Alone {
    // SAFETY: the test harness runs other tests on other threads, but every byte these tests
    // write lies in a buffer mapped by the test itself and executed only by that test's thread,
    // after the write (and the serialising instruction) has completed.
    unsafe { Alone::new() }
}

/// Carries out an alternatives plan made against a test buffer.
pub fn apply(plan: Plan) -> Result<Patched, ApplyError> {
    // SAFETY: the plan was made by the planner for a test buffer's code, from a table the test
    // wrote for that code.
    unsafe { Prepared::from_alternatives(plan) }.apply(&mut writer(), &mut alone())
}

/// A private anonymous mapping laid out as described by the constants above.
pub struct Buf {
    pub base: u64,
    sealed: bool,
}

impl Buf {
    /// Maps the buffer: text and replacement pages filled with `int3`, data zeroed, the last
    /// page inaccessible.
    pub fn new() -> Buf {
        let len = (PAGES * PAGE) as usize;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        let base = p as u64;
        // SAFETY: the first DATA bytes of the mapping just made are readable and writable.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xcc, DATA as usize) };
        let buf = Buf {
            base,
            sealed: false,
        };
        buf.protect(NONE, PAGE, libc::PROT_NONE);
        buf
    }

    fn protect(&self, off: u64, len: u64, prot: i32) {
        // SAFETY: the range is page-aligned and lies inside this buffer's own mapping.
        let rc =
            unsafe { libc::mprotect((self.base + off) as *mut libc::c_void, len as usize, prot) };
        assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
    }

    /// Address of a text offset.
    pub fn text(&self, off: u64) -> u64 {
        assert!(off < TEXT_LEN);
        self.base + TEXT + off
    }

    /// Address of a replacement-section offset.
    pub fn repl(&self, off: u64) -> u64 {
        assert!(off < PAGE);
        self.base + REPL + off
    }

    /// Address of a data offset.
    pub fn data(&self, off: u64) -> u64 {
        assert!(off < PAGE);
        self.base + DATA + off
    }

    /// Address of an offset in the inaccessible page.
    pub fn none(&self, off: u64) -> u64 {
        self.base + NONE + off
    }

    /// Writes bytes at `addr`: directly while the buffer is not sealed (or in the data page),
    /// through the writer otherwise.
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        assert!(addr >= self.base && addr + bytes.len() as u64 <= self.base + NONE);
        if self.sealed && addr < self.base + DATA {
            // SAFETY: the buffer is the test's own; its code runs only on the test's thread.
            unsafe { writer().write(&[Chunk { addr, bytes }][..]) }
                .expect("test write through the writer");
        } else {
            // SAFETY: the range is inside the buffer and, here, mapped writable.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        }
    }

    /// Makes the text and replacement pages read-execute, as a loaded program's are.
    pub fn seal(&mut self) {
        self.protect(TEXT, DATA, libc::PROT_READ | libc::PROT_EXEC);
        self.sealed = true;
    }

    /// The bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        assert!(addr >= self.base && addr + len as u64 <= self.base + NONE);
        // SAFETY: inside the readable part of the buffer.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
    }

    /// Every readable byte of the buffer (text, replacements, data).
    pub fn snapshot(&self) -> Vec<u8> {
        self.read(self.base, NONE as usize)
    }

    /// The text ranges: text and replacement pages.
    pub fn text_ranges(&self) -> Vec<Range<u64>> {
        std::iter::once(self.base..self.base + DATA).collect()
    }

    /// The replacement section.
    pub fn repl_range(&self) -> Range<u64> {
        self.base + REPL..self.base + REPL + PAGE
    }

    /// Plans a table against this buffer's layout, reading through the test writer.
    pub fn plan(&self, entries: &[TableEntry], caps: &CapabilitySet) -> Result<Plan, TableError> {
        let text = self.text_ranges();
        let layout = Layout {
            text: &text,
            replacements: self.repl_range(),
        };
        plan_alternatives(entries, &layout, caps, &writer())
    }

    /// Writes a table of `specs` into the data page at `slot` (each slot holds 64 entries) with
    /// self-relative fields computed from each entry's real address, and returns its entries
    /// with those addresses, placeholders included, in table order.
    pub fn table(&self, slot: u64, specs: &[Spec]) -> Vec<TableEntry> {
        assert!(specs.len() <= 64 && slot < 5);
        let start = self.data(slot * 64 * ALT_ENTRY_SIZE as u64);
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let addr = start + (i * ALT_ENTRY_SIZE) as u64;
                let entry = s.encode(addr);
                self.put(addr, &entry.to_bytes());
                TableEntry { addr, entry }
            })
            .collect()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing refers to it any more (the
        // functions the tests called in it have returned).
        unsafe { libc::munmap(self.base as *mut libc::c_void, (PAGES * PAGE) as usize) };
    }
}

/// One table entry, with absolute addresses.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub site: u64,
    pub site_len: u8,
    /// Replacement code, or call target.
    pub repl: u64,
    pub repl_len: u8,
    pub key: u16,
}

impl Spec {
    /// An inline replacement keyed by `cap`.
    pub fn inline(site: u64, site_len: u8, repl: u64, repl_len: u8, cap: Capability) -> Spec {
        Spec {
            site,
            site_len,
            repl,
            repl_len,
            key: AltEntry::make_key(cap.id(), AltFlags::empty()),
        }
    }

    /// A direct call keyed by `cap`.
    pub fn call(site: u64, site_len: u8, target: u64, cap: Capability) -> Spec {
        Spec {
            site,
            site_len,
            repl: target,
            repl_len: 0,
            key: AltEntry::make_key(cap.id(), AltFlags::DIRECT_CALL),
        }
    }

    /// The same entry, holding when its capability is absent.
    pub fn not(mut self) -> Spec {
        self.key |= AltFlags::NOT.bits();
        self
    }

    /// The same entry with a raw key.
    pub fn key(mut self, key: u16) -> Spec {
        self.key = key;
        self
    }

    /// The all-zero placeholder entry.
    pub fn placeholder() -> Spec {
        Spec {
            site: 0,
            site_len: 0,
            repl: 0,
            repl_len: 0,
            key: 0,
        }
    }

    fn encode(&self, addr: u64) -> AltEntry {
        if self.site == 0 && self.site_len == 0 && self.key == 0 {
            return AltEntry {
                site: 0,
                replacement: 0,
                key: 0,
                site_len: 0,
                replacement_len: 0,
            };
        }
        AltEntry {
            site: relative(addr, self.site).expect("site within 2 GiB"),
            replacement: relative(addr + 4, self.repl).expect("replacement within 2 GiB"),
            key: self.key,
            site_len: self.site_len,
            replacement_len: self.repl_len,
        }
    }
}

pub fn feature(f: Features) -> Capability {
    Capability::feature(f).unwrap()
}

pub fn erratum(e: Errata) -> Capability {
    Capability::erratum(e).unwrap()
}

pub fn caps(features: Features, errata: Errata) -> CapabilitySet {
    CapabilitySet::new(features, errata)
}

/// `call target` placed at `at`, encoded by hand.
pub fn call_to(at: u64, target: u64) -> [u8; 5] {
    let rel = (target as i64 - (at as i64 + 5)) as i32;
    let r = rel.to_le_bytes();
    [0xe8, r[0], r[1], r[2], r[3]]
}

/// `mov eax, imm32`.
pub fn mov_eax(imm: u32) -> [u8; 5] {
    let i = imm.to_le_bytes();
    [0xb8, i[0], i[1], i[2], i[3]]
}

/// Concatenates byte slices.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The recommended NOPs of Linux's `x86_nops` (arch/x86/include/asm/nops.h), written out here
/// independently of the runtime's own table.
pub const LINUX_NOPS: [&[u8]; 12] = [
    &[],
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[
        0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
    ],
];

/// The documented filler for a run of `n` bytes: NOPs of at most 11 bytes, longest first, up to
/// 22 bytes; `jmp rel8` over `int3`s up to 129 bytes.
pub fn expected_fill(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if n <= 22 {
        let mut left = n;
        while left > 0 {
            let k = left.min(11);
            out.extend_from_slice(LINUX_NOPS[k]);
            left -= k;
        }
    } else {
        assert!(n <= 129);
        out.extend_from_slice(&[0xeb, (n - 2) as u8]);
        out.resize(n, 0xcc);
    }
    out
}

/// Decodes `bytes` placed at `ip` with iced-x86, asserting that they are whole valid
/// instructions that end exactly at `ip + bytes.len()`.
pub fn decode_whole(bytes: &[u8], ip: u64) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        assert!(
            !i.is_invalid(),
            "iced-x86 cannot decode {bytes:02x?} at offset {:#x}: {:?}",
            i.ip() - ip,
            d.last_error()
        );
        out.push(i);
    }
    let end = out.last().map_or(ip, |i| i.next_ip());
    assert_eq!(
        end,
        ip + bytes.len() as u64,
        "{bytes:02x?} overruns its end"
    );
    out
}

/// Checks that `bytes` placed at `ip` is padding as [`expected_fill`] describes it, as seen by
/// iced-x86: only NOPs, or one `jmp` to the end followed by `int3`s.
pub fn assert_padding(bytes: &[u8], ip: u64) {
    let insns = decode_whole(bytes, ip);
    let end = ip + bytes.len() as u64;
    if bytes.len() <= 22 {
        assert!(
            insns.iter().all(|i| i.mnemonic() == Mnemonic::Nop),
            "{bytes:02x?} is not all NOPs"
        );
        let lens: Vec<usize> = insns.iter().map(|i| i.len()).collect();
        let want: Vec<usize> = if bytes.len() > 11 {
            vec![11, bytes.len() - 11]
        } else {
            vec![bytes.len()]
        };
        assert_eq!(lens, want, "NOP lengths of {bytes:02x?}");
    } else {
        assert_eq!(insns[0].mnemonic(), Mnemonic::Jmp);
        assert_eq!(insns[0].near_branch_target(), end);
        assert!(insns[1..].iter().all(|i| i.mnemonic() == Mnemonic::Int3));
    }
}

/// Calls the function at `addr`.
///
/// # Safety
///
/// `addr` must be an executable function that follows the C calling convention, takes no
/// arguments (or ignores `rdi`), and returns in `rax`.
pub unsafe fn call1(addr: u64, arg: u64) -> u64 {
    // SAFETY: the caller's contract.
    let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(addr as usize) };
    f(arg)
}
