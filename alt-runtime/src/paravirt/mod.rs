//! Paravirt operations: tables of function pointers, backends, and the patching of call sites.
//!
//! An *operations table* (declared with `alt::paravirt_ops!`) is a `#[no_mangle]` static array of
//! `extern "C"` function pointers, one per *operation*, that C can call as
//! `call *TABLE+8*op(%rip)`. Every Rust call site compiles to exactly that indirect call
//! (`ff 15 disp32`, 6 bytes), padded with NOPs so the operation's native inline sequence fits,
//! and a [`PvEntry`] in the table's own section `alt_pv_<TABLE>` records the site, the operation
//! and the registers the site lets the operation change (its clobber set). Unpatched, the site
//! is an ordinary indirect call and always correct.
//!
//! A *backend* gives each operation an implementation ([`OpChoice`]): the native one, another
//! `extern "C"` function, nothing ([`OpChoice::Nop`]), or none at all ([`OpChoice::Unset`]).
//! [`plan_paravirt`] validates every entry of a table and decides each site; the
//! [driver](crate::driver) writes the sites and the table's slots, and reverts both.
//!
//! The pass is in named steps, one module each: [`validate`] checks the table, the backend and
//! one site at a time (also used by `alt-tablegen verify`, so both accept and refuse the same
//! sites); [`encode`] has one encoder per choice (inline, call, nop, trap); [`plan`] decides each
//! site and the slots.
//!
//! # What each site becomes
//!
//! | backend's operation | site allows | site becomes | table slot |
//! |---|---|---|---|
//! | native, inline sequence fits and clobbers no more than the site allows | - | the inline sequence, relocated, NOP-filled | native (or its thunk) |
//! | native otherwise | C ABI | `call native` | native |
//! | native otherwise | less | `call` native's register-saving thunk | the thunk |
//! | a function | C ABI | `call function` | function |
//! | a function | less | `call` the op's dispatch thunk, which saves registers and calls the function | the dispatch thunk |
//! | nop, returns nothing | - | NOPs | [`nop_return_zero`] |
//! | nop, returns a value | `rax` | `xor eax, eax` (the result is 0), NOPs | [`nop_return_zero`] |
//! | unset | - | `ud2`, NOPs: calling it traps | [`unset_op`] (`ud2`) |
//!
//! A site whose clobber set is smaller than the C ABI while the operation has no register-saving
//! thunk is refused ([`PvErrorKind::ClobberMismatch`]): never a silent mismatch.
//!
//! # Validation
//!
//! A direct call is written so that it returns where the site's indirect call returned (a
//! `call qword ptr [rip + ...]` is 6 bytes, a `call rel32` 5: a one-byte NOP comes first), and
//! an inline sequence only if it keeps an instruction boundary there: a thread inside the
//! operation while the site is rewritten returns to that byte (see [`crate::plan`]'s
//! return-address rule).
//!
//! Before anything is written, per entry in section order: all-zero placeholders are skipped;
//! the clobber bits are known; the site lies inside the text (not in the replacement section);
//! the operation index is below the table's operation count; the site is at least 6 bytes; its
//! first instruction, decoded with [`insn::decode`], is exactly `call qword ptr [rip + TABLE +
//! 8*op]` (`ff 15`) and the rest decodes into whole instructions ending at the site's end; sites
//! do not overlap; and the backend's choice can be carried out (the clobber rule above, a call
//! target within `rel32` reach, the inline sequence relocatable). The first failure is returned,
//! naming the entry, and nothing is written.

use core::cell::UnsafeCell;
use core::ops::Range;

use crate::table::{Clobbers, PvEntry, PV_ENTRY_SIZE};
use crate::x86_64::insn;

pub mod encode;
pub mod plan;
pub mod validate;

pub use plan::{plan_paravirt, PvDecision, PvPlan, PvSitePlan, SlotValue};
pub use validate::{PvError, PvErrorKind};

/// Storage of an operations table: its slots, writable by the runtime at start-up.
///
/// A `#[repr(transparent)]` [`UnsafeCell`], so the static that holds it has exactly the layout
/// of `T` (for a table, `#[repr(C)]` function pointers: what C sees), lives in writable data, and
/// may be shared between threads (`Sync`).
///
/// Soundness: the only writer is the patcher (the [driver](crate::driver)), which stores whole,
/// aligned 8-byte slots with atomic stores. Readers are the call sites' `call [rip + ...]`
/// instructions and C code, never Rust references into the cell.
#[repr(transparent)]
pub struct OpsCell<T>(UnsafeCell<T>);

// SAFETY: see the type's documentation: slots are only written with atomic stores by the
// patcher, and read by machine code, so shared access from several threads is sound.
unsafe impl<T> Sync for OpsCell<T> {}

impl<T> OpsCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// The address of the contents.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// How a backend implements one operation, as the generated backend types hold it (`F` is the
/// operation's `unsafe extern "C" fn` type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpImpl<F> {
    /// The table's native implementation (inline where the sequence fits).
    Native,
    /// Another `extern "C"` function.
    Function(F),
    /// Nothing: the operation does nothing and returns 0 if it returns a value.
    Nop,
    /// Not provided: calling it traps (`ud2`).
    Unset,
}

/// How a backend implements one operation, with the function as an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpChoice {
    /// The native implementation.
    Native,
    /// An `extern "C"` function at this address.
    Function(u64),
    /// Does nothing (returns 0).
    Nop,
    /// Not provided: traps.
    Unset,
}

/// A backend: a name and one [`OpChoice`] per operation, in operation order.
#[derive(Clone, Copy, Debug)]
pub struct Backend<'a> {
    /// Name, for reports.
    pub name: &'static str,
    /// One choice per operation.
    pub ops: &'a [OpChoice],
}

/// One operation of a table, as the runtime sees it (the macro generates these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpDesc {
    /// Name of the operation.
    pub name: &'static str,
    /// The native `extern "C"` implementation.
    pub native: u64,
    /// A register-saving thunk around `native` (needed when `clobbers` is smaller than the C ABI).
    pub native_thunk: Option<u64>,
    /// A register-saving thunk that calls through `dispatch_slot` (needed when `clobbers` is
    /// smaller than the C ABI).
    pub dispatch_thunk: Option<u64>,
    /// Address of the 8-byte slot the dispatch thunk calls through (0 without one).
    pub dispatch_slot: u64,
    /// The native inline sequence: address (in the replacement section) and length.
    pub inline: Option<(u64, u8)>,
    /// Registers the operation's call sites let it change (`rax` always included).
    pub clobbers: Clobbers,
    /// Whether the operation returns a value (in `rax`).
    pub returns: bool,
}

/// An operations table, as the runtime sees it.
#[derive(Clone, Debug)]
pub struct TableDesc<'a> {
    /// Name of the table (its symbol).
    pub name: &'static str,
    /// Address of slot 0 of the table.
    pub table: u64,
    /// The operations, in slot order.
    pub ops: &'a [OpDesc],
    /// Bounds of the table's entry section `alt_pv_<name>`.
    pub entries: Range<u64>,
}

/// One paravirt entry and the address it lives at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvTableEntry {
    /// Address of the entry.
    pub addr: u64,
    /// The entry.
    pub entry: PvEntry,
}

impl PvTableEntry {
    /// The entries of a table in this address space, placeholders included (the planner skips
    /// them, but they count in entry indices).
    pub fn in_memory(table: &[PvEntry]) -> impl Iterator<Item = PvTableEntry> + '_ {
        table.iter().map(|e| PvTableEntry {
            addr: e as *const PvEntry as usize as u64,
            entry: *e,
        })
    }

    /// Whether this is a placeholder: every field zero.
    pub fn is_placeholder(&self) -> bool {
        self.entry.to_bytes() == [0; PV_ENTRY_SIZE]
    }

    /// The site's address range.
    pub fn site(&self) -> Range<u64> {
        let s = self.entry.site_addr(self.addr);
        s..s.saturating_add(u64::from(self.entry.site_len))
    }
}

/// The entries between a table's section bounds.
///
/// # Safety
///
/// `bounds` must be the bounds of a live, 4-aligned section of whole [`PvEntry`]s that stays
/// mapped for the program's lifetime (the `__start_`/`__stop_` symbols of `alt_pv_<TABLE>`).
pub unsafe fn entries_between(bounds: Range<u64>) -> &'static [PvEntry] {
    let (start, end) = (bounds.start as usize, bounds.end as usize);
    if end <= start || start % core::mem::align_of::<PvEntry>() != 0 {
        return &[];
    }
    // SAFETY: the caller's contract; the length is rounded down to whole entries.
    unsafe { core::slice::from_raw_parts(start as *const PvEntry, (end - start) / PV_ENTRY_SIZE) }
}

/// Address of [`nop_return_zero`] (what a table slot holds for a nop operation).
#[cfg(target_arch = "x86_64")]
pub fn nop_function() -> u64 {
    nop_return_zero as *const () as usize as u64
}

/// Address of [`unset_op`] (what a table slot holds for an unset operation).
#[cfg(target_arch = "x86_64")]
pub fn unset_function() -> u64 {
    unset_op as *const () as usize as u64
}

/// A nop operation: `xor eax, eax; ret`. Changes only `rax` and the flags, so it respects every
/// clobber set; an operation that returns a value returns 0.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub extern "C" fn nop_return_zero() {
    core::arch::naked_asm!("xor eax, eax", "ret")
}

/// An unset operation: `ud2`. Calling an operation the backend left unset traps.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub extern "C" fn unset_op() {
    core::arch::naked_asm!("ud2")
}

/// `xor eax, eax`: the result of a nop operation that returns a value.
pub const XOR_EAX: [u8; 2] = [0x31, 0xc0];
/// `ud2`: what an unset operation's site starts with.
pub const UD2: [u8; 2] = [0x0f, 0x0b];
/// Length of `call qword ptr [rip + disp32]`.
pub const INDIRECT_CALL_LEN: u8 = 6;
/// `ret`: ends a tail-call site's inline sequence.
pub(crate) const RET: u8 = 0xc3;

/// The instruction a paravirt site starts with: how it reaches the operation's table slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteForm {
    /// `call qword ptr [rip + TABLE + 8*op]` (`ff 15 disp32`), what the macros emit and what C
    /// compilers emit for a call through a global table without `-fPIC`.
    CallRip,
    /// `call qword ptr [TABLE + 8*op]` with an absolute 32-bit address (`ff 14 25 disp32`), from
    /// code linked below 2 GiB (`-mcmodel=kernel` and similar).
    CallAbs32,
    /// `jmp qword ptr [rip + TABLE + 8*op]` (`ff 25 disp32`): a call in tail position. It becomes
    /// `jmp rel32` to the implementation, or the inline sequence followed by `ret`.
    JmpRip,
}

impl SiteForm {
    /// Recognises the form of `site` (its bytes at `addr`) and the slot address it reads.
    pub fn of(site: &[u8], addr: u64) -> Option<(SiteForm, u8, u64)> {
        match site {
            [0xff, 0x14, 0x25, d0, d1, d2, d3, ..] => {
                let slot = i32::from_le_bytes([*d0, *d1, *d2, *d3]) as i64 as u64;
                Some((SiteForm::CallAbs32, 7, slot))
            }
            [0xff, m @ (0x15 | 0x25), ..] => {
                let i = insn::decode(site).ok()?;
                let (form, kind) = if *m == 0x15 {
                    (SiteForm::CallRip, insn::InsnKind::CallIndirect)
                } else {
                    (SiteForm::JmpRip, insn::InsnKind::JmpIndirect)
                };
                if i.len != INDIRECT_CALL_LEN || i.kind != kind {
                    return None;
                }
                Some((form, INDIRECT_CALL_LEN, i.rip_target(addr)?))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(site: i32, op: u8) -> PvEntry {
        PvEntry {
            site,
            op,
            site_len: 6,
            clobbers: 1,
        }
    }

    #[test]
    fn the_entries_between_section_bounds_are_whole_aligned_entries() {
        let table = [pv(0x100, 0), pv(0x200, 1), pv(0x300, 2)];
        let start = table.as_ptr() as u64;
        let end = start + 3 * PV_ENTRY_SIZE as u64;
        // SAFETY: the bounds of `table`, alive for the test (the slices are not kept).
        let all = unsafe { entries_between(start..end) };
        assert_eq!(all, &table[..]);
        assert_eq!(
            all.as_ptr() as u64,
            start,
            "the entries themselves, not a copy"
        );
        // A trailing part of an entry is not an entry.
        // SAFETY: as above.
        assert_eq!(unsafe { entries_between(start..end - 1) }, &table[..2]);
        // SAFETY: as above.
        assert_eq!(
            unsafe { entries_between(start + 8..start + 16) },
            &table[1..2]
        );
        // Empty, reversed and misaligned bounds give no entries.
        for bounds in [start..start, end..start, start + 2..end] {
            // SAFETY: no entry is read from such bounds.
            assert!(
                unsafe { entries_between(bounds.clone()) }.is_empty(),
                "{bounds:x?}"
            );
        }
        let entries: alloc::vec::Vec<PvTableEntry> = PvTableEntry::in_memory(all).collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].addr, start + 8);
        assert_eq!(entries[1].site(), start + 8 + 0x200..start + 8 + 0x206);
        assert!(!entries[1].is_placeholder());
        let zero = PvTableEntry {
            addr: start,
            entry: PvEntry::from_bytes(&[0; PV_ENTRY_SIZE]),
        };
        assert!(zero.is_placeholder());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn nop_and_unset_slots_hold_a_return_of_zero_and_a_trap() {
        // SAFETY: both are functions of this program's text; reading their first bytes.
        let bytes = |f: u64, n| unsafe { core::slice::from_raw_parts(f as *const u8, n) };
        assert_eq!(bytes(nop_function(), 3), [0x31, 0xc0, 0xc3]);
        assert_eq!(bytes(unset_function(), 2), UD2);
        // SAFETY: `nop_return_zero` is `xor eax, eax; ret`, callable as an `extern "C"`
        // function returning a value in rax.
        let nop: extern "C" fn() -> u64 = unsafe { core::mem::transmute(nop_function()) };
        assert_eq!(nop(), 0);
    }

    #[test]
    fn ops_cells_hold_their_table_in_place() {
        static CELL: OpsCell<[u64; 2]> = OpsCell::new([7, 9]);
        // SAFETY: no one else touches the cell during the test.
        assert_eq!(unsafe { *CELL.get() }, [7, 9]);
        assert_eq!(CELL.get() as usize, &CELL as *const _ as usize);
    }
}
