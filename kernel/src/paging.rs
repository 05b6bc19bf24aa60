//! Page permissions for the kernel image and the W^X alias writer.
//!
//! [`protect_kernel`] replaces the boot map's first four 2 MiB pages (0..8 MiB, which hold the
//! whole image) with 4 KiB pages: the text (`_stext.._etext`) and the boot code are read-only and
//! executable, read-only data (the alt tables and replacement code included) read-only and
//! non-executable, everything else writable and non-executable. Page 0 is left unmapped. With
//! CR0.WP set (boot.rs) the kernel itself cannot write its text.
//!
//! [`AliasWriter`] patches that text as Linux's `text_poke` does: each page to be written is
//! mapped, writable and non-executable, at a second virtual address in a window at 1 GiB (outside
//! the identity map), written there, unmapped and flushed from the TLB (`invlpg`); then the
//! instruction stream is serialised. The text mapping itself never becomes writable.

use alloc::vec::Vec;
use core::ops::Range;

use alt::memory::{Memory, MemoryError};
use alt::writer::{Chunks, WriteError, WriteStats, Writer};

use crate::boot::{Table, BOOT_PD, BOOT_PDPT};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const NO_EXECUTE: u64 = 1 << 63;
/// Page size.
pub const PAGE: u64 = 4096;

/// 4 KiB page tables for the first 8 MiB.
const FINE_TABLES: usize = 4;
static FINE: [Table; FINE_TABLES] = [Table::new(), Table::new(), Table::new(), Table::new()];

/// The alias window: PDPT[1] -> ALIAS_PD, ALIAS_PD[0] -> ALIAS_PT: 512 pages at 1 GiB.
pub const ALIAS_BASE: u64 = 1 << 30;
const ALIAS_SLOTS: usize = 512;
static ALIAS_PD: Table = Table::new();
static ALIAS_PT: Table = Table::new();

extern "C" {
    static __load_start: u8;
    static _stext: u8;
    static _etext: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __bss_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The kernel's text: where sites live and call targets may lie.
pub fn text() -> Range<u64> {
    // SAFETY: linker-script symbols; only their addresses are taken.
    unsafe { sym(&_stext)..sym(&_etext) }
}

/// The image, from the multiboot header to the end of `.bss`.
pub fn image() -> Range<u64> {
    // SAFETY: as in `text`.
    unsafe { sym(&__load_start)..sym(&__bss_end) }
}

fn rodata() -> Range<u64> {
    // SAFETY: as in `text`.
    unsafe { sym(&__rodata_start)..sym(&__rodata_end) }
}

fn invlpg(addr: u64) {
    // SAFETY: invalidates one TLB entry; no other effect.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

fn reload_cr3() {
    // SAFETY: writing CR3 with its own value flushes every non-global TLB entry and changes
    // nothing else; the tables it points at stay valid.
    unsafe {
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack, preserves_flags))
    };
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the callers read architectural MSRs that exist on every x86-64 CPU (EFER).
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the callers write architectural MSRs with values the CPU supports (EFER.NXE only
    // where CPUID says NX exists).
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// What [`protect_kernel`] did.
pub struct Protection {
    /// Whether non-executable pages are in use (CPUID NX; EFER.NXE set).
    pub nx: bool,
    pub text: Range<u64>,
    pub rodata: Range<u64>,
}

/// Maps the first 8 MiB with 4 KiB pages and real permissions, and sets up the alias window.
pub fn protect_kernel() -> Protection {
    let nx_supported = core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0001
        && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0;
    if nx_supported {
        const EFER: u32 = 0xC000_0080;
        wrmsr(EFER, rdmsr(EFER) | (1 << 11));
    }
    let nx = if nx_supported { NO_EXECUTE } else { 0 };
    let text = text();
    let rodata = rodata();
    let image = image();
    assert!(
        image.end <= (FINE_TABLES as u64) << 21,
        "image beyond 8 MiB"
    );
    for (t, table) in FINE.iter().enumerate() {
        for i in 0..512 {
            let addr = ((t as u64) << 21) + (i as u64) * PAGE;
            let flags = if addr == 0 {
                0 // unmapped: catches null pointers
            } else if (image.start..text.end).contains(&addr) {
                PRESENT // boot code and text: read-only, executable
            } else if rodata.contains(&addr) {
                PRESENT | nx
            } else {
                PRESENT | WRITABLE | nx
            };
            table.set(i, if flags == 0 { 0 } else { addr | flags });
        }
    }
    ALIAS_PD.set(0, ALIAS_PT.addr() | PRESENT | WRITABLE);
    BOOT_PDPT.set(1, ALIAS_PD.addr() | PRESENT | WRITABLE);
    for (t, table) in FINE.iter().enumerate() {
        BOOT_PD.set(t, table.addr() | PRESENT | WRITABLE);
    }
    reload_cr3();
    Protection {
        nx: nx_supported,
        text,
        rodata,
    }
}

/// Base of the local APIC's registers (xAPIC mode).
pub const LOCAL_APIC: u64 = 0xFEE0_0000;
static APIC_PD: Table = Table::new();

/// Maps the local APIC's registers (one 2 MiB uncached page, identity, non-executable).
pub fn map_local_apic() {
    const PAGE_SIZE_2M: u64 = 1 << 7;
    const CACHE_DISABLE: u64 = (1 << 4) | (1 << 3); // PCD | PWT
    let base = LOCAL_APIC & !((1 << 21) - 1);
    APIC_PD.set(
        ((base >> 21) & 511) as usize,
        base | PRESENT | WRITABLE | PAGE_SIZE_2M | CACHE_DISABLE | nx_bit(),
    );
    BOOT_PDPT.set(
        (LOCAL_APIC >> 30) as usize,
        APIC_PD.addr() | PRESENT | WRITABLE,
    );
    reload_cr3();
}

/// The leaf entry that maps `addr` in the fine-grained range, if any.
pub fn leaf_entry(addr: u64) -> Option<u64> {
    let t = usize::try_from(addr >> 21).ok()?;
    let e = FINE.get(t)?.get(((addr >> 12) & 511) as usize);
    (e & PRESENT != 0).then_some(e)
}

/// Maps `range` (page-aligned, inside the 4 KiB-mapped first 8 MiB: a loaded module's text in
/// the heap) read-only and executable.
pub fn map_module_text(range: Range<u64>) {
    for addr in (range.start..range.end).step_by(PAGE as usize) {
        let t = (addr >> 21) as usize;
        FINE[t].set(((addr >> 12) & 511) as usize, addr | PRESENT);
        invlpg(addr);
    }
}

/// Whether any page of `range` is mapped writable, or not mapped.
pub fn writable(range: Range<u64>) -> bool {
    (range.start..range.end)
        .step_by(PAGE as usize)
        .any(|a| leaf_entry(a).is_none_or(|e| e & WRITABLE != 0))
}

/// Whether any text page is mapped writable (it must never be).
pub fn text_writable() -> bool {
    writable(text())
}

/// Number of alias slots mapped now (0 outside [`AliasWriter::write`]).
pub fn alias_slots_mapped() -> usize {
    (0..ALIAS_SLOTS)
        .filter(|&i| ALIAS_PT.get(i) & PRESENT != 0)
        .count()
}

/// Writes read-only text through temporary writable alias mappings.
pub struct AliasWriter {
    text: Range<u64>,
    /// Alias mappings made (and removed) so far.
    pub mappings: usize,
}

impl AliasWriter {
    /// A writer for `text`, which must be identity-mapped (physical = virtual).
    ///
    /// # Safety
    ///
    /// No other CPU may execute the text being written while `write` runs (the caller holds the
    /// others at a rendezvous, or they are not started), and every address of `text` must be
    /// mapped readable.
    pub unsafe fn new(text: Range<u64>) -> Self {
        Self { text, mappings: 0 }
    }
}

impl Memory for AliasWriter {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let end = addr
            .checked_add(buf.len() as u64)
            .ok_or(MemoryError { addr })?;
        if leaf_entry(addr).is_none() || leaf_entry(end.saturating_sub(1).max(addr)).is_none() {
            return Err(MemoryError { addr });
        }
        // SAFETY: both ends are mapped in the kernel's 4 KiB range, which is contiguous and
        // readable everywhere except page 0 (checked above: a range starting at or after page 1
        // whose end is mapped covers only mapped pages).
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

impl Writer for AliasWriter {
    unsafe fn write<C: Chunks + ?Sized>(
        &mut self,
        chunks: &C,
    ) -> Result<WriteStats, WriteError> {
        // Check everything before the first byte changes.
        let mut pages: Vec<u64> = Vec::new();
        for c in chunks.iter().filter(|c| !c.bytes.is_empty()) {
            let end = c.addr + c.bytes.len() as u64;
            if c.addr < self.text.start || end > self.text.end {
                return Err(WriteError::unchanged(
                    c.addr,
                    "not inside the kernel text",
                    None,
                ));
            }
            pages.extend((c.addr / PAGE)..=((end - 1) / PAGE));
        }
        pages.sort_unstable();
        pages.dedup();
        if pages.len() > ALIAS_SLOTS {
            return Err(WriteError::unchanged(
                pages[ALIAS_SLOTS] * PAGE,
                "more pages than alias slots",
                None,
            ));
        }
        // Map: slot i aliases page pages[i] (identity: its physical address is its address).
        for (slot, &page) in pages.iter().enumerate() {
            ALIAS_PT.set(slot, (page * PAGE) | PRESENT | WRITABLE | nx_bit());
            invlpg(ALIAS_BASE + slot as u64 * PAGE);
            self.mappings += 1;
        }
        for c in chunks.iter() {
            for (i, &b) in c.bytes.iter().enumerate() {
                let addr = c.addr + i as u64;
                let slot = pages.binary_search(&(addr / PAGE)).expect("page mapped") as u64;
                let alias = ALIAS_BASE + slot * PAGE + addr % PAGE;
                // SAFETY: `alias` lies in a slot just mapped writable onto the page holding
                // `addr`, inside the kernel text (checked above); no other CPU runs that code.
                unsafe { core::ptr::write_volatile(alias as *mut u8, b) };
            }
        }
        for slot in 0..pages.len() {
            ALIAS_PT.set(slot, 0);
            invlpg(ALIAS_BASE + slot as u64 * PAGE);
        }
        Ok(WriteStats {
            pages: pages.len(),
            protection_changes: 2 * pages.len(),
        })
    }
}

/// NX in page-table entries where EFER.NXE is set, else 0.
pub fn nx_bit() -> u64 {
    const EFER: u32 = 0xC000_0080;
    if rdmsr(EFER) & (1 << 11) != 0 {
        NO_EXECUTE
    } else {
        0
    }
}
