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
//! [`plan_paravirt`] validates every entry of a table and decides each site; [`apply`] writes
//! the sites through a [`Writer`] and the table's slots, and [`PvPatched::revert`] restores both.
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
//! Before anything is written, per entry in section order: all-zero placeholders are skipped;
//! the clobber bits are known; the site lies inside the text (not in the replacement section);
//! the operation index is below the table's operation count; the site is at least 6 bytes; its
//! first instruction, decoded with [`insn::decode`], is exactly `call qword ptr [rip + TABLE +
//! 8*op]` (`ff 15`) and the rest decodes into whole instructions ending at the site's end; sites
//! do not overlap; and the backend's choice can be carried out (the clobber rule above, a call
//! target within `rel32` reach, the inline sequence relocatable). The first failure is returned,
//! naming the entry, and nothing is written.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::ops::Range;

use crate::capability::CapabilitySet;
use crate::patch::{PatchError, Patched};
use crate::plan::{
    in_text, inside, Choice, Layout, Memory, MemoryError, Plan, PvSiteInfo, SitePlan,
};
use crate::report::Report;
use crate::table::{Clobbers, PvEntry, PV_ENTRY_SIZE};
use crate::writer::{WriteStats, Writer};
use crate::x86_64::{insn, nops, relocate};

/// Storage of an operations table: its slots, writable by the runtime at start-up.
///
/// A `#[repr(transparent)]` [`UnsafeCell`], so the static that holds it has exactly the layout
/// of `T` (for a table, `#[repr(C)]` function pointers: what C sees), lives in writable data, and
/// may be shared between threads (`Sync`).
///
/// Soundness: the only writer is the patcher ([`apply`], [`PvPatched::revert`]), which stores
/// whole, aligned 8-byte slots with atomic stores, before other threads start (the hosted writer
/// refuses while other threads exist). Readers are the call sites' `call [rip + ...]`
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

    fn site(&self) -> Range<u64> {
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

/// Why a paravirt table or backend was refused. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvError {
    /// Name of the table.
    pub table: &'static str,
    /// The entry concerned (index in the section, placeholders count; entry address; site
    /// address), if the problem is an entry's.
    pub entry: Option<(usize, u64, u64)>,
    /// What is wrong.
    pub kind: PvErrorKind,
}

/// What is wrong with a paravirt table, entry or backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvErrorKind {
    /// The backend has a different number of operations than the table.
    BackendOpCount {
        /// Operations in the table.
        table: usize,
        /// Operations in the backend.
        backend: usize,
    },
    /// An operation with a clobber set smaller than the C ABI lacks a register-saving thunk.
    MissingThunk {
        /// Operation index.
        op: usize,
    },
    /// An operation's native inline sequence is not inside the replacement section.
    InlineOutsideSection {
        /// Operation index.
        op: usize,
    },
    /// The entry's clobber field has bits no register is assigned to.
    UnknownClobbers(u16),
    /// The site is not inside the text, or lies in the replacement section.
    SiteOutsideText,
    /// The operation index is not below the table's operation count.
    UnknownOp {
        /// The index in the entry.
        op: u8,
        /// Operations in the table.
        ops: usize,
    },
    /// The site is shorter than the 6 bytes of `call qword ptr [rip + disp32]`.
    SiteTooShort {
        /// The site length.
        site_len: u8,
    },
    /// The site's bytes could not be read.
    Unreadable(MemoryError),
    /// The site does not begin with `call qword ptr [rip + TABLE + 8*op]`.
    NotTableCall {
        /// The slot the call should read.
        expected: u64,
        /// The slot the first instruction reads, if it is an `ff 15` call at all.
        found: Option<u64>,
        /// The site's first bytes (up to 6).
        bytes: Vec<u8>,
    },
    /// The bytes after the call are not whole instructions ending at the site's end.
    SiteNotWholeInstructions(insn::DecodeError),
    /// This site overlaps another.
    Overlap {
        /// Index of the other site's entry.
        other: usize,
        /// Address of the other site.
        other_site: u64,
    },
    /// The backend's function may change registers the site does not allow, and the
    /// operation has no register-saving thunk to call it through.
    ClobberMismatch {
        /// Registers the call may change.
        needs: Clobbers,
        /// Registers the site allows.
        allows: Clobbers,
    },
    /// The inline sequence or call cannot be placed at the site.
    Relocation(relocate::RelocError),
}

impl fmt::Display for PvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "paravirt table {}", self.table)?;
        if let Some((index, addr, site)) = self.entry {
            write!(f, " entry {index} at {addr:#x} (site {site:#x})")?;
        }
        f.write_str(": ")?;
        match &self.kind {
            PvErrorKind::BackendOpCount { table, backend } => {
                write!(f, "the backend has {backend} operations, the table {table}")
            }
            PvErrorKind::MissingThunk { op } => write!(
                f,
                "operation {op} clobbers less than the C ABI but has no register-saving thunk"
            ),
            PvErrorKind::InlineOutsideSection { op } => write!(
                f,
                "the inline sequence of operation {op} is not inside the replacement section"
            ),
            PvErrorKind::UnknownClobbers(b) => write!(f, "unknown clobber bits {b:#06x}"),
            PvErrorKind::SiteOutsideText => f.write_str("site is not inside the text"),
            PvErrorKind::UnknownOp { op, ops } => write!(
                f,
                "operation index {op} is out of range (the table has {ops} operations)"
            ),
            PvErrorKind::SiteTooShort { site_len } => write!(
                f,
                "site of {site_len} bytes is shorter than the 6 bytes of an indirect call"
            ),
            PvErrorKind::Unreadable(e) => write!(f, "{e}"),
            PvErrorKind::NotTableCall {
                expected,
                found,
                bytes,
            } => {
                write!(
                    f,
                    "site does not begin with a call or tail jump through the slot at {expected:#x} (found {}",
                    crate::report::Hex(bytes)
                )?;
                if let Some(t) = found {
                    write!(f, ", through {t:#x}")?;
                }
                f.write_str(")")
            }
            PvErrorKind::SiteNotWholeInstructions(e) => {
                write!(f, "site padding is not whole instructions: {e}")
            }
            PvErrorKind::Overlap { other, other_site } => write!(
                f,
                "site overlaps the site at {other_site:#x} of entry {other}"
            ),
            PvErrorKind::ClobberMismatch { needs, allows } => write!(
                f,
                "the call may change {needs:?} but the site allows only {allows:?}, and there \
                 is no register-saving thunk"
            ),
            PvErrorKind::Relocation(e) => write!(f, "cannot place the code at the site: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PvError {}

/// One 8-byte slot of a table (or a dispatch slot) to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotChange {
    /// Address of the slot.
    pub addr: u64,
    /// Value found when planning.
    pub old: u64,
    /// Value to store.
    pub new: u64,
}

/// A paravirt plan: the sites (as a [`Plan`], sorted by address) and the slots to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvPlan {
    /// The sites.
    pub plan: Plan,
    /// Dispatch slots, then table slots, in operation order.
    pub slots: Vec<SlotChange>,
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
const RET: u8 = 0xc3;

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
    fn of(site: &[u8], addr: u64) -> Option<(SiteForm, u8, u64)> {
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

/// Plans every site of one table for one backend. `nop_fn` and `trap_fn` are the slot values
/// for nop and unset operations (use [`nop_function`] and [`unset_function`]).
///
/// Every entry is validated first; the first problem is returned and nothing is planned.
#[allow(clippy::too_many_arguments)]
pub fn plan_paravirt<M: Memory>(
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
    entries: &[PvTableEntry],
    layout: &Layout<'_>,
    mem: &M,
    nop_fn: u64,
    trap_fn: u64,
) -> Result<PvPlan, PvError> {
    let table_err = |kind| PvError {
        table: table.name,
        entry: None,
        kind,
    };
    if backend.ops.len() != table.ops.len() {
        return Err(table_err(PvErrorKind::BackendOpCount {
            table: table.ops.len(),
            backend: backend.ops.len(),
        }));
    }
    for (i, op) in table.ops.iter().enumerate() {
        if !op.clobbers.contains(Clobbers::C_ABI)
            && (op.native_thunk.is_none() || op.dispatch_thunk.is_none() || op.dispatch_slot == 0)
        {
            return Err(table_err(PvErrorKind::MissingThunk { op: i }));
        }
        if let Some((addr, len)) = op.inline {
            if !inside(
                &layout.replacements,
                &(addr..addr.saturating_add(u64::from(len))),
            ) {
                return Err(table_err(PvErrorKind::InlineOutsideSection { op: i }));
            }
        }
    }

    // Per-entry checks and decisions, in section order.
    let mut sites: Vec<(usize, SitePlan)> = Vec::new();
    for (index, t) in entries.iter().enumerate() {
        if t.is_placeholder() {
            continue;
        }
        let site = plan_site(index, t, table, backend, layout, mem)?;
        sites.push((index, site));
    }
    sites.sort_by_key(|(i, s)| (s.addr, *i));
    for w in sites.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.1.addr + a.1.original.len() as u64 > b.1.addr {
            let t = &entries[b.0];
            return Err(PvError {
                table: table.name,
                entry: Some((b.0, t.addr, b.1.addr)),
                kind: PvErrorKind::Overlap {
                    other: a.0,
                    other_site: a.1.addr,
                },
            });
        }
    }

    // Slots: dispatch slots first, so a table slot never points at a thunk whose target is
    // stale; then the table slots.
    let read_slot = |addr: u64| -> Result<u64, PvError> {
        let mut b = [0u8; 8];
        mem.read(addr, &mut b)
            .map_err(|e| table_err(PvErrorKind::Unreadable(e)))?;
        Ok(u64::from_le_bytes(b))
    };
    let mut dispatch = Vec::new();
    let mut table_slots = Vec::new();
    for (i, (op, choice)) in table.ops.iter().zip(backend.ops).enumerate() {
        let target = match *choice {
            OpChoice::Native => op.native,
            OpChoice::Function(f) => f,
            OpChoice::Nop => nop_fn,
            OpChoice::Unset => trap_fn,
        };
        let c_abi = op.clobbers.contains(Clobbers::C_ABI);
        let slot_value = match *choice {
            OpChoice::Native if !c_abi => op.native_thunk.unwrap_or(op.native),
            OpChoice::Function(_) if !c_abi => op.dispatch_thunk.unwrap_or(target),
            _ => target,
        };
        if op.dispatch_slot != 0 {
            let addr = op.dispatch_slot;
            dispatch.push(SlotChange {
                addr,
                old: read_slot(addr)?,
                new: target,
            });
        }
        let addr = table.table + 8 * i as u64;
        table_slots.push(SlotChange {
            addr,
            old: read_slot(addr)?,
            new: slot_value,
        });
    }
    dispatch.extend(table_slots);

    Ok(PvPlan {
        plan: Plan {
            sites: sites.into_iter().map(|(_, s)| s).collect(),
            capabilities: CapabilitySet::default(),
        },
        slots: dispatch,
    })
}

fn plan_site<M: Memory>(
    index: usize,
    t: &PvTableEntry,
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
    layout: &Layout<'_>,
    mem: &M,
) -> Result<SitePlan, PvError> {
    let e = &t.entry;
    let site = t.site();
    let err = |kind| PvError {
        table: table.name,
        entry: Some((index, t.addr, site.start)),
        kind,
    };
    if Clobbers::from_bits(e.clobbers).is_none() {
        return Err(err(PvErrorKind::UnknownClobbers(
            e.clobbers & !Clobbers::all().bits(),
        )));
    }
    let wrapped = e
        .site_addr(t.addr)
        .checked_add(u64::from(e.site_len))
        .is_none();
    if wrapped || e.site_len == 0 || !in_text(layout, &site) {
        return Err(err(PvErrorKind::SiteOutsideText));
    }
    let op_index = usize::from(e.op);
    let Some(op) = table.ops.get(op_index) else {
        return Err(err(PvErrorKind::UnknownOp {
            op: e.op,
            ops: table.ops.len(),
        }));
    };
    if e.site_len < INDIRECT_CALL_LEN {
        return Err(err(PvErrorKind::SiteTooShort {
            site_len: e.site_len,
        }));
    }
    let mut original = vec![0; usize::from(e.site_len)];
    mem.read(site.start, &mut original)
        .map_err(|e| err(PvErrorKind::Unreadable(e)))?;
    let expected = table.table + 8 * op_index as u64;
    let recognised = SiteForm::of(&original, site.start);
    let (form, insn_len) = match recognised {
        Some((form, n, slot)) if slot == expected => (form, usize::from(n)),
        other => {
            return Err(err(PvErrorKind::NotTableCall {
                expected,
                found: other.map(|(_, _, slot)| slot),
                bytes: original[..original.len().min(7)].to_vec(),
            }))
        }
    };
    insn::ends_exactly(&original[insn_len..]).map_err(|mut d| {
        d.offset += insn_len;
        err(PvErrorKind::SiteNotWholeInstructions(d))
    })?;
    let tail = form == SiteForm::JmpRip;

    let allows = e.clobber_set();
    let choice = backend.ops[op_index];
    let len = original.len();
    let mut new = vec![0; len];
    let (decision, why): (Choice, String);
    let call = |target: u64,
                thunk: Option<u64>,
                what: &str|
     -> Result<(Choice, Vec<u8>, String), PvError> {
        let (target, through_thunk) = if allows.contains(Clobbers::C_ABI) {
            (target, false)
        } else if let Some(th) = thunk.filter(|_| allows.contains(Clobbers::RAX)) {
            (th, true)
        } else {
            return Err(err(PvErrorKind::ClobberMismatch {
                needs: Clobbers::C_ABI,
                allows,
            }));
        };
        let bytes = if tail {
            relocate::jmp_rel32(site.start, target)
        } else {
            relocate::call_rel32(site.start, target)
        }
        .map_err(|e| err(PvErrorKind::Relocation(e)))?;
        let what = if tail {
            format!("{what}; a tail call, so a jmp")
        } else {
            String::from(what)
        };
        let why = if through_thunk {
            format!("{what}; called through a register-saving thunk (the site allows {allows:?})")
        } else {
            format!("{what}; called directly (the site allows the C ABI's clobbers)")
        };
        Ok((
            Choice::PvCall {
                op: e.op,
                target,
                through_thunk,
            },
            bytes.to_vec(),
            why,
        ))
    };
    let placed: Vec<u8>;
    match choice {
        OpChoice::Native => {
            // A tail-call site needs a `ret` after the sequence.
            let room = if tail { len - 1 } else { len };
            let inline = match op.inline {
                None => Err("native, no inline sequence"),
                Some((_, n)) if usize::from(n) > room => {
                    Err("native, the inline sequence does not fit the site")
                }
                Some(_) if !allows.contains(op.clobbers) => {
                    Err("native, the inline sequence clobbers more than the site allows")
                }
                Some(seq) => Ok(seq),
            };
            match inline {
                Ok((addr, n)) => {
                    let mut src = vec![0; usize::from(n)];
                    mem.read(addr, &mut src)
                        .map_err(|e| err(PvErrorKind::Unreadable(e)))?;
                    let mut out = vec![0; src.len()];
                    relocate::relocate(&src, addr, site.start, &mut out)
                        .map_err(|e| err(PvErrorKind::Relocation(e)))?;
                    if tail {
                        out.push(RET);
                    }
                    placed = out;
                    decision = Choice::PvInline { op: e.op };
                    why = format!("native, inline sequence of {n} bytes fits the {len}-byte site");
                }
                Err(reason) => {
                    let (c, b, w) = call(op.native, op.native_thunk, reason)?;
                    (decision, placed, why) = (c, b, w);
                }
            }
        }
        OpChoice::Function(f) => {
            let (c, b, w) = call(f, op.dispatch_thunk, &format!("function at {f:#x}"))?;
            (decision, placed, why) = (c, b, w);
        }
        OpChoice::Nop if op.returns => {
            if !allows.contains(Clobbers::RAX) {
                return Err(err(PvErrorKind::ClobberMismatch {
                    needs: Clobbers::RAX,
                    allows,
                }));
            }
            placed = if tail {
                [&XOR_EAX[..], &[RET]].concat()
            } else {
                XOR_EAX.to_vec()
            };
            decision = Choice::PvNop { op: e.op };
            why = String::from("nop: returns 0 (xor eax, eax)");
        }
        OpChoice::Nop => {
            placed = if tail { vec![RET] } else { Vec::new() };
            decision = Choice::PvNop { op: e.op };
            why = String::from(if tail {
                "nop (a tail call: ret)"
            } else {
                "nop"
            });
        }
        OpChoice::Unset => {
            placed = UD2.to_vec();
            decision = Choice::PvTrap { op: e.op };
            why = String::from("unset in the backend: calling it traps (ud2)");
        }
    }
    new[..placed.len()].copy_from_slice(&placed);
    nops::fill(&mut new[placed.len()..]);
    Ok(SitePlan {
        addr: site.start,
        original,
        new,
        choice: decision,
        candidates: Vec::new(),
        paravirt: Some(PvSiteInfo {
            table: table.name,
            op: e.op,
            op_name: op.name,
            backend: backend.name,
            entry: index,
            why,
        }),
    })
}

/// Why applying or reverting a paravirt plan failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvPatchError {
    /// The table was refused; nothing was written.
    Table(PvError),
    /// Writing the sites failed (the slots were restored).
    Patch(PatchError),
    /// A slot does not hold the value expected; nothing was written.
    UnexpectedSlot {
        /// Address of the slot.
        addr: u64,
        /// Value expected.
        expected: u64,
        /// Value found.
        found: u64,
    },
}

impl fmt::Display for PvPatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PvPatchError::Table(e) => write!(f, "{e}; nothing written"),
            PvPatchError::Patch(e) => write!(f, "patching paravirt sites failed: {e}"),
            PvPatchError::UnexpectedSlot {
                addr,
                expected,
                found,
            } => write!(
                f,
                "table slot at {addr:#x} holds {found:#x}, expected {expected:#x}; nothing written"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PvPatchError {}

/// A table as patched: the sites' report and originals, and the slots' old values.
#[derive(Clone, Debug)]
pub struct PvPatched {
    patched: Patched,
    slots: Vec<SlotChange>,
}

impl PvPatched {
    /// What was done.
    pub fn report(&self) -> &Report {
        self.patched.report()
    }

    /// Mutable access to the report.
    pub fn report_mut(&mut self) -> &mut Report {
        self.patched.report_mut()
    }

    /// The slots that were stored.
    pub fn slots(&self) -> &[SlotChange] {
        &self.slots
    }

    /// Restores every site's original bytes and every slot's original value.
    ///
    /// # Safety
    ///
    /// As for [`apply`]: the slot addresses are still this table's live slots.
    // The error hands the record back so the caller keeps the originals; it is the cold path.
    #[allow(clippy::result_large_err)]
    pub unsafe fn revert<W: Writer>(
        self,
        writer: &mut W,
    ) -> Result<WriteStats, (Self, PvPatchError)> {
        for s in &self.slots {
            // SAFETY: the caller's contract.
            let found = unsafe { load_slot(s.addr) };
            if found != s.new {
                let e = PvPatchError::UnexpectedSlot {
                    addr: s.addr,
                    expected: s.new,
                    found,
                };
                return Err((self, e));
            }
        }
        let slots = self.slots;
        match self.patched.revert(writer) {
            Ok(stats) => {
                for s in slots.iter().rev() {
                    // SAFETY: the caller's contract.
                    unsafe { store_slot(s.addr, s.old) };
                }
                Ok(stats)
            }
            Err((patched, e)) => Err((PvPatched { patched, slots }, PvPatchError::Patch(e))),
        }
    }
}

/// # Safety
///
/// `addr` is a live, 8-aligned slot.
unsafe fn load_slot(addr: u64) -> u64 {
    // SAFETY: the caller's contract; atomic access cannot race with the patcher's stores.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(addr as usize as *mut u64) }
        .load(core::sync::atomic::Ordering::Acquire)
}

/// # Safety
///
/// `addr` is a live, 8-aligned, writable slot.
unsafe fn store_slot(addr: u64, value: u64) {
    // SAFETY: the caller's contract.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(addr as usize as *mut u64) }
        .store(value, core::sync::atomic::Ordering::Release)
}

/// Carries out a paravirt plan: checks every slot still holds its planned old value, stores the
/// slots (dispatch slots first), then writes the sites through `writer` (see
/// [`crate::patch::apply`]). If writing the sites fails, the slots are restored.
///
/// # Safety
///
/// Every slot address in the plan must be a live, 8-aligned, writable slot of the table the plan
/// was made for (true for plans made from a generated [`TableDesc`] in this process).
pub unsafe fn apply<W: Writer>(plan: PvPlan, writer: &mut W) -> Result<PvPatched, PvPatchError> {
    for s in &plan.slots {
        // SAFETY: the caller's contract.
        let found = unsafe { load_slot(s.addr) };
        if found != s.old {
            return Err(PvPatchError::UnexpectedSlot {
                addr: s.addr,
                expected: s.old,
                found,
            });
        }
    }
    for s in &plan.slots {
        // SAFETY: the caller's contract.
        unsafe { store_slot(s.addr, s.new) };
    }
    match crate::patch::apply(plan.plan, writer) {
        Ok(patched) => Ok(PvPatched {
            patched,
            slots: plan.slots,
        }),
        Err(e) => {
            for s in plan.slots.iter().rev() {
                // SAFETY: the caller's contract.
                unsafe { store_slot(s.addr, s.old) };
            }
            Err(PvPatchError::Patch(e))
        }
    }
}

/// Patches every site of one table of this process for `backend` (hosted Linux): the text
/// layout from the loader, the mprotect writer, a timed report. Refuses while the process has
/// other threads; see [`patch_self_with`].
///
/// # Safety
///
/// `table` must describe a live operations table of this process, as the generated
/// `descriptor()` does, and every [`OpChoice::Function`] must be an `extern "C"` function with
/// the operation's signature that is sound to call wherever the operation is called.
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub unsafe fn patch_self(
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
) -> Result<PvPatched, PvPatchError> {
    // SAFETY: the caller's contract.
    unsafe { patch_self_with(table, backend, &crate::process::PatchOptions::new()) }
}

/// [`patch_self`] with options; only [`crate::process::PatchOptions::allow_other_threads`]
/// matters here (for qemu-user, whose helper thread shows as a thread of the process).
///
/// # Safety
///
/// As for [`patch_self`].
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub unsafe fn patch_self_with(
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
    options: &crate::process::PatchOptions,
) -> Result<PvPatched, PvPatchError> {
    let started = std::time::Instant::now();
    let text = crate::os::linux::executable_segments_containing(table.table);
    let text = if text.is_empty() {
        crate::os::linux::executable_segments_containing(table.entries.start)
    } else {
        text
    };
    let s = crate::linker::sections();
    let layout = Layout {
        text: &text,
        replacements: s.alt_replacement.0 as u64..s.alt_replacement.1 as u64,
    };
    // SAFETY: the caller's contract: the bounds are the table's entry section.
    let raw = unsafe { entries_between(table.entries.clone()) };
    let entries: Vec<PvTableEntry> = PvTableEntry::in_memory(raw).collect();
    // SAFETY: the layout's ranges are this program's executable segments and its replacement
    // section, mapped readable for the program's lifetime; slots are live statics.
    let mem = unsafe { crate::writer::LiveMemory::new() };
    let plan = plan_paravirt(
        table,
        backend,
        &entries,
        &layout,
        &mem,
        nop_function(),
        unset_function(),
    )
    .map_err(PvPatchError::Table)?;
    let mut writer = options.writer();
    // SAFETY: the caller's contract: the plan's slots are the table's live slots.
    let mut patched = unsafe { apply(plan, &mut writer) }?;
    patched.report_mut().elapsed_ns = Some(started.elapsed().as_nanos() as u64);
    Ok(patched)
}

/// Restores a table patched by [`patch_self`] or [`patch_self_with`] (with the same options).
///
/// # Safety
///
/// As for [`patch_self`].
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
#[allow(clippy::result_large_err)]
pub unsafe fn revert_self(
    patched: PvPatched,
    options: &crate::process::PatchOptions,
) -> Result<(), (PvPatched, PvPatchError)> {
    let mut writer = options.writer();
    // SAFETY: the caller's contract.
    unsafe { patched.revert(&mut writer) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: Range<u64> = 0x1000..0x2000;
    const REPL: Range<u64> = 0x3000..0x3100;
    const TABLE: u64 = 0x4000;
    const ENTRIES: u64 = 0x5000;
    const NATIVE: u64 = 0x1800;
    const NATIVE_THUNK: u64 = 0x1900;
    const DISPATCH_THUNK: u64 = 0x1a00;
    const DISPATCH_SLOT: u64 = 0x4100;
    const NOP_FN: u64 = 0x1f00;
    const TRAP_FN: u64 = 0x1f10;

    struct Fake {
        bytes: Vec<u8>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                bytes: vec![0xcc; 0x5000],
            }
        }
        fn put(&mut self, addr: u64, b: &[u8]) {
            let at = (addr - 0x1000) as usize;
            self.bytes[at..at + b.len()].copy_from_slice(b);
        }
        /// `jmp [rip + TABLE + 8*op]` (a tail call) at `site`, padded with 0x90 to `len`.
        fn tail_site(&mut self, site: u64, op: u8, len: usize) {
            let disp = (TABLE + 8 * u64::from(op)) as i64 - (site as i64 + 6);
            let mut b = vec![0xff, 0x25];
            b.extend_from_slice(&(disp as i32).to_le_bytes());
            b.resize(len, 0x90);
            self.put(site, &b);
        }

        /// `call [TABLE + 8*op]` with an absolute address at `site`, padded to `len`.
        fn abs_site(&mut self, site: u64, op: u8, len: usize) {
            let mut b = vec![0xff, 0x14, 0x25];
            b.extend_from_slice(&((TABLE + 8 * u64::from(op)) as i32).to_le_bytes());
            b.resize(len, 0x90);
            self.put(site, &b);
        }

        /// `call [rip + TABLE + 8*op]` at `site`, padded with 0x90 to `len`.
        fn site(&mut self, site: u64, op: u8, len: usize) {
            let disp = (TABLE + 8 * u64::from(op)) as i64 - (site as i64 + 6);
            let mut b = vec![0xff, 0x15];
            b.extend_from_slice(&(disp as i32).to_le_bytes());
            b.resize(len, 0x90);
            self.put(site, &b);
        }
    }

    impl Memory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let at = addr.checked_sub(0x1000).ok_or(MemoryError { addr })? as usize;
            let src = self
                .bytes
                .get(at..at + buf.len())
                .ok_or(MemoryError { addr })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn op(name: &'static str, clobbers: Clobbers, inline: Option<(u64, u8)>) -> OpDesc {
        let c = clobbers.contains(Clobbers::C_ABI);
        OpDesc {
            name,
            native: NATIVE,
            native_thunk: (!c).then_some(NATIVE_THUNK),
            dispatch_thunk: (!c).then_some(DISPATCH_THUNK),
            dispatch_slot: if c { 0 } else { DISPATCH_SLOT },
            inline,
            clobbers,
            returns: true,
        }
    }

    fn entry(i: u64, site: u64, op: u8, len: u8, clobbers: Clobbers) -> PvTableEntry {
        let addr = ENTRIES + 8 * i;
        PvTableEntry {
            addr,
            entry: PvEntry {
                site: relative(addr, site),
                op,
                site_len: len,
                clobbers: clobbers.bits(),
            },
        }
    }

    fn relative(field: u64, target: u64) -> i32 {
        crate::table::relative(field, target).unwrap()
    }

    fn plan(
        ops: &[OpDesc],
        choices: &[OpChoice],
        entries: &[PvTableEntry],
        mem: &Fake,
    ) -> Result<PvPlan, PvError> {
        let table = TableDesc {
            name: "T",
            table: TABLE,
            ops,
            entries: 0..0,
        };
        let backend = Backend {
            name: "b",
            ops: choices,
        };
        let text = [TEXT];
        let layout = Layout {
            text: &text,
            replacements: REPL,
        };
        plan_paravirt(&table, &backend, entries, &layout, mem, NOP_FN, TRAP_FN)
    }

    /// An inline sequence `mov rax, [rip + 0x4800]` placed at REPL.start (7 bytes).
    fn inline_mov(mem: &mut Fake) -> (u64, u8) {
        let at = REPL.start;
        let disp = 0x4800i64 - (at as i64 + 7);
        let mut b = vec![0x48, 0x8b, 0x05];
        b.extend_from_slice(&(disp as i32).to_le_bytes());
        mem.put(at, &b);
        (at, 7)
    }

    #[test]
    fn native_inline_is_relocated_and_padded() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        mem.site(0x1100, 0, 9);
        let ops = [op("load", Clobbers::RAX, Some(seq))];
        let p = plan(
            &ops,
            &[OpChoice::Native],
            &[entry(0, 0x1100, 0, 9, Clobbers::RAX)],
            &mem,
        )
        .unwrap();
        let s = &p.plan.sites[0];
        assert_eq!(s.choice, Choice::PvInline { op: 0 });
        // disp = 0x4800 - (0x1100 + 7) = 0x36f9; then a 2-byte NOP.
        assert_eq!(s.new, [0x48, 0x8b, 0x05, 0xf9, 0x36, 0, 0, 0x66, 0x90]);
        assert_eq!(s.original[..2], [0xff, 0x15]);
        let pv = s.paravirt.as_ref().unwrap();
        assert_eq!(
            (pv.table, pv.op_name, pv.backend, pv.entry),
            ("T", "load", "b", 0)
        );
        // Slots: the dispatch slot gets the native function, the table slot the native thunk.
        assert_eq!(p.slots.len(), 2);
        assert_eq!((p.slots[0].addr, p.slots[0].new), (DISPATCH_SLOT, NATIVE));
        assert_eq!((p.slots[1].addr, p.slots[1].new), (TABLE, NATIVE_THUNK));
    }

    #[test]
    fn calls_go_through_thunks_unless_the_site_allows_the_c_abi() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        mem.site(0x1200, 0, 6);
        let ops = [op("f", Clobbers::RAX, None)];
        let entries = [
            entry(0, 0x1100, 0, 6, Clobbers::RAX),
            // A site that allows the C ABI (as a C call site found by alt-tablegen would).
            entry(1, 0x1200, 0, 6, Clobbers::C_ABI),
        ];
        // Native without inline: the native thunk, or the native function itself.
        let p = plan(&ops, &[OpChoice::Native], &entries, &mem).unwrap();
        let thunk = relocate::call_rel32(0x1100, NATIVE_THUNK).unwrap();
        assert_eq!(p.plan.sites[0].new, [&thunk[..], &[0x90]].concat());
        assert_eq!(
            p.plan.sites[0].choice,
            Choice::PvCall {
                op: 0,
                target: NATIVE_THUNK,
                through_thunk: true
            }
        );
        let direct = relocate::call_rel32(0x1200, NATIVE).unwrap();
        assert_eq!(p.plan.sites[1].new, [&direct[..], &[0x90]].concat());
        // A backend function: the dispatch thunk (which calls through the dispatch slot).
        let p = plan(&ops, &[OpChoice::Function(0x1c00)], &entries, &mem).unwrap();
        assert_eq!(
            p.plan.sites[0].choice,
            Choice::PvCall {
                op: 0,
                target: DISPATCH_THUNK,
                through_thunk: true
            }
        );
        assert_eq!(
            p.plan.sites[1].choice,
            Choice::PvCall {
                op: 0,
                target: 0x1c00,
                through_thunk: false
            }
        );
        assert_eq!(p.slots[0].new, 0x1c00);
        assert_eq!(p.slots[1].new, DISPATCH_THUNK);
    }

    #[test]
    fn tail_calls_become_jumps_and_absolute_calls_are_recognised() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        // Tail calls through op 0 (inline fits with its ret in 8 bytes, not in 6) and op 1.
        mem.tail_site(0x1100, 0, 8);
        mem.tail_site(0x1200, 0, 6);
        mem.tail_site(0x1300, 1, 6);
        mem.abs_site(0x1400, 1, 7);
        let mut void = op("v", Clobbers::C_ABI, None);
        void.returns = false;
        let ops = [op("load", Clobbers::C_ABI, Some(seq)), void];
        let entries = [
            entry(0, 0x1100, 0, 8, Clobbers::C_ABI),
            entry(1, 0x1200, 0, 6, Clobbers::C_ABI),
            entry(2, 0x1300, 1, 6, Clobbers::C_ABI),
            entry(3, 0x1400, 1, 7, Clobbers::C_ABI),
        ];
        let p = plan(&ops, &[OpChoice::Native, OpChoice::Nop], &entries, &mem).unwrap();
        let new: Vec<&[u8]> = p.plan.sites.iter().map(|s| &s.new[..]).collect();
        // mov rax, [rip + 0x4800 - (0x1100 + 7)] ; ret
        assert_eq!(new[0], [0x48, 0x8b, 0x05, 0xf9, 0x36, 0, 0, 0xc3]);
        assert_eq!(p.plan.sites[0].choice, Choice::PvInline { op: 0 });
        // Too short for the sequence and its ret: jmp rel32 to the native function.
        let jmp = relocate::jmp_rel32(0x1200, NATIVE).unwrap();
        assert_eq!(new[1], [&jmp[..], &[0x90]].concat());
        assert!(p.plan.sites[1]
            .paravirt
            .as_ref()
            .unwrap()
            .why
            .contains("tail call"));
        // A nop tail call returns at once; a nop absolute call is NOPs.
        assert_eq!(new[2], [0xc3, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
        assert_eq!(new[3], [0x0f, 0x1f, 0x80, 0, 0, 0, 0]);

        // The absolute form must name the right slot.
        let mut wrong = Fake::new();
        wrong.abs_site(0x1400, 0, 7);
        let e = plan(
            &ops,
            &[OpChoice::Native, OpChoice::Nop],
            &[entry(0, 0x1400, 1, 7, Clobbers::C_ABI)],
            &wrong,
        )
        .unwrap_err();
        assert_eq!(
            e.kind,
            PvErrorKind::NotTableCall {
                expected: TABLE + 8,
                found: Some(TABLE),
                bytes: vec![0xff, 0x14, 0x25, 0, 0x40, 0, 0],
            }
        );
    }

    #[test]
    fn nop_and_unset() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        mem.site(0x1200, 1, 6);
        mem.site(0x1300, 2, 7);
        let mut void = op("v", Clobbers::C_ABI, None);
        void.returns = false;
        let ops = [
            op("r", Clobbers::C_ABI, None),
            void,
            op("u", Clobbers::RAX, None),
        ];
        let entries = [
            entry(0, 0x1100, 0, 6, Clobbers::C_ABI),
            entry(1, 0x1200, 1, 6, Clobbers::C_ABI),
            entry(2, 0x1300, 2, 7, Clobbers::RAX),
        ];
        let p = plan(
            &ops,
            &[OpChoice::Nop, OpChoice::Nop, OpChoice::Unset],
            &entries,
            &mem,
        )
        .unwrap();
        let new: Vec<&[u8]> = p.plan.sites.iter().map(|s| &s.new[..]).collect();
        assert_eq!(new[0], [0x31, 0xc0, 0x0f, 0x1f, 0x40, 0x00]);
        assert_eq!(new[1], [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
        assert_eq!(new[2], [0x0f, 0x0b, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
        assert_eq!(p.plan.sites[2].choice, Choice::PvTrap { op: 2 });
        let slots: Vec<u64> = p.slots.iter().map(|s| s.new).collect();
        // Dispatch slot of op 2, then the three table slots.
        assert_eq!(slots, [TRAP_FN, NOP_FN, NOP_FN, TRAP_FN]);
    }

    #[test]
    fn every_bad_entry_is_named() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        mem.site(0x1200, 1, 6);
        let ops = [op("a", Clobbers::RAX, None), op("b", Clobbers::C_ABI, None)];
        let both = [OpChoice::Native, OpChoice::Native];
        let kind = |entries: &[PvTableEntry], choices: &[OpChoice]| {
            plan(&ops, choices, entries, &mem).unwrap_err().kind
        };
        let placeholder = PvTableEntry {
            addr: ENTRIES,
            entry: PvEntry::from_bytes(&[0; 8]),
        };
        assert_eq!(
            kind(&[placeholder, entry(1, 0x1100, 2, 6, Clobbers::RAX)], &both),
            PvErrorKind::UnknownOp { op: 2, ops: 2 }
        );
        assert_eq!(
            kind(&[entry(0, 0x1100, 0, 5, Clobbers::RAX)], &both),
            PvErrorKind::SiteTooShort { site_len: 5 }
        );
        assert_eq!(
            kind(&[entry(0, 0x2ffa, 0, 6, Clobbers::RAX)], &both),
            PvErrorKind::SiteOutsideText
        );
        assert_eq!(
            kind(
                &[entry(0, 0x1100, 0, 6, Clobbers::from_bits_retain(0x8001))],
                &both
            ),
            PvErrorKind::UnknownClobbers(0x8000)
        );
        // The site at 0x1200 calls slot 1, not slot 0.
        assert_eq!(
            kind(&[entry(0, 0x1200, 0, 6, Clobbers::RAX)], &both),
            PvErrorKind::NotTableCall {
                expected: TABLE,
                found: Some(TABLE + 8),
                bytes: vec![0xff, 0x15, 0x02, 0x2e, 0x00, 0x00],
            }
        );
        // Not an indirect call at all.
        assert!(matches!(
            kind(&[entry(0, 0x1300, 0, 6, Clobbers::RAX)], &both),
            PvErrorKind::NotTableCall { found: None, .. }
        ));
        assert_eq!(
            kind(
                &[
                    entry(0, 0x1100, 0, 6, Clobbers::RAX),
                    entry(1, 0x1100, 0, 6, Clobbers::RAX)
                ],
                &both
            ),
            PvErrorKind::Overlap {
                other: 0,
                other_site: 0x1100
            }
        );
        // Op b clobbers the C ABI and has no thunk; a site allowing only rax cannot call it.
        assert_eq!(
            kind(&[entry(0, 0x1200, 1, 6, Clobbers::RAX)], &both),
            PvErrorKind::ClobberMismatch {
                needs: Clobbers::C_ABI,
                allows: Clobbers::RAX
            }
        );
        assert_eq!(
            kind(&[], &[OpChoice::Native]),
            PvErrorKind::BackendOpCount {
                table: 2,
                backend: 1
            }
        );
        let e = plan(&ops, &both, &[entry(3, 0x1100, 9, 6, Clobbers::RAX)], &mem).unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "paravirt table T entry 0 at 0x5018 (site 0x1100): operation index 9 is out of \
             range (the table has 2 operations)"
        );
    }

    #[test]
    fn inline_that_does_not_fit_becomes_a_call() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        mem.site(0x1100, 0, 6);
        let ops = [op("load", Clobbers::RAX, Some(seq))];
        let p = plan(
            &ops,
            &[OpChoice::Native],
            &[entry(0, 0x1100, 0, 6, Clobbers::RAX)],
            &mem,
        )
        .unwrap();
        let s = &p.plan.sites[0];
        assert!(matches!(
            s.choice,
            Choice::PvCall {
                through_thunk: true,
                ..
            }
        ));
        assert!(s
            .paravirt
            .as_ref()
            .unwrap()
            .why
            .starts_with("native, the inline sequence does not fit"));
    }
}
