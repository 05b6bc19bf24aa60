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
//!
//! A table in address order with no placeholder between its entries (as the linker leaves a
//! program's own) is planned in one pass: each site's entries are checked as the site is
//! planned, and nothing is kept per entry. The checks, and the order entries are checked in,
//! are those of the two passes, so the plan is theirs; if anything fails, or the table is
//! not such a table, it is planned again in two passes, per entry then per site, which name
//! the first error in the order above.

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
    let mut work = Work::new(entries.len());
    if let Some(plan) = plan_in_order::<I, M, E>(entries, place, layout, caps, mem, &mut work) {
        return Ok(plan);
    }
    // Not in address order, a placeholder between entries, or some entry is wrong: the two
    // passes, which find the first error in the documented order.
    plan_in_two_passes::<I, M, E>(entries, layout, caps, mem)
}

/// What planning builds up from the entries: the relocated replacements and their shapes.
struct Work {
    /// Every inline replacement relocated to its first site, one after the other (entries
    /// whose replacements move unchanged share theirs).
    arena: Vec<u8>,
    shapes: Vec<Shape>,
    unchanged: MovesUnchanged,
}

impl Work {
    fn new(entries: usize) -> Self {
        Work {
            arena: Vec::new(),
            shapes: Vec::new(),
            unchanged: MovesUnchanged::new(entries),
        }
    }

    fn check<I: Isa, M: Memory>(
        &mut self,
        index: usize,
        t: &TableEntry,
        layout: &Layout<'_>,
        mem: &M,
    ) -> Result<Parsed, TableError> {
        check_entry::<I, M>(
            index,
            t,
            layout,
            mem,
            &mut self.arena,
            &mut self.shapes,
            &mut self.unchanged,
        )
    }

    /// The keys a site's entries must match to be planned from site `g` without checking them
    /// again (see [`Planned::like_site`]): `None` when some entry would not check the same
    /// wherever its site is (an inline replacement that is not cached as moving unchanged is
    /// relocated again, and takes room of its own), or when no code is alike under `I`
    /// (not even a site's with itself: then no site is planned from another).
    fn keys<I: Isa, M: Memory, E: EntryList + ?Sized>(
        &self,
        entries: &E,
        g: &Group,
        mem: &M,
    ) -> Option<EntryKeys> {
        if !I::alike(&g.original, &g.original) {
            return None;
        }
        let mut keys = EntryKeys::new();
        for &(i, parsed) in g.entries.iter() {
            let t = entries.get(i);
            let e = &t.entry;
            let mut key = EntryKey {
                key: e.key,
                site_len: e.site_len,
                replacement_len: e.replacement_len,
                ..EntryKey::default()
            };
            match parsed.variant() {
                Variant::Inline { .. } => {
                    // As `check_entry` would find it now: room for it, and cached by its bytes.
                    let n = usize::from(e.replacement_len);
                    let fits = u32::try_from(self.arena.len() + n).is_ok()
                        && self.shapes.len() < Parsed::SHAPES;
                    let at = e.replacement_addr(t.addr);
                    let cached = n <= MovesUnchanged::KEY
                        && mem.read(at, &mut key.bytes[..n]).is_ok()
                        && self.unchanged.get(&key.bytes, n) == Some(parsed);
                    if !(fits && cached) {
                        return None;
                    }
                }
                Variant::Call => key.target = e.replacement_addr(t.addr),
                Variant::None => return None,
            }
            keys.push(key);
        }
        Some(keys)
    }
}

/// Sites for a table whose entries lie from `first` (table index) on, `n` of them.
fn sites_for<E: EntryList + ?Sized>(
    entries: &E,
    place: Option<&'static [AltEntry]>,
    caps: &CapabilitySet,
    first: usize,
    n: usize,
) -> Sites {
    match place {
        Some(table) => {
            // Room for sites as long as the first (a hint: pages are touched as used).
            let len = if n > 0 {
                entries.get(first).entry.site_len
            } else {
                0
            };
            Sites::in_place(table, *caps, 2 * usize::from(len) * n)
        }
        None => Sites::with_capacity(n),
    }
}

/// The plan of a table in address order with no placeholder between its entries (as the
/// linker leaves a program's table) in one pass: each site's entries are checked, grouped,
/// decided and encoded together, and nothing is kept per entry. `None` when the table is not
/// such a table or some check fails: then [`plan_in_two_passes`] plans it (and names the first
/// error in the documented order). The checks and the order in which entries are checked
/// (table order: the replacements' cache and arena fill alike) are the two passes', so a plan
/// made here is the plan they make.
fn plan_in_order<I: Isa, M: Memory, E: EntryList + ?Sized>(
    entries: &E,
    place: Option<&'static [AltEntry]>,
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
    work: &mut Work,
) -> Option<Plan> {
    let n = entries.len();
    let mut i = (0..n)
        .find(|&i| !entries.get(i).is_placeholder())
        .unwrap_or(n);
    let mut sites = sites_for(entries, place, caps, i, n - i);
    let mut previous: Option<Range<u64>> = None;
    let mut last: Option<Last> = None;
    while i < n {
        if let Some(l) = &last {
            let planned = Planned {
                entries,
                arena: &work.arena,
                shapes: &work.shapes,
            };
            if let Some((end, site)) =
                planned.like_site::<I, M>(&mut sites, i, l, layout, caps, mem, &previous)
            {
                previous = Some(site);
                i = end;
                continue;
            }
        }
        let t = entries.get(i);
        if t.is_placeholder() {
            // Placeholders only at the end.
            if (i..n).all(|j| entries.get(j).is_placeholder()) {
                break;
            }
            return None;
        }
        let mut group: GroupEntries =
            [(i, work.check::<I, M>(i, &t, layout, mem).ok()?)][..].into();
        let site = t.site();
        if previous.is_some_and(|p| p.end > site.start) {
            // Out of order, or overlapping the site before.
            return None;
        }
        let mut j = i + 1;
        while j < n {
            let u = entries.get(j);
            if u.is_placeholder() || u.entry.site_addr(u.addr) != site.start {
                break;
            }
            if u.site().end != site.end {
                return None;
            }
            group.push((j, work.check::<I, M>(j, &u, layout, mem).ok()?));
            j += 1;
        }
        let mut original = SiteBytes::filled(0, site.end.saturating_sub(site.start) as usize);
        mem.read(site.start, &mut original).ok()?;
        let like = last
            .take()
            .filter(|l| l.is_like::<I, E>(entries, &group, &original));
        let shape = match &like {
            Some(l) => l.shape,
            None => I::shape(site.start, &original).ok()?,
        };
        let g = Group {
            site: site.clone(),
            entries: group,
            original,
            shape,
        };
        let planned = Planned {
            entries,
            arena: &work.arena,
            shapes: &work.shapes,
        };
        let decided = planned
            .site::<I>(&mut sites, &g, caps, like.as_ref())
            .ok()?;
        let keys = work.keys::<I, M, E>(entries, &g, mem);
        last = Some(Last {
            entries: g.entries,
            original: g.original,
            shape: g.shape,
            decided,
            keys,
        });
        previous = Some(site);
        i = j;
    }
    Some(Plan {
        sites,
        capabilities: *caps,
    })
}

/// Sites planned by [`Planned::like_site`] (tests see that it is used).
#[cfg(test)]
static LIKE_SITES: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// What was decided for a site: the offsets that stay boundaries, which of its entries
/// applies (its position among them), and the bytes.
struct Decided {
    returns: Offsets,
    chosen: Option<usize>,
    new: SiteBytes,
}

/// The site planned last, which the next is planned from when it is like it.
struct Last {
    entries: GroupEntries,
    original: SiteBytes,
    shape: Shape,
    decided: Decided,
    /// Its entries as a site's must be to be planned from it without checking them again
    /// ([`Planned::like_site`]); `None` when that cannot be.
    keys: Option<EntryKeys>,
}

/// What a site's entries must match, one by one, to be checked as the last site's were.
type EntryKeys = crate::bytes::SmallVec<EntryKey, 2>;

/// What an entry's check depends on, apart from where it and its site are: an entry with
/// these fields checks as this one did ([`check_entry`]) once its site is in the text, its
/// replacement in the replacement section (each site may have a copy of its own) and, for a
/// direct call, the target within reach of the site.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct EntryKey {
    key: u16,
    site_len: u8,
    replacement_len: u8,
    /// A direct call's target (else zero).
    target: u64,
    /// An inline replacement's bytes, zero after them (else zero).
    bytes: [u8; MovesUnchanged::KEY],
}

impl EntryKey {
    fn is_call(&self) -> bool {
        AltFlags::from_bits_retain(self.key).contains(AltFlags::DIRECT_CALL)
    }

    /// Whether entry `t` has this key: its fields, and what its replacement holds or where
    /// its call goes.
    #[inline]
    fn matches<M: Memory>(&self, t: &TableEntry, layout: &Layout<'_>, mem: &M) -> bool {
        let e = &t.entry;
        if (e.key, e.site_len, e.replacement_len) != (self.key, self.site_len, self.replacement_len)
        {
            return false;
        }
        let at = e.replacement_addr(t.addr);
        if self.is_call() {
            return at == self.target;
        }
        let n = usize::from(e.replacement_len);
        let want = &self.bytes[..n.min(MovesUnchanged::KEY)];
        let holds = || {
            // Compared where it lies if the reader can; else read.
            mem.compare_in_place(at, want).unwrap_or_else(|| {
                let mut bytes = [0u8; MovesUnchanged::KEY];
                let now = &mut bytes[..want.len()];
                mem.read(at, now).is_ok() && now == want
            })
        };
        inside(&layout.replacements, &(at..at.saturating_add(n as u64))) && holds()
    }
}

impl Last {
    /// Whether a site with these entries and code plans as this one did: as many entries, each
    /// with the key (capability, flags) and replacement length of this one's in its place and
    /// checked to the same [`Parsed`] (one kind, and for a replacement the same bytes, relocated
    /// to any site alike: the replacements' cache shares only those that move unchanged), and
    /// code as long and [alike](Isa::alike) (so of one shape). Then the return-address rule
    /// holds for it as it did here, the same entry holds, and an inline replacement puts the
    /// same bytes; what depends on where the site is (a direct call, the default's bytes) is
    /// worked out again.
    fn is_like<I: Isa, E: EntryList + ?Sized>(
        &self,
        entries: &E,
        group: &GroupEntries,
        original: &[u8],
    ) -> bool {
        let same = |a: &(usize, Parsed), b: &(usize, Parsed)| {
            let (x, y) = (entries.get(a.0).entry, entries.get(b.0).entry);
            a.1 == b.1 && x.key == y.key && x.replacement_len == y.replacement_len
        };
        self.entries.len() == group.len()
            && self.original.len() == original.len()
            && I::alike(&self.original, original)
            && self
                .entries
                .iter()
                .zip(group.iter())
                .all(|(a, b)| same(a, b))
    }

    /// The choice for a site like this one whose entries start at table index `first`: the
    /// entry in the same place.
    #[inline]
    fn choice_for<E: EntryList + ?Sized>(&self, entries: &E, first: usize) -> Choice {
        let Some((k, &(_, parsed))) = self
            .decided
            .chosen
            .and_then(|k| Some((k, self.entries.get(k)?)))
        else {
            return Choice::Default;
        };
        let entry = first + k;
        match parsed.variant() {
            Variant::Call => {
                let t = entries.get(entry);
                Choice::DirectCall {
                    entry,
                    target: t.entry.replacement_addr(t.addr),
                }
            }
            _ => Choice::Inline { entry },
        }
    }
}

/// The plan of any table: every entry checked on its own first (in table order), then the
/// sites in address order.
fn plan_in_two_passes<I: Isa, M: Memory, E: EntryList + ?Sized>(
    entries: &E,
    layout: &Layout<'_>,
    caps: &CapabilitySet,
    mem: &M,
) -> Result<Plan, TableError> {
    let mut work = Work::new(entries.len());
    let mut parsed = Vec::with_capacity(entries.len());
    for index in 0..entries.len() {
        parsed.push(work.check::<I, M>(index, &entries.get(index), layout, mem)?);
    }
    let order = Order::new(entries);
    let planned = Planned {
        entries,
        arena: &work.arena,
        shapes: &work.shapes,
    };
    // One site at a time: its entries are grouped, its bytes read and checked, then it is
    // decided and encoded, so no list of every site's group is kept. The checks of the
    // grouping (lengths, overlaps, the site's bytes) come first for the whole table: an error
    // of a later step is held until every site has passed them.
    let mut sites = Sites::with_capacity(order.len());
    let mut later: Option<TableError> = None;
    let mut k = 0;
    let mut previous: Option<(u64, usize)> = None;
    while k < order.len() {
        let (g, end) = next_group::<I, M, E>(entries, &parsed, &order, k, previous, mem)?;
        previous = Some((g.site.end, order.at(k)));
        k = end;
        if later.is_none() {
            if let Err(e) = planned.site::<I>(&mut sites, &g, caps, None) {
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

/// What the entries' checks found, for planning the sites one by one.
struct Planned<'p, E: ?Sized> {
    entries: &'p E,
    arena: &'p [u8],
    shapes: &'p [Shape],
}

impl<E: EntryList + ?Sized> Planned<'_, E> {
    /// Plans one site into `sites`: the return-address rule, the decision and its bytes; or,
    /// for a site `like` the one planned before (see [`Last::is_like`]), the rule's and the
    /// decision's outcome taken from it, and its bytes too where they are the replacement's.
    fn site<I: Isa>(
        &self,
        sites: &mut Sites,
        g: &Group,
        caps: &CapabilitySet,
        like: Option<&Last>,
    ) -> Result<Decided, TableError> {
        let returns = match like {
            Some(l) => l.decided.returns,
            None => check_returns::<I, E>(self, g)?,
        };
        let first = g.entries[0].0;
        let choice = match like {
            Some(l) => l.choice_for(self.entries, first),
            None => decide(
                self.entries,
                g.entries
                    .iter()
                    .map(|&(i, p)| p.candidate(i, &self.entries.get(i), caps)),
            ),
        };
        let new = match (like, choice) {
            (Some(l), Choice::Inline { .. }) => l.decided.new.clone(),
            _ => encode::<I, E>(self, g, choice, returns)?,
        };
        let entries = g.entries.iter().copied();
        self.push(
            sites,
            g.site.start,
            first,
            entries,
            &g.original,
            &new,
            choice,
            caps,
        )?;
        Ok(Decided {
            returns,
            chosen: g.entries.iter().position(|e| Some(e.0) == choice.entry()),
            new,
        })
    }

    /// Plans the site whose entries start at table index `i` from `last`, the site planned
    /// before, when its entries are `last`'s [keys](Last::keys) one for one (so each checks as
    /// `last`'s did: it is not checked again) and its code is alike ([`Last::is_like`]): then
    /// only what depends on where the site is is checked (that it lies in the text, after the
    /// site before; that its direct calls reach) and worked out (a direct call, the default's
    /// bytes). Returns where the next site's entries start and this site's range; `None`, with
    /// nothing pushed, when the site is not planned so (then it is planned on its own, which
    /// finds what is wrong if anything is).
    #[allow(clippy::too_many_arguments)]
    fn like_site<I: Isa, M: Memory>(
        &self,
        sites: &mut Sites,
        i: usize,
        last: &Last,
        layout: &Layout<'_>,
        caps: &CapabilitySet,
        mem: &M,
        previous: &Option<Range<u64>>,
    ) -> Option<(usize, Range<u64>)> {
        let keys: &[EntryKey] = last.keys.as_deref()?;
        let entries = self.entries;
        let (n, count) = (entries.len(), keys.len());
        if count == 0 || n - i < count {
            return None;
        }
        let head = entries.get(i);
        let start = head.entry.site_addr(head.addr);
        for (k, key) in keys.iter().enumerate() {
            let t = if k == 0 { head } else { entries.get(i + k) };
            if !key.matches(&t, layout, mem) || t.entry.site_addr(t.addr) != start {
                return None;
            }
        }
        // The site has no more entries than the last one.
        let end = i + count;
        if end < n {
            let next = entries.get(end);
            if !next.is_placeholder() && next.entry.site_addr(next.addr) == start {
                return None;
            }
        }
        let len = keys[0].site_len;
        let site = start..start.checked_add(u64::from(len))?;
        if !layout.in_text(&site) || previous.as_ref().is_some_and(|p| p.end > site.start) {
            return None;
        }
        // Sites longer than this are planned on their own (none the macros emit is).
        let mut buf = [0u8; 32];
        let original = buf.get_mut(..usize::from(len))?;
        mem.read(start, original).ok()?;
        let original = &*original;
        if last.original.len() != original.len() || !I::alike(&last.original, original) {
            return None;
        }
        for key in keys {
            if key.is_call() {
                // Within reach of the site's start, as `check_entry` checks.
                I::call(start, key.target).ok()?;
            }
        }
        let choice = last.choice_for(entries, i);
        let group = last.entries.iter().enumerate().map(|(k, e)| (i + k, e.1));
        let encoded;
        let new: &[u8] = match choice {
            Choice::Inline { .. } => &last.decided.new,
            _ => {
                let g = Group {
                    site: site.clone(),
                    entries: group.clone().collect(),
                    original: original.into(),
                    shape: last.shape,
                };
                encoded = encode::<I, E>(self, &g, choice, last.decided.returns).ok()?;
                &encoded
            }
        };
        if sites.is_in_place() {
            // As `push` does, without the error it would make (this site is planned on its own
            // if it cannot be pushed).
            sites.push_in_place(i..end, original, new).ok()?;
        } else {
            self.push(sites, start, i, group, original, new, choice, caps)
                .ok()?;
        }
        #[cfg(test)]
        LIKE_SITES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Some((end, site))
    }

    /// Adds a planned site to `sites`: at `start`, its entries (table index and what each
    /// one's check found; the first at index `first`), its bytes before and after, the
    /// choice.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        sites: &mut Sites,
        start: u64,
        first: usize,
        group: impl ExactSizeIterator<Item = (usize, Parsed)>,
        original: &[u8],
        new: &[u8],
        choice: Choice,
        caps: &CapabilitySet,
    ) -> Result<(), TableError> {
        let pushed = if sites.is_in_place() {
            // Only the bytes are kept: the entries follow one another in the table.
            let entries = first..first + group.len();
            sites.push_in_place(entries, original, new)
        } else {
            let candidates = group.map(|(i, p)| {
                let t = self.entries.get(i);
                (p.candidate(i, &t, caps), t.addr)
            });
            sites.push(start, original, new, candidates, choice)
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

/// What a valid entry would put at its site, in 8 bytes: its capability and condition are not
/// kept, they are read from the entry again.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
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

/// A site's entries in table order (the first carries the site's default): each one's table
/// index and what its check found. Two inline, more on the heap.
type GroupEntries = crate::bytes::SmallVec<(usize, Parsed), 2>;

/// The entries of one site, and the site's bytes.
struct Group {
    site: Range<u64>,
    entries: GroupEntries,
    original: SiteBytes,
    shape: Shape,
}

/// The group of `entries` for `site`, with the site's bytes read and checked to be whole
/// instructions; errors name `first`, the site's first entry.
fn read_site<I: Isa, M: Memory>(
    site: Range<u64>,
    entries: GroupEntries,
    first: &TableEntry,
    mem: &M,
) -> Result<Group, TableError> {
    let index = entries[0].0;
    let mut original = SiteBytes::filled(0, site.end.saturating_sub(site.start) as usize);
    mem.read(site.start, &mut original)
        .map_err(|e| error(index, first, TableErrorKind::Unreadable(e)))?;
    let shape = I::shape(site.start, &original)
        .map_err(|e| error(index, first, TableErrorKind::Site(e)))?;
    Ok(Group {
        site,
        entries,
        original,
        shape,
    })
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
/// first entry); and where in the order the next site's entries begin.
fn next_group<I: Isa, M: Memory, E: EntryList + ?Sized>(
    entries: &E,
    parsed: &[Parsed],
    order: &Order,
    k: usize,
    previous: Option<(u64, usize)>,
    mem: &M,
) -> Result<(Group, usize), TableError> {
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
    let mut group: GroupEntries = [(i, parsed[i])][..].into();
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
        group.push((j, parsed[j]));
        end += 1;
    }
    Ok((read_site::<I, M>(site, group, t, mem)?, end))
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
    let entries = p.entries;
    let call_end = call_end::<I>(g);
    let call_start = call_end - usize::from(I::CALL_LEN);
    let mut returns = g.shape.returns;
    for (_, parsed) in &g.entries {
        match parsed.variant() {
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
        let first = g.entries[0].0;
        if !g.shape.boundaries.contains(r) {
            let kind = TableErrorKind::ReturnInsideInstruction {
                offset,
                in_default: true,
            };
            return Err(error(first, &entries.get(first), kind));
        }
        for &(i, parsed) in &g.entries {
            let straddles = match parsed.variant() {
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
            let parsed = g.entries.iter().find(|e| e.0 == entry).map(|e| e.1);
            let Some(Variant::Inline { at, .. }) = parsed.map(Parsed::variant) else {
                unreachable!("an inline choice is one of the site's inline entries")
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
    use crate::capability::{Errata, Features};

    /// Text at `TEXT` (0x800 bytes), the replacement section right after it (0x100).
    struct Image(Vec<u8>);

    const TEXT: u64 = 0x9000_0000;
    const REPL: u64 = TEXT + 0x800;

    impl Memory for Image {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let at = addr.checked_sub(TEXT).ok_or(MemoryError { addr })? as usize;
            let src = self.0.get(at..at + buf.len()).ok_or(MemoryError { addr })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    /// An all-zero entry.
    const PLACEHOLDER: AltEntry = AltEntry {
        site: 0,
        replacement: 0,
        key: 0,
        site_len: 0,
        replacement_len: 0,
    };

    /// An image read as if it lay `by` bytes further on.
    struct Shifted<'a>(&'a Image, u64);

    impl Memory for Shifted<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            self.0.read(addr.wrapping_sub(self.1), buf)
        }
    }

    /// `entries` (at `TEXT - 0x10_0000 + 12 * k`) copied into a table that lives for good, as a
    /// program's own does, pointing where they point moved by as much as the table moved;
    /// and by how much that is.
    fn kept_in_place(entries: &[TableEntry]) -> (&'static [AltEntry], u64) {
        let table: &'static mut [AltEntry] =
            alloc::boxed::Box::leak(vec![PLACEHOLDER; entries.len()].into_boxed_slice());
        let base = table.as_ptr() as usize as u64;
        let by = base.wrapping_sub(TEXT - 0x10_0000);
        for (k, t) in entries.iter().enumerate() {
            if t.is_placeholder() {
                continue;
            }
            let at = base + 12 * k as u64;
            let site = t.entry.site_addr(t.addr).wrapping_add(by);
            let repl = t.entry.replacement_addr(t.addr).wrapping_add(by);
            table[k] = AltEntry {
                site: site.wrapping_sub(at) as i32,
                replacement: repl.wrapping_sub(at + 4) as i32,
                ..t.entry
            };
        }
        (table, by)
    }

    /// xorshift64*: fixed seed, the same tables every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
    }

    #[test]
    fn a_table_in_order_plans_in_one_pass_as_in_two_and_any_other_falls_back() {
        // Text: sites of 5-byte calls, of `mov eax, imm32; nop; nop; nop` and of `call; nop;
        // nop; nop` (8 bytes), each 16 bytes apart; replacements: popcnt rax, rdi (moves
        // unchanged), lea rax, [rip + x] (must be relocated), mov eax, 2; after them, calls
        // again (where no site may be). A second text range, `FAR`, is a call target that
        // only the first 17 sites reach.
        let mut image = vec![0xcc; 0x900];
        for at in (0x800..0x8c0).step_by(16) {
            image[at..at + 5].copy_from_slice(&[0xe8, 1, 2, 3, 4]);
        }
        const FAR: u64 = TEXT - 0x8000_0000 + 0x45;
        for k in 0..0x80usize {
            let at = 16 * k;
            // Calls to different places: alike, not equal. Sites of 8 bytes: a mov, or a
            // call that returns inside the site (a replacement must keep that boundary).
            // Sites of 8 bytes that call at their end instead, whose direct calls go there.
            // Sites of 5 bytes that hold a call at 3 too, where a site overlapping them may
            // begin.
            let call = [0xe8, k as u8, 0, 0, 0];
            let padded = [0xe8, k as u8, 0, 0, 0, 0x90, 0x90, 0x90];
            let late = [0x90, 0x90, 0x90, 0xe8, k as u8, 0, 0, 0];
            let twice = [0xe8, k as u8, 0, 0xe8, 0, 0, 0, 0];
            let site: &[u8] = match k % 12 {
                0 | 6 => &[0xb8, 1, 0, 0, 0, 0x90, 0x90, 0x90],
                3 => &padded,
                9 => &late,
                5 | 11 => &twice,
                _ => &call,
            };
            image[at..at + site.len()].copy_from_slice(site);
        }
        let repl: [(&[u8], u64); 3] = [
            (&[0xf3, 0x48, 0x0f, 0xb8, 0xc7], 0xc0),
            (&[0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00], 0xd0),
            (&[0xb8, 2, 0, 0, 0], 0xe0),
        ];
        // A second copy of the popcnt (as each site of a function has its own).
        let popcnt_copy = REPL + 0xf0;
        for (code, off) in repl {
            let at = (REPL - TEXT + off) as usize;
            image[at..at + code.len()].copy_from_slice(code);
        }
        // And one in the text, between two sites, where no replacement may be.
        let popcnt_in_text = TEXT + 0x18;
        for copy in [popcnt_copy, popcnt_in_text] {
            let at = (copy - TEXT) as usize;
            image[at..at + 5].copy_from_slice(repl[0].0);
        }
        let mem = Image(image);
        let text = [TEXT..REPL, FAR..FAR + 0x10];
        let layout = Layout {
            text: &text,
            replacements: REPL..REPL + 0x100,
        };
        let caps = CapabilitySet::new(Features::POPCNT | Features::SSE3, Errata::empty());
        let keys = [
            Capability::feature(Features::POPCNT).unwrap().id(),
            Capability::feature(Features::AVX2).unwrap().id(),
            Capability::feature(Features::SSE3).unwrap().id(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut one_pass, mut fell_back, mut refused, mut in_place) = (0, 0, 0, 0);
        let like_before = LIKE_SITES.load(core::sync::atomic::Ordering::Relaxed);
        for round in 0..5000 {
            let mut entries = Vec::new();
            let sites = 1 + rng.below(10);
            // Now and then sites that run past the end of the text.
            let mut k = match rng.below(8) {
                0 => 0x7a + rng.below(4),
                _ => rng.below(4),
            };
            // The last site's entries (capability, flags, target, replacement length, site
            // length) and whether it was long: half the sites of its length repeat them (a
            // program's many calls of one function), which the planner plans from the site
            // before.
            type Params = Vec<(u16, AltFlags, u64, u8, u8)>;
            let mut prev: (Params, bool) = (Vec::new(), false);
            for _ in 0..sites {
                let site = TEXT + 16 * k;
                let long = k.is_multiple_of(3);
                let repeat = prev.1 == long && !prev.0.is_empty() && rng.below(2) == 0;
                // Repeated: now and then with an entry more, or one less.
                let change = rng.below(8);
                let fresh = |rng: &mut Rng, k: u64| {
                    let cap = keys[rng.below(3) as usize];
                    let mut flags = AltFlags::empty();
                    if rng.below(4) == 0 {
                        flags |= AltFlags::NOT;
                    }
                    let (target, len) = match rng.below(4) {
                        0 => {
                            flags |= AltFlags::DIRECT_CALL;
                            // A target only the first sites reach, for the first sites.
                            match rng.below(4) {
                                0 if k < 4 => (FAR, 0),
                                _ => (TEXT + 16 * rng.below(0x80), 0),
                            }
                        }
                        // The 7-byte lea only where it fits.
                        n => {
                            let n = if long { n } else { 1 + 2 * (n % 2) };
                            let (code, off) = repl[n as usize - 1];
                            (REPL + off, code.len() as u8)
                        }
                    };
                    (cap, flags, target, len)
                };
                let params: Vec<_> = if repeat {
                    let mut params = prev.0.clone();
                    match change {
                        0 => {
                            let (cap, flags, target, len) = fresh(&mut rng, k);
                            params.push((cap, flags, target, len, params[0].4));
                        }
                        1 if params.len() > 1 => {
                            params.pop();
                        }
                        _ => {}
                    }
                    // Now and then a 5-byte replacement elsewhere: the same bytes (a copy of
                    // the popcnt), or others as long.
                    // A direct call elsewhere: in the text, or not.
                    for p in &mut params {
                        p.2 = match (p.3, p.1.contains(AltFlags::DIRECT_CALL), rng.below(16)) {
                            (5, false, 0 | 1) => popcnt_copy,
                            (5, false, 2) => popcnt_in_text,
                            (5, false, 3 | 4) => REPL + repl[0].1,
                            (5, false, 5 | 6) => REPL + repl[2].1,
                            (_, true, 0 | 1) => TEXT + 16 * rng.below(0x80),
                            (_, true, 2) => REPL + 0x40,
                            _ => p.2,
                        };
                    }
                    params
                } else {
                    (0..1 + rng.below(3))
                        .map(|_| {
                            let (cap, flags, target, len) = fresh(&mut rng, k);
                            (cap, flags, target, len, if long { 8 } else { 5 })
                        })
                        .collect()
                };
                prev = (params.clone(), long);
                for (cap, flags, target, len, site_len) in params {
                    let addr = TEXT - 0x10_0000 + 12 * entries.len() as u64;
                    // Now and then a wrong entry: a site too short for its replacement, or
                    // a site length that is not the site's.
                    let site_len = match rng.below(100) {
                        0 => 3,
                        1 => 6,
                        _ => site_len,
                    };
                    let entry = AltEntry {
                        site: site.wrapping_sub(addr) as i32,
                        replacement: target.wrapping_sub(addr + 4) as i32,
                        key: AltEntry::make_key(cap, flags),
                        site_len,
                        replacement_len: len,
                    };
                    entries.push(TableEntry { addr, entry });
                }
                k += 1 + rng.below(6);
            }
            // Now and then a site that begins inside the last one.
            if rng.below(10) == 0 {
                let last = entries[entries.len() - 1];
                let addr = TEXT - 0x10_0000 + 12 * entries.len() as u64;
                let mut entry = last.entry;
                let site = last.entry.site_addr(last.addr) + 3;
                entry.site = site.wrapping_sub(addr) as i32;
                entry.replacement = last
                    .entry
                    .replacement_addr(last.addr)
                    .wrapping_sub(addr + 4) as i32;
                entries.push(TableEntry { addr, entry });
            }
            // Now and then out of order, or with a placeholder between entries.
            match rng.below(8) {
                0 => entries.reverse(),
                1 => {
                    let at = rng.below(entries.len() as u64 + 1) as usize;
                    let addr = TEXT - 0x20_0000;
                    entries.insert(
                        at,
                        TableEntry {
                            addr,
                            entry: PLACEHOLDER,
                        },
                    );
                }
                _ => {}
            }
            // The same table kept in place, as a program's own is planned at load.
            {
                let (table, by) = kept_in_place(&entries);
                let moved = |r: &Range<u64>| r.start.wrapping_add(by)..r.end.wrapping_add(by);
                let text: Vec<Range<u64>> = text.iter().map(moved).collect();
                let layout = Layout {
                    text: &text,
                    replacements: moved(&layout.replacements),
                };
                let mem = Shifted(&mem, by);
                let mut work = Work::new(table.len());
                let fast = plan_in_order::<X86_64, _, _>(
                    &InMemory(table),
                    Some(table),
                    &layout,
                    &caps,
                    &mem,
                    &mut work,
                );
                let slow =
                    plan_in_two_passes::<X86_64, _, _>(&InMemory(table), &layout, &caps, &mem);
                match (fast, slow) {
                    (Some(fast), Ok(slow)) => {
                        assert!(fast.sites.is_in_place() || fast.sites.is_empty());
                        assert_eq!(fast, slow, "kept in place, round {round}");
                        in_place += 1;
                    }
                    (Some(fast), Err(e)) => {
                        panic!("round {round}, kept in place: {fast:?} in one pass, {e}")
                    }
                    _ => {}
                }
            }
            let entries = &entries[..];
            let mut work = Work::new(entries.len());
            let fast =
                plan_in_order::<X86_64, _, _>(entries, None, &layout, &caps, &mem, &mut work);
            let slow = plan_in_two_passes::<X86_64, _, _>(entries, &layout, &caps, &mem);
            match (fast, slow) {
                (Some(fast), Ok(slow)) => {
                    assert_eq!(fast, slow, "round {round}");
                    one_pass += 1;
                }
                (Some(fast), Err(e)) => panic!("round {round}: {fast:?} in one pass, {e}"),
                (None, Ok(_)) => fell_back += 1,
                (None, Err(_)) => refused += 1,
            }
        }
        let like = LIKE_SITES.load(core::sync::atomic::Ordering::Relaxed) - like_before;
        assert!(
            one_pass > 1000 && in_place > 1000 && fell_back > 100 && refused > 100 && like > 2000,
            "{one_pass} planned in one pass ({in_place} kept in place; {like} sites from the \
             one before), {fell_back} fell back, {refused} refused"
        );
    }

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
