//! The planner and validator: one decision per site, every entry checked before anything is
//! written.
//!
//! [`plan_alternatives`] reads a table of [`AltEntry`]s, checks each entry and the table as a
//! whole, and computes for every site the bytes it will hold: the relocated replacement, a fresh
//! `call rel32`, or the default with its NOP fill optimised. Nothing is written here; the result
//! is a [`Plan`] that [`crate::patch::apply`] carries out. If any entry is wrong the whole table
//! is refused with a [`TableError`] that names the entry.
//!
//! # Checks
//!
//! Per entry, in table order:
//! - reserved flag bits are zero and the capability id is known;
//! - the site is not empty and lies inside one text range, outside the replacement section;
//! - an inline replacement lies inside the replacement section and is no longer than the site;
//!   its instructions decode and can be relocated to the site (a displacement that no longer
//!   fits is an error);
//! - a direct call has no replacement bytes, a site with room for the call, a target inside the
//!   text and outside the replacement section, and a `call rel32` that reaches it.
//!
//! Across entries: entries for one site agree on its length; distinct sites do not overlap; each
//! site's current bytes decode into whole instructions that end exactly at the site's end.
//!
//! The first failing check, in that order, is the error reported.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::capability::{Capability, CapabilitySet};
use crate::isa::{Isa, X86_64};
use crate::table::{AltEntry, AltFlags, KEY_RESERVED_MASK};
use crate::x86_64::{insn, nops, relocate};

pub use crate::writer::{LiveMemory, Memory, MemoryError};

/// Where sites, replacements and call targets may lie.
#[derive(Clone, Debug)]
pub struct Layout<'a> {
    /// Executable ranges whose sites may be patched and whose functions may be call targets.
    pub text: &'a [Range<u64>],
    /// The replacement section.
    pub replacements: Range<u64>,
}

/// One table entry and the address it lives at (self-relative fields are resolved from there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// Address of the entry.
    pub addr: u64,
    /// The entry.
    pub entry: AltEntry,
}

impl TableEntry {
    /// The entries of a table that lives in this address space, with their addresses, in table
    /// order. All-zero placeholder entries (which keep an empty table's section in existence)
    /// are kept, so that an entry's position is its index in the table (the index a
    /// [`TableError`] names); the planner skips them.
    pub fn in_memory(table: &[AltEntry]) -> impl Iterator<Item = TableEntry> + '_ {
        table.iter().map(|e| TableEntry {
            addr: e as *const AltEntry as usize as u64,
            entry: *e,
        })
    }

    /// Whether this is a placeholder: every field zero.
    pub fn is_placeholder(&self) -> bool {
        self.entry.to_bytes() == [0; crate::table::ALT_ENTRY_SIZE]
    }

    fn site(&self) -> Range<u64> {
        let s = self.entry.site_addr(self.addr);
        s..s.saturating_add(u64::from(self.entry.site_len))
    }
}

/// Why a table was refused. Names the entry by its index in the table and its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    /// Index of the offending entry in the table (placeholders count).
    pub index: usize,
    /// Address of the offending entry.
    pub entry_addr: u64,
    /// Address of its site.
    pub site: u64,
    /// What is wrong.
    pub kind: TableErrorKind,
}

/// What is wrong with a table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableErrorKind {
    /// Flag bits reserved for later ABI versions are set.
    ReservedFlags(u16),
    /// The capability id names no known feature or erratum.
    UnknownCapability(u16),
    /// The site length is zero.
    EmptySite,
    /// The site is not inside one text range, or lies in the replacement section.
    SiteOutsideText,
    /// An inline replacement is not inside the replacement section.
    ReplacementOutsideSection {
        /// Address of the replacement.
        replacement: u64,
    },
    /// The replacement is longer than the site.
    ReplacementTooLong {
        /// Replacement length.
        replacement_len: u8,
        /// Site length.
        site_len: u8,
    },
    /// A direct call needs room for the call (x86-64: the 5 bytes of `call rel32`; AArch64: 4).
    DirectCallSiteTooShort,
    /// A direct-call entry has replacement bytes.
    DirectCallWithReplacement,
    /// A direct call's target is not inside the text.
    CallTargetOutsideText {
        /// The call target.
        target: u64,
    },
    /// The replacement (or the call) cannot be moved to the site.
    Relocation(relocate::RelocError),
    /// Two entries for the same site disagree on its length.
    SiteLengthMismatch {
        /// Index of the earlier entry for the site.
        other: usize,
        /// Its site length.
        other_len: u8,
    },
    /// This site overlaps another.
    Overlap {
        /// Index of an entry of the other site.
        other: usize,
        /// Address of the other site.
        other_site: u64,
    },
    /// The site's or replacement's bytes could not be read.
    Unreadable(MemoryError),
    /// The site's current bytes are not whole instructions ending at the site's end.
    SiteNotWholeInstructions(insn::DecodeError),
    /// AArch64: an A64 instruction of the replacement (or the call) cannot be moved to the site.
    A64Relocation(crate::aarch64::reloc::RelocError),
    /// AArch64: a site, replacement or call target is not 4-byte aligned or not a whole number
    /// of 4-byte instructions.
    A64Misaligned {
        /// The misaligned address (or the start of the code whose length is not a multiple of 4).
        addr: u64,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "alternative entry {} at {:#x} (site {:#x}): ",
            self.index, self.entry_addr, self.site
        )?;
        match &self.kind {
            TableErrorKind::ReservedFlags(b) => write!(f, "reserved flag bits {b:#06x} are set"),
            TableErrorKind::UnknownCapability(id) => write!(f, "unknown capability id {id:#05x}"),
            TableErrorKind::EmptySite => f.write_str("site length is zero"),
            TableErrorKind::SiteOutsideText => f.write_str("site is not inside the text"),
            TableErrorKind::ReplacementOutsideSection { replacement } => write!(
                f,
                "replacement at {replacement:#x} is not inside the replacement section"
            ),
            TableErrorKind::ReplacementTooLong {
                replacement_len,
                site_len,
            } => write!(
                f,
                "replacement of {replacement_len} bytes is longer than the site of {site_len} bytes"
            ),
            TableErrorKind::DirectCallSiteTooShort => {
                f.write_str("direct-call site is shorter than the call it must hold")
            }
            TableErrorKind::DirectCallWithReplacement => {
                f.write_str("direct-call entry has replacement bytes")
            }
            TableErrorKind::CallTargetOutsideText { target } => {
                write!(f, "call target {target:#x} is not inside the text")
            }
            TableErrorKind::Relocation(e) => write!(f, "cannot move the replacement: {e}"),
            TableErrorKind::SiteLengthMismatch { other, other_len } => write!(
                f,
                "site length differs from entry {other} for the same site ({other_len} bytes)"
            ),
            TableErrorKind::Overlap { other, other_site } => write!(
                f,
                "site overlaps the site at {other_site:#x} of entry {other}"
            ),
            TableErrorKind::Unreadable(e) => write!(f, "{e}"),
            TableErrorKind::SiteNotWholeInstructions(e) => {
                write!(f, "site bytes are not whole instructions: {e}")
            }
            TableErrorKind::A64Relocation(e) => write!(f, "cannot move the replacement: {e}"),
            TableErrorKind::A64Misaligned { addr } => write!(
                f,
                "{addr:#x} is not 4-byte aligned, or its code is not whole 4-byte instructions"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TableError {}

/// What was decided for a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// No entry holds: the default code stays (its NOP fill optimised).
    Default,
    /// The replacement of entry `entry` is copied in, relocated, and NOP-filled.
    Inline {
        /// Index of the chosen entry.
        entry: usize,
    },
    /// A `call rel32` to `target` (entry `entry`), NOP-filled.
    DirectCall {
        /// Index of the chosen entry.
        entry: usize,
        /// The call target.
        target: u64,
    },
    /// Paravirt site: the operation's native inline sequence, relocated and NOP-filled.
    PvInline {
        /// Operation index.
        op: u8,
    },
    /// Paravirt site: a `call rel32`, NOP-filled.
    PvCall {
        /// Operation index.
        op: u8,
        /// The call target (the backend's function, or a register-saving thunk).
        target: u64,
        /// Whether the target is a register-saving thunk around the backend's function.
        through_thunk: bool,
    },
    /// Paravirt site: the operation does nothing (`xor eax, eax` if it returns a value), NOPs.
    PvNop {
        /// Operation index.
        op: u8,
    },
    /// Paravirt site: the operation is unset in the backend; the site traps (`ud2`, NOPs).
    PvTrap {
        /// Operation index.
        op: u8,
    },
}

/// What a paravirt site is, for reports: its table, operation and backend, and why it got the
/// bytes it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvSiteInfo {
    /// Name of the operations table.
    pub table: &'static str,
    /// Operation index.
    pub op: u8,
    /// Operation name.
    pub op_name: &'static str,
    /// Name of the backend.
    pub backend: &'static str,
    /// Index of the entry in the table's entry section (placeholders count).
    pub entry: usize,
    /// Why, for people.
    pub why: alloc::string::String,
}

/// One entry considered for a site, and whether it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the entry in the table.
    pub entry: usize,
    /// Its capability.
    pub capability: Capability,
    /// Whether it holds when the capability is absent.
    pub negated: bool,
    /// Whether it is a direct call.
    pub direct_call: bool,
    /// Whether its condition held on this system.
    pub held: bool,
}

/// The plan for one site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePlan {
    /// Address of the site.
    pub addr: u64,
    /// The bytes found at the site when planning.
    pub original: Vec<u8>,
    /// The bytes the site will hold.
    pub new: Vec<u8>,
    /// The decision.
    pub choice: Choice,
    /// Every entry of the site, in priority (table) order.
    pub candidates: Vec<Candidate>,
    /// For a paravirt site, its table, operation and backend; `None` for alternatives.
    pub paravirt: Option<PvSiteInfo>,
}

impl SitePlan {
    /// The entry chosen, if any.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.choice.chosen_in(&self.candidates)
    }
}

impl Choice {
    /// The index of the alternative entry this choice applies, if it applies one.
    pub fn entry(&self) -> Option<usize> {
        match *self {
            Choice::Inline { entry } | Choice::DirectCall { entry, .. } => Some(entry),
            _ => None,
        }
    }

    /// The candidate this choice applies, among a site's candidates.
    pub fn chosen_in<'a>(&self, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
        let entry = self.entry()?;
        candidates.iter().find(|c| c.entry == entry)
    }
}

/// A plan: one decision per site, sorted by site address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The sites.
    pub sites: Vec<SitePlan>,
    /// The capabilities the plan was made for.
    pub capabilities: CapabilitySet,
}

/// Plans every site of an alternatives table.
///
/// `entries` are the table's entries in table order with their addresses (use
/// [`TableEntry::in_memory`] for a table in this address space). Every entry is validated; the
/// first problem is returned as a [`TableError`] and nothing is planned.
pub fn plan_alternatives<M: Memory>(
    entries: &[TableEntry],
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    plan_alternatives_for::<X86_64, M>(entries, layout, caps, mem)
}

/// [`plan_alternatives`] for the instruction set `I` ([`crate::isa::X86_64`] or
/// [`crate::isa::Aarch64`]): the same checks and priority rule, with `I`'s rules for checking,
/// moving, padding and calling code.
pub fn plan_alternatives_for<I: Isa, M: Memory>(
    entries: &[TableEntry],
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    // Per-entry checks, in table order. Bounds come before any read.
    let mut parsed = Vec::with_capacity(entries.len());
    for (index, t) in entries.iter().enumerate() {
        parsed.push(check_entry::<I, M>(index, t, layout, mem)?);
    }

    // Group by site: sort by address, keeping table order among entries of one site.
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| !entries[i].is_placeholder())
        .collect();
    order.sort_by_key(|&i| (entries[i].site().start, i));

    let mut sites: Vec<SitePlan> = Vec::new();
    let mut group_first: Option<usize> = None;
    for &i in &order {
        let t = &entries[i];
        let site = t.site();
        if let Some(first) = group_first {
            let prev = entries[first].site();
            if prev.start == site.start {
                if prev.end != site.end {
                    return Err(error(
                        i,
                        t,
                        TableErrorKind::SiteLengthMismatch {
                            other: first,
                            other_len: entries[first].entry.site_len,
                        },
                    ));
                }
                let candidate = parsed[i].candidate(i, caps);
                sites
                    .last_mut()
                    .expect("group open")
                    .candidates
                    .push(candidate);
                continue;
            }
            if prev.end > site.start {
                return Err(error(
                    i,
                    t,
                    TableErrorKind::Overlap {
                        other: first,
                        other_site: prev.start,
                    },
                ));
            }
        }
        group_first = Some(i);
        let mut original = vec![0; site.end.saturating_sub(site.start) as usize];
        mem.read(site.start, &mut original)
            .map_err(|e| error(i, t, TableErrorKind::Unreadable(e)))?;
        I::check_whole(site.start, &original).map_err(|kind| error(i, t, kind))?;
        sites.push(SitePlan {
            addr: site.start,
            new: Vec::new(),
            original,
            choice: Choice::Default,
            candidates: vec![parsed[i].candidate(i, caps)],
            paravirt: None,
        });
    }

    // Decide: the first entry, in table order, that holds.
    for site in &mut sites {
        let winner = site.candidates.iter().find(|c| c.held).map(|c| c.entry);
        let (choice, new) = match winner {
            None => (Choice::Default, I::keep_default(&site.original)),
            Some(entry) => {
                let p = &parsed[entry];
                let mut new = vec![0; site.original.len()];
                let used = p.bytes.len();
                new[..used].copy_from_slice(&p.bytes);
                I::fill(&mut new[used..]);
                let choice = match p.target {
                    Target::Call(target) => Choice::DirectCall { entry, target },
                    Target::Inline => Choice::Inline { entry },
                };
                (choice, new)
            }
        };
        site.choice = choice;
        site.new = new;
    }

    Ok(Plan {
        sites,
        capabilities: *caps,
    })
}

/// What a valid entry would write at its site.
struct Parsed {
    capability: Option<Capability>,
    negated: bool,
    target: Target,
    /// The relocated replacement, or the encoded call; empty for a placeholder.
    bytes: Vec<u8>,
}

enum Target {
    Inline,
    Call(u64),
}

impl Parsed {
    fn candidate(&self, entry: usize, caps: &CapabilitySet) -> Candidate {
        let capability = self.capability.expect("checked entry has a capability");
        Candidate {
            entry,
            capability,
            negated: self.negated,
            direct_call: matches!(self.target, Target::Call(_)),
            held: caps.has(capability) != self.negated,
        }
    }
}

fn error(index: usize, t: &TableEntry, kind: TableErrorKind) -> TableError {
    TableError {
        index,
        entry_addr: t.addr,
        site: t.entry.site_addr(t.addr),
        kind,
    }
}

pub(crate) fn inside(r: &Range<u64>, inner: &Range<u64>) -> bool {
    inner.start >= r.start && inner.end <= r.end && inner.start <= inner.end
}

pub(crate) fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

pub(crate) fn in_text(layout: &Layout<'_>, r: &Range<u64>) -> bool {
    layout.text.iter().any(|t| inside(t, r)) && !overlaps(&layout.replacements, r)
}

fn check_entry<I: Isa, M: Memory>(
    index: usize,
    t: &TableEntry,
    layout: &Layout<'_>,
    mem: &M,
) -> Result<Parsed, TableError> {
    let e = &t.entry;
    if t.is_placeholder() {
        return Ok(Parsed {
            capability: None,
            negated: false,
            target: Target::Inline,
            bytes: Vec::new(),
        });
    }
    let err = |kind| error(index, t, kind);
    let reserved = e.key & KEY_RESERVED_MASK;
    if reserved != 0 {
        return Err(err(TableErrorKind::ReservedFlags(reserved)));
    }
    let capability = Capability::from_id(e.capability_id())
        .ok_or_else(|| err(TableErrorKind::UnknownCapability(e.capability_id())))?;
    if e.site_len == 0 {
        return Err(err(TableErrorKind::EmptySite));
    }
    let site = t.site();
    let site_end_wrapped = e
        .site_addr(t.addr)
        .checked_add(u64::from(e.site_len))
        .is_none();
    if site_end_wrapped || !in_text(layout, &site) {
        return Err(err(TableErrorKind::SiteOutsideText));
    }
    let flags = e.flags();
    let negated = flags.contains(AltFlags::NOT);
    let target_addr = e.replacement_addr(t.addr);

    if flags.contains(AltFlags::DIRECT_CALL) {
        if e.replacement_len != 0 {
            return Err(err(TableErrorKind::DirectCallWithReplacement));
        }
        if e.site_len < I::CALL_LEN {
            return Err(err(TableErrorKind::DirectCallSiteTooShort));
        }
        let target = target_addr;
        if !in_text(layout, &(target..target.saturating_add(1))) {
            return Err(err(TableErrorKind::CallTargetOutsideText { target }));
        }
        let call = I::call(site.start, target).map_err(err)?;
        return Ok(Parsed {
            capability: Some(capability),
            negated,
            target: Target::Call(target),
            bytes: call,
        });
    }

    if e.replacement_len > e.site_len {
        return Err(err(TableErrorKind::ReplacementTooLong {
            replacement_len: e.replacement_len,
            site_len: e.site_len,
        }));
    }
    let repl = target_addr..target_addr.saturating_add(u64::from(e.replacement_len));
    if !inside(&layout.replacements, &repl) {
        return Err(err(TableErrorKind::ReplacementOutsideSection {
            replacement: target_addr,
        }));
    }
    let mut src = vec![0; usize::from(e.replacement_len)];
    mem.read(repl.start, &mut src)
        .map_err(|e| err(TableErrorKind::Unreadable(e)))?;
    let mut bytes = vec![0; src.len()];
    I::relocate(&src, repl.start, site.start, &mut bytes).map_err(err)?;
    Ok(Parsed {
        capability: Some(capability),
        negated,
        target: Target::Inline,
        bytes,
    })
}

/// Rewrites every run of one-byte NOPs (`0x90`) in whole-instruction code into the fewest
/// recommended multi-byte NOPs, as Linux's `optimize_nops` does for default code whose padding
/// the assembler filled with `0x90`. Code that does not decode is returned unchanged.
pub fn optimize_nops(code: &[u8]) -> Vec<u8> {
    let mut out = code.to_vec();
    let mut run_start = None;
    let mut offset = 0;
    while offset < code.len() {
        let len = match insn::decode(&code[offset..]) {
            Ok(i) => usize::from(i.len),
            Err(_) => return code.to_vec(),
        };
        let single_nop = len == 1 && code[offset] == 0x90;
        match (single_nop, run_start) {
            (true, None) => run_start = Some(offset),
            (false, Some(s)) => {
                nops::fill(&mut out[s..offset]);
                run_start = None;
            }
            _ => {}
        }
        offset += len;
    }
    if let Some(s) = run_start {
        nops::fill(&mut out[s..]);
    }
    out
}
