//! The alternatives planner and validator: one decision per site, every entry checked before
//! anything is written.
//!
//! [`plan_alternatives`] reads a table of [`AltEntry`]s, checks each entry and the table as a
//! whole, and computes for every site the bytes it will hold: the relocated replacement, a fresh
//! direct call, or the default with its NOP fill optimised. Nothing is written here; the
//! [driver](crate::driver) carries the [`Plan`] out. If any entry is wrong the whole table is
//! refused with a [`TableError`] that names the entry.
//!
//! The pass reads as Linux's `apply_alternatives`: `check_entry` validates one entry;
//! `group_sites` puts the entries of each site together and reads its bytes; `check_returns`
//! applies the return-address rule; `decide` takes the first entry that holds and `encode`
//! writes its bytes.
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
//!   text and outside the replacement section, and a call that reaches it.
//!
//! Across entries: entries for one site agree on its length; distinct sites do not overlap; each
//! site's current bytes decode into whole instructions that end exactly at the site's end.
//!
//! **The return-address rule.** A thread (or CPU) may be inside a function called from a site
//! while the site is rewritten; it returns to the byte after the call. So every offset where a
//! call in any variant of the site returns (the default's call, a direct call, a call inside a
//! replacement) must be an instruction boundary in every variant. The planner writes direct
//! calls so that they end where the default's call ends, and NOP fill so that it keeps a
//! boundary at each such offset; a replacement instruction that straddles one is an error
//! ([`TableErrorKind::ReturnInsideInstruction`]).
//!
//! The first failing check, in that order, is the error reported.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::bytes::SiteBytes;
use crate::capability::{Capability, CapabilitySet};
use crate::isa::{fill_keeping, CodeError, Isa, Offsets, Shape, X86_64};
use crate::memory::{Memory, MemoryError};
pub use crate::sites::{Candidate, Candidates, Choice};
use crate::sites::{Sites, SitesError};
use crate::table::{AltEntry, AltFlags, KEY_RESERVED_MASK};

/// Where sites, replacements and call targets may lie.
#[derive(Clone, Debug)]
pub struct Layout<'a> {
    /// Executable ranges whose sites may be patched and whose functions may be call targets.
    pub text: &'a [Range<u64>],
    /// The replacement section.
    pub replacements: Range<u64>,
}

impl Layout<'_> {
    /// Whether `r` lies inside one text range and outside the replacement section.
    pub fn in_text(&self, r: &Range<u64>) -> bool {
        self.text.iter().any(|t| inside(t, r)) && !overlaps(&self.replacements, r)
    }
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
        (0..table.len()).map(move |i| InMemory(table).get(i))
    }

    /// Whether this is a placeholder: every field zero.
    pub fn is_placeholder(&self) -> bool {
        let e = &self.entry;
        // Field by field: the same as all 12 bytes zero, without building them.
        e.site == 0 && e.replacement == 0 && e.key == 0 && e.site_len == 0 && e.replacement_len == 0
    }

    /// The site's address range.
    pub fn site(&self) -> Range<u64> {
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
    Replacement(CodeError),
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
    Site(CodeError),
    /// The site cannot be recorded: too many entries for one site, or too many sites.
    TooManyEntries(SitesError),
    /// A call in some variant of the site returns to `offset`, which is inside an instruction
    /// of this entry's variant (or of the default, for the entry that carries the default).
    ReturnInsideInstruction {
        /// Offset of the return address from the start of the site.
        offset: u8,
        /// Whether the variant concerned is the site's default rather than this entry's.
        in_default: bool,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "alternative entry {} at {:#x} (site {:#x}): {}",
            self.index, self.entry_addr, self.site, self.kind
        )
    }
}

impl fmt::Display for TableErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
            TableErrorKind::Replacement(e) => write!(f, "cannot move the replacement: {e}"),
            TableErrorKind::SiteLengthMismatch { other, other_len } => write!(
                f,
                "site length differs from entry {other} for the same site ({other_len} bytes)"
            ),
            TableErrorKind::Overlap { other, other_site } => write!(
                f,
                "site overlaps the site at {other_site:#x} of entry {other}"
            ),
            TableErrorKind::Unreadable(e) => write!(f, "{e}"),
            TableErrorKind::TooManyEntries(e) => write!(f, "the site cannot be recorded: {e}"),
            TableErrorKind::Site(e) => write!(f, "site bytes are not whole instructions: {e}"),
            TableErrorKind::ReturnInsideInstruction { offset, in_default } => write!(
                f,
                "a call in the site returns to offset {offset}, which is inside an instruction \
                 of {}; a thread returning there would run half an instruction",
                if *in_default {
                    "the default"
                } else {
                    "this replacement"
                }
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TableError {}

/// A plan: one decision per site, sorted by site address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The sites: each as a [`crate::report::SiteReport`] when read.
    pub sites: Sites,
    /// The capabilities the plan was made for.
    pub capabilities: CapabilitySet,
}

impl Plan {
    /// Every capability some entry of the table is keyed by, taken or not: what a CPU that
    /// comes up later must agree with ([`crate::policy::SystemCaps::set_used`]).
    pub fn used(&self) -> CapabilitySet {
        let mut used = CapabilitySet::default();
        for c in self.sites.capabilities() {
            used.set(c);
        }
        used
    }
}

/// Plans every site of an x86-64 alternatives table; see [`plan_alternatives_for`].
pub fn plan_alternatives<M: Memory>(
    entries: &[TableEntry],
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    plan_alternatives_for::<X86_64, M>(entries, layout, caps, mem)
}

/// Plans every site of an alternatives table for the instruction set `I`
/// ([`crate::isa::X86_64`] or [`crate::isa::Aarch64`]).
///
/// `entries` are the table's entries in table order with their addresses (use
/// [`TableEntry::in_memory`] for a table in this address space). Every entry is validated; the
/// first problem is returned as a [`TableError`] and nothing is planned.
pub fn plan_alternatives_for<I: Isa, M: Memory>(
    entries: &[TableEntry],
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    plan_table_for::<I, M, _>(entries, layout, caps, mem)
}

/// A table's entries in table order, each with the address it lives at: a slice of
/// [`TableEntry`]s, or [`InMemory`], a table of this address space read where it lies (the
/// planner then keeps no copy of it).
pub trait EntryList {
    /// How many entries (placeholders count).
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th entry (`i < len()`).
    fn get(&self, i: usize) -> TableEntry;
}

impl EntryList for [TableEntry] {
    fn len(&self) -> usize {
        <[TableEntry]>::len(self)
    }

    fn get(&self, i: usize) -> TableEntry {
        self[i]
    }
}

/// An alternatives table of this address space, read in place: each entry's address is where
/// it lies.
#[derive(Clone, Copy, Debug)]
pub struct InMemory<'a>(pub &'a [AltEntry]);

impl EntryList for InMemory<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, i: usize) -> TableEntry {
        let e = &self.0[i];
        TableEntry {
            addr: e as *const AltEntry as usize as u64,
            entry: *e,
        }
    }
}

/// [`plan_alternatives_for`] for any [`EntryList`].
pub fn plan_table_for<I: Isa, M: Memory, E: EntryList + ?Sized>(
    entries: &E,
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    plan_entries::<I, M, E>(entries, None, layout, caps, mem)
}

/// Plans a table of this program that lies in memory for good (a program's own, from its
/// sections): the plan reads each site's entries from it again instead of keeping them
/// ([`Sites::in_place`]), where the table is in address order.
pub(crate) fn plan_static_table<I: Isa, M: Memory>(
    table: &'static [AltEntry],
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    plan_entries::<I, M, _>(&InMemory(table), Some(table), layout, caps, mem)
}

/// Plans `entries`; `place` is the same table when it lies in memory for good.
fn plan_entries<I: Isa, M: Memory, E: EntryList + ?Sized>(
    entries: &E,
    place: Option<&'static [AltEntry]>,
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    let mut parsed = Vec::with_capacity(entries.len());
    let mut arena = Vec::new();
    let mut shapes = Vec::new();
    let mut unchanged = MovesUnchanged::new(entries.len());
    for index in 0..entries.len() {
        parsed.push(check_entry::<I, M>(
            index,
            &entries.get(index),
            layout,
            mem,
            &mut arena,
            &mut shapes,
            &mut unchanged,
        )?);
    }
    let order = Order::new(entries);
    let planned = Planned {
        entries,
        parsed: &parsed,
        arena: &arena,
        shapes: &shapes,
        order: &order,
    };
    // One site at a time: its entries are grouped, its bytes read and checked, then it is
    // decided and encoded, so no list of every site's group is kept. The checks of the
    // grouping (lengths, overlaps, the site's bytes) come first for the whole table: an error
    // of a later step is held until every site has passed them.
    let mut sites = match (place, &order) {
        (Some(table), Order::Table(r)) => {
            // Room for sites as long as the first (a hint: pages are touched as used).
            let len = r
                .clone()
                .next()
                .map_or(0, |i| entries.get(i).entry.site_len);
            Sites::in_place(table, *caps, 2 * usize::from(len) * r.len())
        }
        _ => Sites::with_capacity(order.len()),
    };
    let in_place = sites.is_in_place();
    let mut later: Option<TableError> = None;
    let mut k = 0;
    let mut previous: Option<(u64, usize)> = None;
    while k < order.len() {
        let g = next_group::<I, M, E>(entries, &order, k, previous, mem)?;
        previous = Some((g.site.end, order.at(k)));
        k = g.entries.end;
        if later.is_none() {
            if let Err(e) = planned.site::<I>(&mut sites, in_place, g, caps) {
                later = Some(e);
            }
        }
    }
    if let Some(e) = later {
        return Err(e);
    }
    Ok(Plan {
        sites,
        capabilities: *caps,
    })
}

/// What the per-entry pass found, for planning the sites one by one.
struct Planned<'p, E: ?Sized> {
    entries: &'p E,
    parsed: &'p [Parsed],
    arena: &'p [u8],
    shapes: &'p [Shape],
    order: &'p Order,
}

impl<E: EntryList + ?Sized> Planned<'_, E> {
    /// Plans one site into `sites`: the return-address rule, the decision and its bytes.
    fn site<I: Isa>(
        &self,
        sites: &mut Sites,
        in_place: bool,
        g: Group,
        caps: &CapabilitySet,
    ) -> Result<(), TableError> {
        let returns = check_returns::<I, E>(self, &g)?;
        let candidate = |i: usize| {
            let t = self.entries.get(i);
            (self.parsed[i].candidate(i, &t, caps), t.addr)
        };
        // Each entry's candidate once (two inline, more on the heap).
        let first = self.order.at(g.entries.start);
        let candidates: crate::bytes::SmallVec<(Candidate, u64), 2> = if g.entries.len() == 1 {
            [candidate(first)][..].into()
        } else {
            g.indices(self.order).map(candidate).collect()
        };
        let choice = decide(self.entries, candidates.iter().map(|c| c.0));
        let new = encode::<I, E>(self, &g, choice, returns)?;
        let pushed = if in_place {
            // In table order: the order's positions are the table's indices.
            let entries = first..first + g.entries.len();
            sites.push_in_place(entries, &g.original, &new)
        } else {
            sites.push(
                g.site.start,
                &g.original,
                &new,
                candidates.iter().copied(),
                choice,
            )
        };
        pushed.map_err(|e| {
            let kind = TableErrorKind::TooManyEntries(e);
            error(first, &self.entries.get(first), kind)
        })
    }

    fn shape(&self, index: u32) -> &Shape {
        &self.shapes[index as usize]
    }
}

/// What a valid entry would put at its site, in 8 bytes (a program has one per site): its
/// capability and condition are not kept, they are read from the entry again.
#[derive(Clone, Copy)]
struct Parsed {
    /// For an inline replacement: where its bytes, relocated to the site's start, are in the
    /// planner's arena (one buffer for every entry; entries with the same bytes share them).
    at: u32,
    /// The replacement's shape (an index in the planner's list of shapes: a program's many
    /// sites of one function share one), or [`Parsed::NONE`] or [`Parsed::CALL`].
    shape: u32,
}

/// What an entry puts at its site.
enum Variant {
    /// A placeholder: never a candidate.
    None,
    /// The replacement (its length is the entry's), relocated to the site's start: `at` in the
    /// arena, its shape at `shape` in the list of shapes.
    Inline { at: u32, shape: u32 },
    /// A direct call to the entry's target (read from the entry again: it is its
    /// `replacement` address).
    Call,
}

impl Parsed {
    const NONE: u32 = u32::MAX;
    const CALL: u32 = u32::MAX - 1;
    /// The most shapes a plan can keep: indices below the two markers.
    const SHAPES: usize = Self::CALL as usize;

    const PLACEHOLDER: Parsed = Parsed {
        at: 0,
        shape: Self::NONE,
    };
    const DIRECT_CALL: Parsed = Parsed {
        at: 0,
        shape: Self::CALL,
    };

    fn variant(self) -> Variant {
        match self.shape {
            Self::NONE => Variant::None,
            Self::CALL => Variant::Call,
            shape => Variant::Inline { at: self.at, shape },
        }
    }

    /// The entry `t` (checked; index `entry`) as a candidate under `caps`.
    fn candidate(self, entry: usize, t: &TableEntry, caps: &CapabilitySet) -> Candidate {
        let capability =
            Capability::from_id(t.entry.capability_id()).expect("checked entry has a capability");
        let negated = t.entry.flags().contains(AltFlags::NOT);
        Candidate {
            entry,
            capability,
            negated,
            direct_call: self.shape == Self::CALL,
            held: caps.has(capability) != negated,
            name: None,
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

/// Whether `inner` lies inside `r`.
pub fn inside(r: &Range<u64>, inner: &Range<u64>) -> bool {
    inner.start >= r.start && inner.end <= r.end && inner.start <= inner.end
}

/// Whether two ranges share a byte.
pub fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Replacements that move unchanged (no operand reaches outside them), by their bytes, with
/// their shapes: a program's many sites of one function have the same replacement, so it is
/// decoded once. Direct-mapped, small.
struct MovesUnchanged {
    slots: Vec<Option<(u8, [u8; 16], Parsed)>>,
}

impl MovesUnchanged {
    /// Most slots: a power of two up to 64 (the hash below has six bits).
    const SLOTS: usize = 64;

    /// A cache for a table of `entries`: a slot per entry up to [`Self::SLOTS`] (a small
    /// program's table touches no more memory than it needs; a slot is 28 bytes).
    fn new(entries: usize) -> Self {
        MovesUnchanged {
            slots: vec![None; entries.next_power_of_two().clamp(1, Self::SLOTS)],
        }
    }

    /// Longest code cached, and the length of a key: the code padded with zeros.
    const KEY: usize = 16;

    fn slot(&self, key: &[u8; Self::KEY], n: usize) -> usize {
        let k = u128::from_le_bytes(*key);
        let (lo, hi) = (k as u64, (k >> 64) as u64);
        // A multiplicative hash of both halves and the length; the top bits pick the slot.
        let h = (lo ^ hi.rotate_left(29) ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 58) as usize % self.slots.len()
    }

    /// What the `n` bytes of `key` (`n <= KEY`, the rest zero) were parsed as (their bytes in
    /// the arena and their shape), if cached.
    fn get(&self, key: &[u8; Self::KEY], n: usize) -> Option<Parsed> {
        match &self.slots[self.slot(key, n)] {
            Some((len, b, shape)) if usize::from(*len) == n && b == key => Some(*shape),
            _ => None,
        }
    }

    fn put(&mut self, code: &[u8], shape: Parsed) {
        if code.len() <= Self::KEY {
            let mut key = [0; Self::KEY];
            key[..code.len()].copy_from_slice(code);
            let slot = self.slot(&key, code.len());
            self.slots[slot] = Some((code.len() as u8, key, shape));
        }
    }
}

/// Validates one entry on its own and works out what it would write.
fn check_entry<I: Isa, M: Memory>(
    index: usize,
    t: &TableEntry,
    layout: &Layout<'_>,
    mem: &M,
    arena: &mut Vec<u8>,
    shapes: &mut Vec<Shape>,
    unchanged: &mut MovesUnchanged,
) -> Result<Parsed, TableError> {
    let e = &t.entry;
    if t.is_placeholder() {
        return Ok(Parsed::PLACEHOLDER);
    }
    let err = |kind| error(index, t, kind);
    let reserved = e.key & KEY_RESERVED_MASK;
    if reserved != 0 {
        return Err(err(TableErrorKind::ReservedFlags(reserved)));
    }
    if Capability::from_id(e.capability_id()).is_none() {
        return Err(err(TableErrorKind::UnknownCapability(e.capability_id())));
    }
    if e.site_len == 0 {
        return Err(err(TableErrorKind::EmptySite));
    }
    let site = t.site();
    let site_end_wrapped = e
        .site_addr(t.addr)
        .checked_add(u64::from(e.site_len))
        .is_none();
    if site_end_wrapped || !layout.in_text(&site) {
        return Err(err(TableErrorKind::SiteOutsideText));
    }
    let flags = e.flags();
    let target = e.replacement_addr(t.addr);

    if flags.contains(AltFlags::DIRECT_CALL) {
        if e.replacement_len != 0 {
            return Err(err(TableErrorKind::DirectCallWithReplacement));
        }
        if e.site_len < I::CALL_LEN {
            return Err(err(TableErrorKind::DirectCallSiteTooShort));
        }
        if !layout.in_text(&(target..target.saturating_add(1))) {
            return Err(err(TableErrorKind::CallTargetOutsideText { target }));
        }
        // Reach from the site's start; `encode` places the call and checks again.
        I::call(site.start, target).map_err(|e| err(TableErrorKind::Replacement(e)))?;
        return Ok(Parsed::DIRECT_CALL);
    }

    if e.replacement_len > e.site_len {
        return Err(err(TableErrorKind::ReplacementTooLong {
            replacement_len: e.replacement_len,
            site_len: e.site_len,
        }));
    }
    let repl = target..target.saturating_add(u64::from(e.replacement_len));
    if !inside(&layout.replacements, &repl) {
        return Err(err(TableErrorKind::ReplacementOutsideSection {
            replacement: target,
        }));
    }
    let n = usize::from(e.replacement_len);
    let at = arena.len();
    let fits = u32::try_from(at + n).is_ok() && shapes.len() < Parsed::SHAPES;
    if !fits {
        return Err(err(TableErrorKind::TooManyEntries(SitesError::TooMany)));
    }
    // A short replacement is read into its cache key directly: one seen before (by its bytes)
    // is then done, and shares the bytes relocated for it.
    let mut key = [0u8; MovesUnchanged::KEY];
    let short = n <= MovesUnchanged::KEY;
    if short {
        mem.read(repl.start, &mut key[..n])
            .map_err(|e| err(TableErrorKind::Unreadable(e)))?;
        if let Some(seen) = unchanged.get(&key, n) {
            return Ok(seen);
        }
    }
    // Not seen before: relocate it from a copy of its bytes.
    let mut src = [0u8; 255];
    let src = &mut src[..n];
    if short {
        crate::short::copy_into(src, &key[..n]);
    } else {
        mem.read(repl.start, src)
            .map_err(|e| err(TableErrorKind::Unreadable(e)))?;
    }
    arena.resize(at + n, 0);
    let shape = I::relocate(src, repl.start, site.start, &mut arena[at..])
        .map_err(|e| err(TableErrorKind::Replacement(e)))?;
    // Both fit in 32 bits (checked above).
    let parsed = Parsed {
        at: at as u32,
        shape: shapes.len() as u32,
    };
    shapes.push(shape);
    // Moved elsewhere and still the same bytes: nothing in it depends on where it is.
    if repl.start != site.start && arena[at..] == *src {
        unchanged.put(src, parsed);
    }
    Ok(parsed)
}

/// The entries of one site, and the site's bytes.
struct Group {
    site: Range<u64>,
    /// Where the site's entry indices are in the sorted order, in table order (the first one
    /// carries the site's default).
    entries: Range<usize>,
    original: SiteBytes,
    shape: Shape,
}

impl Group {
    /// The site's entries (their indices), in table order.
    fn indices<'o>(&self, order: &'o Order) -> impl Iterator<Item = usize> + 'o {
        self.entries.clone().map(|k| order.at(k))
    }
}

/// The entries' indices sorted by site (table order kept among the entries of one site),
/// placeholders left out. A table in address order (as the linker leaves it) with no
/// placeholder between its entries is its own order: then no list is kept.
enum Order {
    /// The entries at these indices, as they are.
    Table(Range<usize>),
    /// Sorted.
    Sorted(Vec<usize>),
}

impl Order {
    fn new<E: EntryList + ?Sized>(entries: &E) -> Order {
        let mut sorted = true;
        let mut last = 0;
        // The real entries' first and last index, and whether a placeholder lies between.
        let (mut first, mut end, mut gap) = (None, 0, false);
        for i in 0..entries.len() {
            let t = entries.get(i);
            if t.is_placeholder() {
                continue;
            }
            let start = t.entry.site_addr(t.addr);
            sorted &= start >= last;
            last = start;
            gap |= first.is_some() && end != i;
            first.get_or_insert(i);
            end = i + 1;
        }
        let first = first.unwrap_or(0);
        if sorted && !gap {
            return Order::Table(first..end.max(first));
        }
        let mut order: Vec<usize> = (first..end)
            .filter(|&i| !entries.get(i).is_placeholder())
            .collect();
        if !sorted {
            order.sort_by_key(|&i| (entries.get(i).site().start, i));
        }
        Order::Sorted(order)
    }

    fn len(&self) -> usize {
        match self {
            Order::Table(r) => r.len(),
            Order::Sorted(v) => v.len(),
        }
    }

    /// The index of the `k`-th entry in site order (`k < len()`).
    fn at(&self, k: usize) -> usize {
        match self {
            Order::Table(r) => r.start + k,
            Order::Sorted(v) => v[k],
        }
    }
}

/// The site whose first entry is `order[k]`: its entries (checked to agree on its length), its
/// bytes (read and checked), after checking it does not overlap the previous site (its end and
/// first entry).
fn next_group<I: Isa, M: Memory, E: EntryList + ?Sized>(
    entries: &E,
    order: &Order,
    k: usize,
    previous: Option<(u64, usize)>,
    mem: &M,
) -> Result<Group, TableError> {
    let i = order.at(k);
    let t = &entries.get(i);
    let site = t.site();
    if let Some((end, first)) = previous {
        if end > site.start {
            let other_site = entries.get(first).site().start;
            let kind = TableErrorKind::Overlap {
                other: first,
                other_site,
            };
            return Err(error(i, t, kind));
        }
    }
    let mut original = SiteBytes::filled(0, site.end.saturating_sub(site.start) as usize);
    mem.read(site.start, &mut original)
        .map_err(|e| error(i, t, TableErrorKind::Unreadable(e)))?;
    let shape =
        I::shape(site.start, &original).map_err(|e| error(i, t, TableErrorKind::Site(e)))?;
    let mut end = k + 1;
    while end < order.len() {
        let j = order.at(end);
        let other = &entries.get(j);
        let other_site = other.site();
        if other_site.start != site.start {
            break;
        }
        if other_site.end != site.end {
            let kind = TableErrorKind::SiteLengthMismatch {
                other: i,
                other_len: t.entry.site_len,
            };
            return Err(error(j, other, kind));
        }
        end += 1;
    }
    Ok(Group {
        site,
        entries: k..end,
        original,
        shape,
    })
}

/// Where a direct call of this site ends: where the default's (last) call returns, or right
/// after a call at the site's start when the default calls nothing.
fn call_end<I: Isa>(g: &Group) -> usize {
    g.shape
        .returns
        .last()
        .filter(|&r| r >= usize::from(I::CALL_LEN))
        .unwrap_or(usize::from(I::CALL_LEN))
}

/// The return-address rule (see the [module documentation](self)): returns the offsets that
/// must stay instruction boundaries in every variant of the site.
fn check_returns<I: Isa, E: EntryList + ?Sized>(
    p: &Planned<'_, E>,
    g: &Group,
) -> Result<Offsets, TableError> {
    let (entries, parsed, order) = (p.entries, p.parsed, p.order);
    let call_end = call_end::<I>(g);
    let call_start = call_end - usize::from(I::CALL_LEN);
    let mut returns = g.shape.returns;
    for i in g.indices(order) {
        match parsed[i].variant() {
            Variant::Inline { shape, .. } => returns = returns.union(p.shape(shape).returns),
            Variant::Call => returns.insert(call_end),
            Variant::None => {}
        }
    }
    let len = g.original.len();
    if !returns.any_below(len) {
        // Every call returns to the site's end (or there is none): fine in every variant.
        return Ok(returns);
    }
    // A return to the site's end is fine in every variant: each ends there.
    for r in returns.iter().take_while(|&r| r < len) {
        let offset = r as u8;
        let first = order.at(g.entries.start);
        if !g.shape.boundaries.contains(r) {
            let kind = TableErrorKind::ReturnInsideInstruction {
                offset,
                in_default: true,
            };
            return Err(error(first, &entries.get(first), kind));
        }
        for i in g.indices(order) {
            let straddles = match parsed[i].variant() {
                Variant::Inline { shape, .. } => {
                    let len = entries.get(i).entry.replacement_len;
                    r < usize::from(len) && !p.shape(shape).boundaries.contains(r)
                }
                Variant::Call => r > call_start && r < call_end,
                Variant::None => false,
            };
            if straddles {
                let kind = TableErrorKind::ReturnInsideInstruction {
                    offset,
                    in_default: false,
                };
                return Err(error(i, &entries.get(i), kind));
            }
        }
    }
    Ok(returns)
}

/// The priority rule: the first entry, in table order, that holds.
fn decide<E: EntryList + ?Sized>(
    entries: &E,
    mut candidates: impl Iterator<Item = Candidate>,
) -> Choice {
    match candidates.find(|c| c.held) {
        None => Choice::Default,
        Some(c) if c.direct_call => {
            let t = entries.get(c.entry);
            Choice::DirectCall {
                entry: c.entry,
                target: t.entry.replacement_addr(t.addr),
            }
        }
        Some(c) => Choice::Inline { entry: c.entry },
    }
}

/// The bytes the site will hold for `choice`, keeping a boundary at every offset of `returns`.
fn encode<I: Isa, E: EntryList + ?Sized>(
    p: &Planned<'_, E>,
    g: &Group,
    choice: Choice,
    returns: Offsets,
) -> Result<SiteBytes, TableError> {
    let len = g.original.len();
    match choice {
        Choice::Default => {
            let mut kept = SiteBytes::filled(0, len);
            I::keep_default(&g.original, &mut kept);
            // Merged NOP padding must not swallow a return boundary (the site's end is one).
            let keeps = returns.iter().all(|r| r >= len)
                || I::shape(g.site.start, &kept)
                    .map(|s| returns.iter().all(|r| s.boundaries.contains(r)))
                    .unwrap_or(false);
            Ok(if keeps { kept } else { g.original.clone() })
        }
        Choice::Inline { entry } => {
            let Variant::Inline { at, .. } = p.parsed[entry].variant() else {
                unreachable!("an inline choice has inline bytes")
            };
            let n = usize::from(p.entries.get(entry).entry.replacement_len);
            let at = at as usize;
            let mut new = SiteBytes::filled(0, len);
            crate::short::copy_into(&mut new[..n], &p.arena[at..at + n]);
            fill_keeping::<I>(&mut new, n, returns);
            Ok(new)
        }
        Choice::DirectCall { entry, target } => {
            let end = call_end::<I>(g);
            let start = end - usize::from(I::CALL_LEN);
            let call = I::call(g.site.start + start as u64, target)
                .map_err(|e| error(entry, &p.entries.get(entry), TableErrorKind::Replacement(e)))?;
            let mut new = SiteBytes::filled(0, len);
            fill_keeping::<I>(&mut new[..start], 0, returns);
            crate::short::copy_into(&mut new[start..end], &call);
            let mut after = Offsets::EMPTY;
            for r in returns.iter().filter(|&r| r > end) {
                after.insert(r - end);
            }
            fill_keeping::<I>(&mut new[end..], 0, after);
            Ok(new)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries at 0x1000, 0x100c, ...: `Some(site)` for an entry of the site at `site`, `None`
    /// for a placeholder.
    fn table(sites: &[Option<u64>]) -> Vec<TableEntry> {
        sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let addr = 0x1000 + 12 * i as u64;
                let entry = match s {
                    Some(site) => AltEntry {
                        site: (*site as i64 - addr as i64) as i32,
                        replacement: 0,
                        key: 4,
                        site_len: 5,
                        replacement_len: 0,
                    },
                    None => AltEntry {
                        site: 0,
                        replacement: 0,
                        key: 0,
                        site_len: 0,
                        replacement_len: 0,
                    },
                };
                TableEntry { addr, entry }
            })
            .collect()
    }

    fn order(sites: &[Option<u64>]) -> (Vec<usize>, bool) {
        let t = table(sites);
        let o = Order::new(&t[..]);
        let listed = matches!(o, Order::Sorted(_));
        ((0..o.len()).map(|k| o.at(k)).collect(), listed)
    }

    #[test]
    fn a_table_in_address_order_is_its_own_order_and_others_are_sorted_by_site() {
        let (a, b, c) = (Some(0x5000), Some(0x5010), Some(0x5020));
        // In order, placeholders only at the ends: no list.
        assert_eq!(order(&[None, a, b, b, c, None]), (vec![1, 2, 3, 4], false));
        assert_eq!(order(&[a, b]), (vec![0, 1], false));
        assert_eq!(order(&[None, None]), (vec![], false));
        assert_eq!(order(&[]), (vec![], false));
        // A placeholder between entries is left out of a list.
        assert_eq!(order(&[a, None, b, None]), (vec![0, 2], true));
        // Out of order: sorted by site, table order kept among one site's entries.
        assert_eq!(order(&[c, a, b, a, None]), (vec![1, 3, 2, 0], true));
    }
}
