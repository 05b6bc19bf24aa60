//! Validation: the table, the backend, and one site at a time.
//!
//! [`check_table`] checks a table's operations against the layout and a backend against the
//! table; [`check_site`] checks one entry and its site's bytes, and says how the site reaches
//! its slot. Neither decides anything. `alt-tablegen verify` calls [`check_site`] on the tables
//! of a built binary, so the tool and the runtime accept and refuse exactly the same sites.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use super::{Backend, PvTableEntry, SiteForm, TableDesc, INDIRECT_CALL_LEN};
use crate::memory::{Memory, MemoryError};
use crate::plan::{inside, Layout};
use crate::table::Clobbers;
use crate::x86_64::{insn, relocate};

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
        write!(f, ": {}", self.kind)
    }
}

impl fmt::Display for PvErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
                    crate::bytes::Hex(bytes)
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

/// A valid site: where it is, how it reaches its slot, and what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidSite {
    /// Index of the entry in the table's entry section (placeholders count).
    pub index: usize,
    /// The site's address range.
    pub site: Range<u64>,
    /// The operation index.
    pub op: u8,
    /// How the site's call (or tail jump) reaches the slot.
    pub form: SiteForm,
    /// Offset of that instruction in the site: only NOPs come before it (the macros pad before
    /// the call, so that it returns to the site's end; C compilers emit the bare instruction).
    pub insn_at: u8,
    /// Length of that instruction.
    pub insn_len: u8,
    /// The registers the site lets the operation change.
    pub allows: Clobbers,
    /// The site's bytes.
    pub original: Vec<u8>,
}

impl ValidSite {
    /// Where a thread inside the operation returns to, as an offset in the site (none for a
    /// tail call).
    pub fn return_offset(&self) -> Option<usize> {
        (self.form != SiteForm::JmpRip).then_some(usize::from(self.insn_at + self.insn_len))
    }
}

/// Checks a table's operations (thunks where the clobbers need them, inline sequences inside
/// the replacement section) and that the backend has one choice per operation.
pub fn check_table(
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
    layout: &Layout<'_>,
) -> Result<(), PvError> {
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
    Ok(())
}

/// Checks one entry of the table `table_name` at `table_addr` with `op_count` operations: the
/// clobber bits, the site inside the text, the operation index, the length, and the site's
/// bytes (the call or tail jump through the operation's slot, then whole instructions).
pub fn check_site<M: Memory>(
    table_name: &'static str,
    table_addr: u64,
    op_count: usize,
    index: usize,
    t: &PvTableEntry,
    layout: &Layout<'_>,
    mem: &M,
) -> Result<ValidSite, PvError> {
    let e = &t.entry;
    let site = t.site();
    let err = |kind| PvError {
        table: table_name,
        entry: Some((index, t.addr, site.start)),
        kind,
    };
    let Some(allows) = Clobbers::from_bits(e.clobbers) else {
        return Err(err(PvErrorKind::UnknownClobbers(
            e.clobbers & !Clobbers::all().bits(),
        )));
    };
    let wrapped = e
        .site_addr(t.addr)
        .checked_add(u64::from(e.site_len))
        .is_none();
    if wrapped || e.site_len == 0 || !layout.in_text(&site) {
        return Err(err(PvErrorKind::SiteOutsideText));
    }
    if usize::from(e.op) >= op_count {
        return Err(err(PvErrorKind::UnknownOp {
            op: e.op,
            ops: op_count,
        }));
    }
    if e.site_len < INDIRECT_CALL_LEN {
        return Err(err(PvErrorKind::SiteTooShort {
            site_len: e.site_len,
        }));
    }
    let mut original = vec![0; usize::from(e.site_len)];
    mem.read(site.start, &mut original)
        .map_err(|e| err(PvErrorKind::Unreadable(e)))?;
    let expected = table_addr + 8 * u64::from(e.op);
    let insn_at = leading_nops(&original);
    let at = usize::from(insn_at);
    let (form, insn_len) = match SiteForm::of(&original[at..], site.start + u64::from(insn_at)) {
        Some((form, n, slot)) if slot == expected => (form, n),
        other => {
            return Err(err(PvErrorKind::NotTableCall {
                expected,
                found: other.map(|(_, _, slot)| slot),
                bytes: original[at..original.len().min(at + 7)].to_vec(),
            }))
        }
    };
    let rest = at + usize::from(insn_len);
    insn::ends_exactly(&original[rest..]).map_err(|mut d| {
        d.offset += rest;
        err(PvErrorKind::SiteNotWholeInstructions(d))
    })?;
    Ok(ValidSite {
        index,
        site,
        op: e.op,
        form,
        insn_at,
        insn_len,
        allows,
        original,
    })
}

/// Length of the NOPs a site starts with (whole instructions).
fn leading_nops(code: &[u8]) -> u8 {
    let mut at = 0;
    for item in insn::instructions(code) {
        match item {
            Ok((offset, i)) if i.kind == insn::InsnKind::Nop => at = offset + usize::from(i.len),
            _ => break,
        }
    }
    at as u8
}

/// Checks that no two sites overlap; `sites` are sorted by address.
pub fn check_overlaps(
    table_name: &'static str,
    entries: &[PvTableEntry],
    sites: &[ValidSite],
) -> Result<(), PvError> {
    for w in sites.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.site.end > b.site.start {
            let t = &entries[b.index];
            return Err(PvError {
                table: table_name,
                entry: Some((b.index, t.addr, b.site.start)),
                kind: PvErrorKind::Overlap {
                    other: a.index,
                    other_site: a.site.start,
                },
            });
        }
    }
    Ok(())
}
