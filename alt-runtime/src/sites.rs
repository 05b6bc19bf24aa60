//! Every alternatives site of a plan or a report, kept compactly: a program can have a hundred
//! thousand sites, and each must cost a few bytes, not a few hundred.
//!
//! A plan made from a program's own table (which lies in memory for as long as the program
//! runs: [`crate::driver::Patcher::sections`]) keeps per site only its bytes, what it held and
//! what it holds, one after the other; while every site has as many entries and bytes as the
//! first, not even where they start (10 bytes for a site of a 5-byte call). Its address, its
//! entries and the decision are read from the table again when the site is read: the decision
//! is the planner's rule, the first entry whose condition holds.
//!
//! Sites pushed one by one ([`Sites::push`]: a table given entry by entry, a tool's plan) keep
//! their address, length, decision and where their bytes and entries are in shared lists.
//!
//! Names are not copied: the function's and each variant's are looked up in the program's name
//! tables when a site is read ([`crate::linker::Names`]). Reading a site builds a
//! [`SiteReport`], the same value however the sites are kept and whether it comes from a plan
//! or from the report of the plan carried out.
//!
//! The planner and the driver fill it; everyone else reads it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::bytes::SiteBytes;
use crate::capability::{Capability, CapabilitySet};
use crate::linker::Names;
use crate::table::{AltEntry, AltFlags, ALT_ENTRY_SIZE};

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
    /// A direct call to `target` (entry `entry`), NOP-filled.
    DirectCall {
        /// Index of the chosen entry.
        entry: usize,
        /// The call target.
        target: u64,
    },
}

impl Choice {
    /// The index of the entry this choice applies, if it applies one.
    pub fn entry(&self) -> Option<usize> {
        match *self {
            Choice::Inline { entry } | Choice::DirectCall { entry, .. } => Some(entry),
            Choice::Default => None,
        }
    }

    /// The candidate this choice applies, among a site's candidates.
    pub fn chosen_in<'a>(&self, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
        let entry = self.entry()?;
        candidates.iter().find(|c| c.entry == entry)
    }
}

/// A site's entries, in priority (table) order: two inline, more on the heap.
pub type Candidates = crate::bytes::SmallVec<Candidate, 2>;

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
    /// The name of its variant, where the table names it (attached by the driver).
    pub name: Option<&'static str>,
}

impl Default for Candidate {
    /// A placeholder (unused slots of [`Candidates`]).
    fn default() -> Self {
        const FIRST: Capability = match Capability::from_id(0) {
            Some(c) => c,
            None => panic!("capability id 0 exists"),
        };
        Candidate {
            entry: 0,
            capability: FIRST,
            negated: false,
            direct_call: false,
            held: false,
            name: None,
        }
    }
}

impl Candidate {
    /// Whether the candidate's capability was present (as opposed to whether it held).
    pub fn capability_present(&self) -> bool {
        self.held != self.negated
    }
}

/// What was done at one alternatives site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteReport {
    /// Address of the site.
    pub addr: u64,
    /// Name of the function the site belongs to, where the table names it.
    pub function: Option<&'static str>,
    /// The decision.
    pub choice: Choice,
    /// Every entry considered, in priority order, with whether it held.
    pub candidates: Candidates,
    /// The bytes before.
    pub before: SiteBytes,
    /// The bytes after.
    pub after: SiteBytes,
}

impl SiteReport {
    /// The function name, or `?` where unknown.
    pub fn label(&self) -> &str {
        self.function.unwrap_or("?")
    }

    /// Whether the site's bytes changed.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }

    /// The site's address range.
    pub fn range(&self) -> core::ops::Range<u64> {
        self.addr..self.addr + self.before.len() as u64
    }

    /// The capability the decision turned on: the chosen entry's, or, for the default, the
    /// first candidate's.
    pub fn capability(&self) -> Option<Capability> {
        match self.chosen() {
            Some(c) => Some(c.capability),
            None => self.candidates.first().map(|c| c.capability),
        }
    }

    /// The chosen candidate, if any.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.choice.chosen_in(&self.candidates)
    }

    /// Name of the chosen variant: the entry's name where known, `"default"` for the default.
    pub fn variant(&self) -> String {
        match self.chosen() {
            None => String::from("default"),
            Some(c) => match c.name {
                Some(name) => String::from(name),
                None => format!("entry {}", c.entry),
            },
        }
    }

    /// Short name of the decision.
    pub fn decision(&self) -> &'static str {
        match self.choice {
            Choice::Default => "default",
            Choice::Inline { .. } => "inline",
            Choice::DirectCall { .. } => "direct_call",
        }
    }

    /// Why: the chosen entry's condition, or why every entry failed.
    pub fn why(&self) -> String {
        let cond = |c: &Candidate| {
            let state = if c.capability_present() {
                "present"
            } else {
                "absent"
            };
            if c.negated {
                format!("!{} ({state})", c.capability)
            } else {
                format!("{} ({state})", c.capability)
            }
        };
        match self.chosen() {
            Some(c) => format!("{} holds", cond(c)),
            None => {
                let all: Vec<String> = self.candidates.iter().map(cond).collect();
                format!("no entry holds: {}", all.join(", "))
            }
        }
    }
}

/// One site, compactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    addr: u64,
    /// Where its bytes start in [`Sites::bytes`]: `len` bytes before, then `len` after.
    bytes: u32,
    /// Where its entries start in [`Sites::entries`].
    entries: u32,
    /// How many entries it has.
    count: u16,
    len: u8,
    /// 0: the default; `k + 1`: the `k`-th of its entries applies.
    chosen: u16,
}

/// One entry considered for a site, compactly (8 bytes; where it lives is
/// [`Sites::entry_addr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    index: u32,
    capability: Capability,
    flags: u8,
}

const NEGATED: u8 = 1;
const DIRECT_CALL: u8 = 2;
const HELD: u8 = 4;

/// The sites of a plan or a report, sorted by address.
#[derive(Clone, Default)]
pub struct Sites {
    repr: Repr,
    names: Names,
}

/// How the sites are kept.
#[derive(Clone)]
enum Repr {
    /// Each site as it was pushed: its address, entries, choice and bytes.
    Recorded(Recorded),
    /// Planned from a table of this program that lies in memory for good: only the bytes
    /// are kept, everything else is read from the table again ([`InPlace`]).
    InPlace(InPlace),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Recorded(Recorded::default())
    }
}

/// Sites as pushed.
#[derive(Clone, Default)]
struct Recorded {
    slots: Vec<Slot>,
    entries: Vec<Entry>,
    bytes: Vec<u8>,
    /// Direct-call targets, by site index, for the sites that take a direct call.
    targets: Vec<(u32, u64)>,
    /// Where the entries live (their variants' names are looked up by it): while every entry
    /// is where a table of [`ALT_ENTRY_SIZE`]-byte entries at `entry_base` puts it, as a
    /// program's own table has them, `entry_addrs` is empty and each address is computed from
    /// the entry's index; from the first that is not, every entry's address is listed.
    entry_base: Option<u64>,
    entry_addrs: Vec<u64>,
}

/// Sites planned from a `'static` table in address order, whose sites' entries follow one
/// another in it: per site only its bytes (before, then after) are kept, and while every
/// site has as many entries and bytes as the first, not even where they start. A site's
/// address, entries and choice are read from the table again (the choice is the planner's
/// rule: the first entry whose condition holds under `caps`).
#[derive(Clone)]
struct InPlace {
    table: &'static [AltEntry],
    caps: CapabilitySet,
    index: Index,
    bytes: Vec<u8>,
    /// After the last site: the table index of the entry after its entries, and its end.
    last: Option<(usize, u64)>,
}

/// Where each site's entries (table indices) and bytes start.
#[derive(Clone)]
enum Index {
    /// Site `i`'s entries are `first + i * count ..` (`count` of them), its bytes at
    /// `i * 2 * len`.
    Uniform {
        first: u32,
        count: u32,
        len: u8,
        sites: u32,
    },
    /// Site `i`'s first entry and first byte; its entries end where the next site's begin
    /// (the last site's at `end`).
    Listed { starts: Vec<(u32, u32)>, end: u32 },
}

/// A site's change: where, what it holds, what it will hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteChange<'a> {
    /// Address of the site.
    pub addr: u64,
    /// The bytes it holds before the change.
    pub from: &'a [u8],
    /// The bytes it holds after.
    pub to: &'a [u8],
}

impl SiteChange<'_> {
    /// The change that undoes this one.
    pub fn reversed(self) -> Self {
        SiteChange {
            addr: self.addr,
            from: self.to,
            to: self.from,
        }
    }

    /// The site's address range.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr + self.from.len() as u64
    }
}

/// A batch of site changes, in address order, read one at a time: what
/// [`crate::patch::carry_out`] writes. A slice of [`SiteChange`]s is one; so is
/// [`Sites::changed`], which keeps 4 bytes per site instead of the change itself.
pub trait Changes {
    /// How many changes.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th change (`i < len()`).
    fn change(&self, i: usize) -> SiteChange<'_>;

    /// The changes from the `start`-th on, in order: each what [`Changes::change`] gives,
    /// read one after another (for some batches much cheaper than one at a time).
    fn changes_from(&self, start: usize) -> impl Iterator<Item = SiteChange<'_>> + '_ {
        (start..self.len()).map(move |i| self.change(i))
    }
}

impl Changes for [SiteChange<'_>] {
    fn len(&self) -> usize {
        <[SiteChange<'_>]>::len(self)
    }

    fn change(&self, i: usize) -> SiteChange<'_> {
        self[i]
    }
}

/// The sites of a [`Sites`] whose bytes change, forward (from what each held to what it holds)
/// or back.
#[derive(Clone)]
pub struct Changed<'a> {
    view: View<'a>,
    /// How many sites.
    sites: usize,
    /// The indices of the sites, or none kept when every site changes (a program patched for a
    /// CPU that has what its sites want: nothing is kept per site then).
    which: Option<Vec<u32>>,
    back: bool,
}

impl fmt::Debug for Changed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.len()).map(|i| self.change(i)))
            .finish()
    }
}

impl Changed<'_> {
    /// Keeps only the changes for which `keep` (one flag per change, in order) is true.
    pub fn keep(&mut self, keep: &[bool]) {
        if self.which.is_none() && keep.len() == self.sites && keep.iter().all(|&k| k) {
            // Every site still: nothing is listed.
            return;
        }
        let which = self
            .which
            .get_or_insert_with(|| (0..self.sites as u32).collect());
        keep_flagged(which, keep);
    }
}

impl Changes for Changed<'_> {
    fn len(&self) -> usize {
        match &self.which {
            Some(which) => which.len(),
            None => self.sites,
        }
    }

    #[inline(always)]
    fn change(&self, i: usize) -> SiteChange<'_> {
        let at = match &self.which {
            Some(which) => which[i] as usize,
            None => i,
        };
        let c = self.view.change(at);
        if self.back {
            c.reversed()
        } else {
            c
        }
    }
}

impl<'a> Changed<'a> {
    /// The same batch as [`Alike`], when it is one: every site kept in place, all alike and
    /// all changing. Read with a multiply and no branch, where [`Changed`] asks which kind of
    /// sites it has for every change.
    pub(crate) fn alike(&self) -> Option<Alike<'a>> {
        match (self.view, &self.which) {
            (
                View::Uniform {
                    entries,
                    count,
                    len,
                    bytes,
                },
                None,
            ) => Some(Alike {
                entries,
                count,
                site_len: len,
                bytes,
                sites: self.sites,
                back: self.back,
            }),
            _ => None,
        }
    }
}

/// A batch of every site of a [`Sites`] kept in place whose sites are all alike (as many
/// entries, as many bytes) and all change: [`Changed::alike`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Alike<'a> {
    /// Site `i`'s first entry is `entries[i * count]`, its bytes at `i * 2 * site_len`.
    entries: &'static [AltEntry],
    count: usize,
    site_len: usize,
    bytes: &'a [u8],
    sites: usize,
    back: bool,
}

impl Changes for Alike<'_> {
    fn len(&self) -> usize {
        self.sites
    }

    #[inline(always)]
    fn change(&self, i: usize) -> SiteChange<'_> {
        let pair = &self.bytes[i * 2 * self.site_len..][..2 * self.site_len];
        alike_change(
            &self.entries[i * self.count],
            pair,
            self.site_len,
            self.back,
        )
    }

    /// Walks the table and the bytes side by side: no index is multiplied out per change.
    fn changes_from(&self, start: usize) -> impl Iterator<Item = SiteChange<'_>> + '_ {
        let (count, len) = (self.count.max(1), self.site_len);
        AlikeChanges {
            entries: self.entries.get(start * count..).unwrap_or_default(),
            bytes: self.bytes.get(start * 2 * len..).unwrap_or_default(),
            count,
            len,
            left: self.sites.saturating_sub(start),
            back: self.back,
        }
    }
}

/// [`Alike::changes_from`]: what is left of the table and the bytes, from the next site on.
struct AlikeChanges<'a> {
    entries: &'static [AltEntry],
    bytes: &'a [u8],
    count: usize,
    len: usize,
    left: usize,
    back: bool,
}

impl<'a> Iterator for AlikeChanges<'a> {
    type Item = SiteChange<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<SiteChange<'a>> {
        if self.left == 0 || self.bytes.len() < 2 * self.len {
            return None;
        }
        let e = self.entries.first()?;
        let (pair, rest) = self.bytes.split_at(2 * self.len);
        self.bytes = rest;
        self.entries = self.entries.get(self.count..).unwrap_or_default();
        self.left -= 1;
        Some(alike_change(e, pair, self.len, self.back))
    }
}

/// The change of an alike site whose first entry is `e` and whose bytes, before then after
/// (`len` each), are `pair`; `back` the other way.
#[inline(always)]
fn alike_change<'a>(e: &AltEntry, pair: &'a [u8], len: usize, back: bool) -> SiteChange<'a> {
    let addr = e.site_addr(e as *const AltEntry as usize as u64);
    let (before, after) = pair.split_at(len);
    let (from, to) = if back {
        (after, before)
    } else {
        (before, after)
    };
    SiteChange { addr, from, to }
}

/// Where each site's change is read from, worked out once for every site.
#[derive(Clone, Copy)]
enum View<'a> {
    /// Kept in place, every site alike: site `i`'s first entry is `entries[i * count]`, its
    /// bytes at `i * 2 * len`.
    Uniform {
        entries: &'static [AltEntry],
        count: usize,
        len: usize,
        bytes: &'a [u8],
    },
    Recorded(&'a Recorded),
    Listed(&'a InPlace),
}

impl<'a> View<'a> {
    fn of(sites: &'a Sites) -> Self {
        match &sites.repr {
            Repr::Recorded(r) => View::Recorded(r),
            Repr::InPlace(p) => match p.index {
                Index::Uniform {
                    first, count, len, ..
                } => View::Uniform {
                    entries: p.table.get(first as usize..).unwrap_or_default(),
                    count: count as usize,
                    len: usize::from(len),
                    bytes: &p.bytes,
                },
                Index::Listed { .. } => View::Listed(p),
            },
        }
    }

    /// Site `i`'s change (`i` below the number of sites), from what it held to what it holds.
    #[inline(always)]
    fn change(&self, i: usize) -> SiteChange<'a> {
        match *self {
            View::Uniform {
                entries,
                count,
                len,
                bytes,
            } => alike_change(
                &entries[i * count],
                &bytes[i * 2 * len..][..2 * len],
                len,
                false,
            ),
            _ => self.change_listed(i),
        }
    }

    /// [`View::change`] for sites that are not all alike.
    #[inline(never)]
    fn change_listed(&self, i: usize) -> SiteChange<'a> {
        match *self {
            View::Recorded(r) => r.change_of(&r.slots[i]),
            View::Listed(p) => p.change(i),
            View::Uniform { .. } => unreachable!("alike sites are read inline"),
        }
    }
}

/// Keeps the items of `v` whose flag in `keep` (one per item, in order) is true.
pub(crate) fn keep_flagged<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    v.retain(|_| flags.next() == Some(&true));
}

/// Why a site could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SitesError {
    /// The site's bytes before and after differ in length, or are empty or longer than 255.
    Length,
    /// More than 65,535 entries for one site, or more than 4 GiB of bytes or entries.
    TooMany,
    /// The choice names an entry the site does not have, or one of another kind (a direct
    /// call chosen as inline, or the other way round).
    Choice,
    /// The site begins before the end of the site added before it.
    Order,
}

impl fmt::Display for SitesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SitesError::Length => "its bytes before and after are not of one length of 1 to 255",
            SitesError::TooMany => "too many entries or sites",
            SitesError::Choice => {
                "the choice names an entry the site does not have, or one of another kind"
            }
            SitesError::Order => "the site begins inside or before the site before it",
        })
    }
}

impl Sites {
    /// No sites.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `sites` sites with one entry each (a hint; nothing is touched until used).
    pub fn with_capacity(sites: usize) -> Self {
        Sites {
            repr: Repr::Recorded(Recorded {
                slots: Vec::with_capacity(sites),
                entries: Vec::with_capacity(sites),
                ..Recorded::default()
            }),
            names: Names::default(),
        }
    }

    /// Sites that the planner adds from `table`, which lies in memory for good, with
    /// [`Sites::push_in_place`], deciding by `caps`; room for `bytes` bytes (a hint).
    pub(crate) fn in_place(table: &'static [AltEntry], caps: CapabilitySet, bytes: usize) -> Self {
        Sites {
            repr: Repr::InPlace(InPlace {
                table,
                caps,
                index: Index::Uniform {
                    first: 0,
                    count: 0,
                    len: 0,
                    sites: 0,
                },
                bytes: {
                    // A hint from entries not checked yet: never a reason to fail.
                    let mut v = Vec::new();
                    let _ = v.try_reserve(bytes);
                    v
                },
                last: None,
            }),
            names: Names::default(),
        }
    }

    /// Adds a site after the others (sites must come in address order, not overlapping):
    /// `before` and `after` of one length, its entries with the address each lives at
    /// (`Candidate::name` is ignored: names are looked up when read), and the choice.
    pub fn push(
        &mut self,
        addr: u64,
        before: &[u8],
        after: &[u8],
        candidates: impl IntoIterator<Item = (Candidate, u64)>,
        choice: Choice,
    ) -> Result<(), SitesError> {
        if let Repr::InPlace(_) = self.repr {
            // Read from a table no longer: every site so far as pushed, from now on.
            let mut r = Recorded::default();
            for i in 0..self.len() {
                if let Some(s) = self.get(i) {
                    let addrs = self.entries_in_place(i);
                    let candidates = s.candidates.iter().copied().zip(addrs);
                    r.push(s.addr, &s.before, &s.after, candidates, s.choice)?;
                }
            }
            self.repr = Repr::Recorded(r);
        }
        match &mut self.repr {
            Repr::Recorded(r) => r.push(addr, before, after, candidates, choice),
            Repr::InPlace(_) => unreachable!("recorded above"),
        }
    }

    /// Where site `i`'s entries live, for sites kept in place.
    fn entries_in_place(&self, i: usize) -> impl Iterator<Item = u64> + '_ {
        let place = match &self.repr {
            Repr::InPlace(p) => Some(p),
            Repr::Recorded(_) => None,
        };
        place
            .into_iter()
            .flat_map(move |p| p.entries(i).map(move |k| p.entry_addr(k)))
    }

    /// Adds a site planned from the table given to [`Sites::in_place`]: its entries are the
    /// table's `entries` (following the previous site's), its bytes `before` and `after`.
    pub(crate) fn push_in_place(
        &mut self,
        entries: Range<usize>,
        before: &[u8],
        after: &[u8],
    ) -> Result<(), SitesError> {
        match &mut self.repr {
            Repr::InPlace(p) => p.push(entries, before, after),
            Repr::Recorded(_) => Err(SitesError::Order),
        }
    }

    /// Whether the sites are read from a table in place ([`Sites::in_place`]).
    pub(crate) fn is_in_place(&self) -> bool {
        matches!(self.repr, Repr::InPlace(_))
    }

    /// Looks the sites' names up in `names` from now on.
    pub fn set_names(&mut self, names: Names) {
        self.names = names;
    }

    /// How many sites.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Recorded(r) => r.slots.len(),
            Repr::InPlace(p) => p.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th site, if there is one.
    pub fn get(&self, i: usize) -> Option<SiteReport> {
        match &self.repr {
            Repr::Recorded(r) => r.get(i, &self.names),
            Repr::InPlace(p) => p.get(i, &self.names),
        }
    }

    /// The `i`-th site.
    ///
    /// # Panics
    ///
    /// If there are not more than `i` sites.
    pub fn at(&self, i: usize) -> SiteReport {
        match self.get(i) {
            Some(s) => s,
            None => panic!("site {i} of {}", self.len()),
        }
    }

    /// The first site.
    pub fn first(&self) -> Option<SiteReport> {
        self.get(0)
    }

    /// The last site.
    pub fn last(&self) -> Option<SiteReport> {
        self.get(self.len().checked_sub(1)?)
    }

    /// Every site, in address order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            sites: self,
            range: 0..self.len(),
        }
    }

    /// The index of the site at `addr`.
    pub fn position(&self, addr: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.change_at(mid).addr.cmp(&addr) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Every site's address range.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = Range<u64>> + '_ {
        let view = View::of(self);
        (0..self.len()).map(move |i| view.change(i).range())
    }

    /// Every site whose bytes change, from what it held to what it holds, without building
    /// the sites.
    pub fn changes(&self) -> impl Iterator<Item = SiteChange<'_>> + '_ {
        let view = View::of(self);
        (0..self.len())
            .map(move |i| view.change(i))
            .filter(|c| c.from != c.to)
    }

    /// Site `i`'s change (`i < len()`), from what it held to what it holds.
    #[inline]
    fn change_at(&self, i: usize) -> SiteChange<'_> {
        View::of(self).change(i)
    }

    /// The sites whose bytes change, as a batch: forward, or `back` from what each holds to
    /// what it held.
    pub fn changed(&self, back: bool) -> Changed<'_> {
        let view = View::of(self);
        let changes = |i: usize| {
            let c = view.change(i);
            !crate::short::same(c.from, c.to)
        };
        // Listed only if some site keeps its bytes (`push` keeps the indices within 32 bits).
        let which = (!(0..self.len()).all(changes)).then(|| {
            (0..self.len())
                .filter(|&i| changes(i))
                .map(|i| i as u32)
                .collect()
        });
        Changed {
            view,
            sites: self.len(),
            which,
            back,
        }
    }

    /// Every capability some site's entry is keyed by, each once per entry.
    pub fn capabilities(&self) -> impl Iterator<Item = Capability> + '_ {
        let (recorded, in_place) = match &self.repr {
            Repr::Recorded(r) => (Some(r.entries.iter().map(|e| e.capability)), None),
            Repr::InPlace(p) => (None, Some(p.capabilities())),
        };
        recorded
            .into_iter()
            .flatten()
            .chain(in_place.into_iter().flatten())
    }
}

impl Recorded {
    fn push(
        &mut self,
        addr: u64,
        before: &[u8],
        after: &[u8],
        candidates: impl IntoIterator<Item = (Candidate, u64)>,
        choice: Choice,
    ) -> Result<(), SitesError> {
        let len = before.len();
        if len != after.len() || len == 0 || len > usize::from(u8::MAX) {
            return Err(SitesError::Length);
        }
        let bytes = u32::try_from(self.bytes.len()).map_err(|_| SitesError::TooMany)?;
        let start = u32::try_from(self.entries.len()).map_err(|_| SitesError::TooMany)?;
        let index = u32::try_from(self.slots.len()).map_err(|_| SitesError::TooMany)?;
        let undo = |s: &mut Self| {
            s.entries.truncate(start as usize);
            s.entry_addrs.truncate(start as usize);
            if s.entries.is_empty() {
                // The base came from a refused entry: the next one sets it again.
                s.entry_base = None;
            }
        };
        if self
            .slots
            .last()
            .is_some_and(|l| l.addr + u64::from(l.len) > addr)
        {
            return Err(SitesError::Order);
        }
        let mut chosen = 0u16;
        for (k, (c, entry_addr)) in candidates.into_iter().enumerate() {
            let (Ok(i), true) = (u32::try_from(c.entry), k < usize::from(u16::MAX)) else {
                undo(self);
                return Err(SitesError::TooMany);
            };
            if Some(c.entry) == choice.entry() && chosen == 0 {
                // The choice's kind must be the entry's: a report read back says what was done.
                if c.direct_call != matches!(choice, Choice::DirectCall { .. }) {
                    undo(self);
                    return Err(SitesError::Choice);
                }
                // k < u16::MAX, checked above.
                chosen = k as u16 + 1;
            }
            let flags = (c.negated as u8 * NEGATED)
                | (c.direct_call as u8 * DIRECT_CALL)
                | (c.held as u8 * HELD);
            self.note_entry_addr(i, entry_addr);
            self.entries.push(Entry {
                index: i,
                capability: c.capability,
                flags,
            });
        }
        let count = self.entries.len() - start as usize;
        if choice.entry().is_some() && chosen == 0 {
            undo(self);
            return Err(SitesError::Choice);
        }
        crate::short::extend(&mut self.bytes, before);
        crate::short::extend(&mut self.bytes, after);
        if let Choice::DirectCall { target, .. } = choice {
            self.targets.push((index, target));
        }
        self.slots.push(Slot {
            addr,
            bytes,
            entries: start,
            count: count as u16,
            len: len as u8,
            chosen,
        });
        Ok(())
    }

    /// Notes where the entry with table index `index`, about to be added, lives.
    #[inline]
    fn note_entry_addr(&mut self, index: u32, addr: u64) {
        let at = u64::from(index).wrapping_mul(ALT_ENTRY_SIZE as u64);
        if self.entry_addrs.is_empty() {
            let base = *self.entry_base.get_or_insert(addr.wrapping_sub(at));
            if base.wrapping_add(at) == addr {
                return;
            }
            // The first entry elsewhere: every entry's address is listed from now on.
            self.entry_addrs = self
                .entries
                .iter()
                .map(|e| base.wrapping_add(u64::from(e.index) * ALT_ENTRY_SIZE as u64))
                .collect();
        }
        self.entry_addrs.push(addr);
    }

    /// Where the `k`-th entry (of all sites' entries) lives.
    fn entry_addr(&self, k: usize) -> u64 {
        match self.entry_addrs.get(k) {
            Some(&addr) => addr,
            None => {
                let index = u64::from(self.entries[k].index);
                let base = self.entry_base.unwrap_or(0);
                base.wrapping_add(index * ALT_ENTRY_SIZE as u64)
            }
        }
    }

    fn entries_of(&self, s: &Slot) -> &[Entry] {
        let at = s.entries as usize;
        &self.entries[at..at + usize::from(s.count)]
    }

    fn choice_of(&self, i: usize, s: &Slot) -> Choice {
        let Some(k) = usize::from(s.chosen).checked_sub(1) else {
            return Choice::Default;
        };
        let e = &self.entries_of(s)[k];
        let entry = e.index as usize;
        if e.flags & DIRECT_CALL == 0 {
            return Choice::Inline { entry };
        }
        let at = self.targets.partition_point(|t| (t.0 as usize) < i);
        // Every direct-call choice pushed its target (`push` checks the kinds agree).
        let target = self
            .targets
            .get(at)
            .filter(|t| t.0 as usize == i)
            .map_or(0, |t| t.1);
        Choice::DirectCall { entry, target }
    }

    fn get(&self, i: usize, names: &Names) -> Option<SiteReport> {
        let s = self.slots.get(i)?;
        let first = s.entries as usize;
        let candidates: Candidates = self
            .entries_of(s)
            .iter()
            .enumerate()
            .map(|(k, e)| Candidate {
                entry: e.index as usize,
                capability: e.capability,
                negated: e.flags & NEGATED != 0,
                direct_call: e.flags & DIRECT_CALL != 0,
                held: e.flags & HELD != 0,
                name: names.entry(self.entry_addr(first + k)),
            })
            .collect();
        let c = self.change_of(s);
        Some(SiteReport {
            addr: s.addr,
            function: names.site(s.addr),
            choice: self.choice_of(i, s),
            candidates,
            before: c.from.into(),
            after: c.to.into(),
        })
    }

    /// A site's change, from what it held to what it holds.
    #[inline]
    fn change_of(&self, s: &Slot) -> SiteChange<'_> {
        // One slice of both: before, then after.
        let (at, len) = (s.bytes as usize, usize::from(s.len));
        let (from, to) = self.bytes[at..at + 2 * len].split_at(len);
        SiteChange {
            addr: s.addr,
            from,
            to,
        }
    }
}

impl InPlace {
    fn len(&self) -> usize {
        match &self.index {
            Index::Uniform { sites, .. } => *sites as usize,
            Index::Listed { starts, .. } => starts.len(),
        }
    }

    /// Site `i`'s entries (table indices; `i < len()`).
    #[inline]
    fn entries(&self, i: usize) -> Range<usize> {
        match &self.index {
            Index::Uniform { first, count, .. } => {
                let start = *first as usize + i * *count as usize;
                start..start + *count as usize
            }
            Index::Listed { starts, end } => {
                let next = starts.get(i + 1).map_or(*end, |s| s.0);
                starts[i].0 as usize..next as usize
            }
        }
    }

    /// Where site `i`'s bytes are (before, then after), and its length.
    #[inline]
    fn bytes_of(&self, i: usize) -> (usize, usize) {
        match &self.index {
            Index::Uniform { len, .. } => (i * 2 * usize::from(*len), usize::from(*len)),
            Index::Listed { starts, .. } => {
                let at = starts[i].1 as usize;
                let next = starts.get(i + 1).map_or(self.bytes.len(), |s| s.1 as usize);
                (at, (next - at) / 2)
            }
        }
    }

    fn entry_addr(&self, k: usize) -> u64 {
        &self.table[k] as *const AltEntry as usize as u64
    }

    #[inline]
    fn change(&self, i: usize) -> SiteChange<'_> {
        let k = self.entries(i).start;
        let addr = self.table[k].site_addr(self.entry_addr(k));
        let (at, len) = self.bytes_of(i);
        let (from, to) = self.bytes[at..at + 2 * len].split_at(len);
        SiteChange { addr, from, to }
    }

    /// The entry at table index `k` as a candidate: its condition under `caps`.
    fn candidate(&self, k: usize, names: &Names) -> Candidate {
        let e = &self.table[k];
        // The planner checked every entry of a site: its capability is known.
        let capability =
            Capability::from_id(e.capability_id()).unwrap_or(Candidate::default().capability);
        let negated = e.flags().contains(AltFlags::NOT);
        Candidate {
            entry: k,
            capability,
            negated,
            direct_call: e.flags().contains(AltFlags::DIRECT_CALL),
            held: self.caps.has(capability) != negated,
            name: names.entry(self.entry_addr(k)),
        }
    }

    fn get(&self, i: usize, names: &Names) -> Option<SiteReport> {
        if i >= self.len() {
            return None;
        }
        let candidates: Candidates = self.entries(i).map(|k| self.candidate(k, names)).collect();
        // The planner's rule: the first entry that holds.
        let choice = match candidates.iter().find(|c| c.held) {
            None => Choice::Default,
            Some(c) if c.direct_call => Choice::DirectCall {
                entry: c.entry,
                target: self.table[c.entry].replacement_addr(self.entry_addr(c.entry)),
            },
            Some(c) => Choice::Inline { entry: c.entry },
        };
        let c = self.change(i);
        Some(SiteReport {
            addr: c.addr,
            function: names.site(c.addr),
            choice,
            candidates,
            before: c.from.into(),
            after: c.to.into(),
        })
    }

    fn push(
        &mut self,
        entries: Range<usize>,
        before: &[u8],
        after: &[u8],
    ) -> Result<(), SitesError> {
        let len = before.len();
        if let (Index::Uniform { count, len: l, .. }, Some((next, end))) = (&self.index, self.last)
        {
            // A site like those before it, whose entries follow theirs.
            let like = entries.start == next
                && entries.len() == *count as usize
                && len == usize::from(*l)
                && after.len() == len;
            if like && self.push_alike(entries.clone(), end, before, after) {
                return Ok(());
            }
        }
        if len != after.len() || len == 0 || len > usize::from(u8::MAX) {
            return Err(SitesError::Length);
        }
        let start = entries.start;
        if entries.is_empty()
            || entries.end > self.table.len()
            || self.last.is_some_and(|(next, _)| next != start)
        {
            // The site's entries follow the previous site's.
            return Err(SitesError::Order);
        }
        let e = &self.table[start];
        let addr = e.site_addr(e as *const AltEntry as usize as u64);
        if self.last.is_some_and(|(_, end)| end > addr) {
            // The site begins after the one before ends.
            return Err(SitesError::Order);
        }
        if entries.len() > usize::from(u16::MAX) {
            // As many as a recorded site may have.
            return Err(SitesError::TooMany);
        }
        let (Ok(first), Ok(count), Ok(bytes), Ok(next), Ok(_)) = (
            u32::try_from(start),
            u32::try_from(entries.len()),
            u32::try_from(self.bytes.len()),
            u32::try_from(entries.end),
            u32::try_from(self.bytes.len() + 2 * len),
        ) else {
            return Err(SitesError::TooMany);
        };
        match &mut self.index {
            Index::Uniform {
                first: f,
                count: c,
                len: l,
                sites,
            } => {
                if *sites == 0 {
                    (*f, *c, *l) = (first, count, len as u8);
                }
                if *c == count && usize::from(*l) == len {
                    *sites += 1;
                } else {
                    // The first site unlike the others: every start is listed from now on.
                    let (f, c, l) = (*f, *c, u32::from(*l));
                    let starts = (0..*sites).map(|i| (f + i * c, i * 2 * l)).collect();
                    self.index = Index::Listed { starts, end: next };
                    if let Index::Listed { starts, .. } = &mut self.index {
                        starts.push((first, bytes));
                    }
                }
            }
            Index::Listed { starts, end } => {
                starts.push((first, bytes));
                *end = next;
            }
        }
        crate::short::extend(&mut self.bytes, before);
        crate::short::extend(&mut self.bytes, after);
        self.last = Some((entries.end, addr.saturating_add(len as u64)));
        Ok(())
    }

    /// [`InPlace::push`] for a site as long as the others, with as many entries, following
    /// the last site's (which ends at `end`), while every site is alike: `false`, with nothing
    /// changed, where it is not that (then the general path says why, or lists the sites).
    #[inline]
    fn push_alike(&mut self, entries: Range<usize>, end: u64, before: &[u8], after: &[u8]) -> bool {
        let Index::Uniform { sites, .. } = &mut self.index else {
            return false;
        };
        let Some(e) = self.table.get(entries.start) else {
            return false;
        };
        let addr = e.site_addr(e as *const AltEntry as usize as u64);
        let fits = entries.end <= self.table.len()
            && u32::try_from(entries.end).is_ok()
            && u32::try_from(self.bytes.len() + 2 * before.len()).is_ok();
        if !fits || end > addr {
            return false;
        }
        *sites += 1;
        crate::short::extend(&mut self.bytes, before);
        crate::short::extend(&mut self.bytes, after);
        self.last = Some((entries.end, addr.saturating_add(before.len() as u64)));
        true
    }

    /// Every capability the sites' entries are keyed by, each once per entry.
    fn capabilities(&self) -> impl Iterator<Item = Capability> + '_ {
        let n = self.len();
        let all = match n {
            0 => 0..0,
            _ => self.entries(0).start..self.entries(n - 1).end,
        };
        self.table[all]
            .iter()
            .filter_map(|e| Capability::from_id(e.capability_id()))
    }
}

impl fmt::Debug for Sites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Sites {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Sites {}

/// The sites, one [`SiteReport`] each, in address order.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    sites: &'a Sites,
    range: Range<usize>,
}

impl Iterator for Iter<'_> {
    type Item = SiteReport;

    fn next(&mut self) -> Option<SiteReport> {
        let i = self.range.next()?;
        self.sites.get(i)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }

    fn nth(&mut self, n: usize) -> Option<SiteReport> {
        let i = self.range.nth(n)?;
        self.sites.get(i)
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<SiteReport> {
        let i = self.range.next_back()?;
        self.sites.get(i)
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Sites {
    type Item = SiteReport;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl FromIterator<SiteReport> for Sites {
    /// Sites from their reports (in address order), as a test or a tool builds a plan by hand.
    /// Names are not kept (entry addresses are unknown): [`Sites::set_names`] gives them.
    ///
    /// # Panics
    ///
    /// If a site's bytes before and after differ in length, or its choice names an entry it
    /// does not have.
    fn from_iter<T: IntoIterator<Item = SiteReport>>(iter: T) -> Self {
        let mut sites = Sites::new();
        for s in iter {
            let candidates = s.candidates.iter().map(|c| (*c, 0));
            if let Err(e) = sites.push(s.addr, &s.before, &s.after, candidates, s.choice) {
                panic!("site at {:#x}: {e:?}", s.addr);
            }
        }
        sites
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Features;
    use alloc::vec;

    fn recorded(s: &Sites) -> &Recorded {
        match &s.repr {
            Repr::Recorded(r) => r,
            Repr::InPlace(_) => panic!("sites kept in place"),
        }
    }

    fn cap(f: Features) -> Capability {
        Capability::feature(f).expect("a single feature")
    }

    fn candidate(entry: usize, f: Features, held: bool, direct_call: bool) -> Candidate {
        Candidate {
            entry,
            capability: cap(f),
            negated: false,
            direct_call,
            held,
            name: None,
        }
    }

    #[test]
    fn entry_addresses_are_computed_while_regular_and_listed_from_the_first_that_is_not() {
        let at = |i: usize| 0x9000 + 12 * i as u64;
        let c = |i| candidate(i, Features::POPCNT, false, false);
        let addrs = |s: &Sites| -> Vec<u64> {
            let r = recorded(s);
            (0..r.entries.len()).map(|k| r.entry_addr(k)).collect()
        };
        let mut sites = Sites::new();
        sites
            .push(
                0x100,
                &[1],
                &[1],
                [(c(3), at(3)), (c(4), at(4))],
                Choice::Default,
            )
            .unwrap();
        sites
            .push(0x200, &[1], &[1], [(c(7), at(7))], Choice::Default)
            .unwrap();
        assert!(
            recorded(&sites).entry_addrs.is_empty(),
            "nothing listed while every entry is in place"
        );
        assert_eq!(addrs(&sites), [at(3), at(4), at(7)]);
        // A refused site (out of order) that brought the first irregular entry leaves the
        // others as they were.
        let refused = sites.push(0x150, &[1], &[1], [(c(8), 0x5)], Choice::Default);
        assert_eq!(refused, Err(SitesError::Order));
        assert_eq!(addrs(&sites), [at(3), at(4), at(7)]);
        let wrong = Choice::Inline { entry: 99 };
        let refused = sites.push(0x300, &[1], &[1], [(c(8), 0x5)], wrong);
        assert_eq!(refused, Err(SitesError::Choice));
        assert_eq!(addrs(&sites), [at(3), at(4), at(7)]);
        // An entry elsewhere: from then on every address is listed.
        sites
            .push(
                0x300,
                &[1],
                &[1],
                [(c(8), 0x5), (c(9), at(9))],
                Choice::Default,
            )
            .unwrap();
        assert_eq!(addrs(&sites), [at(3), at(4), at(7), 0x5, at(9)]);
        assert_eq!(recorded(&sites).entry_addrs.len(), 5);

        // A refused first site does not leave its entry's base behind.
        let mut sites = Sites::new();
        let wrong = Choice::Inline { entry: 99 };
        let refused = sites.push(0x100, &[1], &[1], [(c(0), 0x5)], wrong);
        assert_eq!(refused, Err(SitesError::Choice));
        sites
            .push(0x100, &[1], &[1], [(c(3), at(3))], Choice::Default)
            .unwrap();
        sites
            .push(0x200, &[1], &[1], [(c(4), at(4))], Choice::Default)
            .unwrap();
        assert!(
            recorded(&sites).entry_addrs.is_empty(),
            "in place: nothing listed"
        );
        assert_eq!(addrs(&sites), [at(3), at(4)]);
    }

    #[test]
    fn the_changed_sites_are_a_batch_forward_and_back_and_keep_what_is_asked() {
        let c = candidate(0, Features::POPCNT, false, false);
        let site = |s: &mut Sites, addr: u64, after: u8| {
            s.push(addr, &[1, 2], &[1, after], [(c, 0)], Choice::Default)
                .unwrap();
        };
        let list = |b: &Changed<'_>| -> Vec<(u64, Vec<u8>, Vec<u8>)> {
            (0..b.len())
                .map(|i| b.change(i))
                .map(|c| (c.addr, c.from.to_vec(), c.to.to_vec()))
                .collect()
        };
        // Every site changes: nothing listed.
        let mut all = Sites::new();
        site(&mut all, 0x10, 7);
        site(&mut all, 0x20, 8);
        let mut forward = all.changed(false);
        assert!(forward.which.is_none());
        assert_eq!(
            list(&forward),
            [
                (0x10, vec![1, 2], vec![1, 7]),
                (0x20, vec![1, 2], vec![1, 8])
            ]
        );
        assert_eq!(list(&all.changed(true))[1], (0x20, vec![1, 8], vec![1, 2]));
        forward.keep(&[false, true]);
        assert_eq!(list(&forward), [(0x20, vec![1, 2], vec![1, 8])]);
        // One keeps its bytes: the others are listed.
        let mut some = Sites::new();
        site(&mut some, 0x10, 7);
        site(&mut some, 0x20, 2);
        site(&mut some, 0x30, 9);
        let back = some.changed(true);
        assert_eq!(
            list(&back),
            [
                (0x10, vec![1, 7], vec![1, 2]),
                (0x30, vec![1, 9], vec![1, 2])
            ]
        );
    }

    /// A table of `n` entries that lives for good, entry `k` for the site at `site(k)` past the
    /// table's start, keyed by `key(k)`, its replacement (or call target) `0x7000 + k` past it.
    fn leaked_table(
        n: usize,
        site: impl Fn(usize) -> u64,
        key: impl Fn(usize) -> u16,
        site_len: u8,
    ) -> &'static [AltEntry] {
        let table: &'static mut [AltEntry] = alloc::boxed::Box::leak(
            vec![
                AltEntry {
                    site: 0,
                    replacement: 0,
                    key: 0,
                    site_len: 0,
                    replacement_len: 0,
                };
                n
            ]
            .into_boxed_slice(),
        );
        let base = table.as_ptr() as usize as u64;
        for (k, e) in table.iter_mut().enumerate() {
            let at = e as *const AltEntry as usize as u64;
            e.site = (base + site(k)).wrapping_sub(at) as i32;
            e.replacement = (base + 0x7000 + k as u64).wrapping_sub(at + 4) as i32;
            e.key = key(k);
            e.site_len = site_len;
        }
        table
    }

    /// The changes of a batch, one at a time; read in order from each start on, the same.
    fn changes_of<C: Changes + ?Sized>(c: &C) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        let own = |c: SiteChange<'_>| (c.addr, c.from.to_vec(), c.to.to_vec());
        let each: Vec<_> = (0..c.len()).map(|i| own(c.change(i))).collect();
        for start in 0..c.len() + 2 {
            let from: Vec<_> = c.changes_from(start).map(own).collect();
            assert_eq!(from, each.get(start..).unwrap_or_default(), "from {start}");
        }
        each
    }

    #[test]
    fn sites_kept_in_place_read_as_the_same_sites_recorded() {
        use crate::capability::{CapabilitySet, Errata};
        let (popcnt, avx2) = (cap(Features::POPCNT).id(), cap(Features::AVX2).id());
        // Sites at 0x1000, 0x1100, ... two entries each (avx2 inline, then popcnt as a direct
        // call), then two sites of one entry each (avx2, then popcnt).
        let site = |k: usize| 0x1000 + 0x100 * (if k < 4 { k / 2 } else { k - 2 }) as u64;
        let key = |k: usize| match k % 2 {
            0 => AltEntry::make_key(avx2, AltFlags::empty()),
            _ => AltEntry::make_key(popcnt, AltFlags::DIRECT_CALL),
        };
        let table = leaked_table(6, site, key, 5);
        let base = table.as_ptr() as usize as u64;
        let site = |k: usize| base + site(k);
        let caps = CapabilitySet::new(Features::POPCNT, Errata::empty());
        let addr_of = |k: usize| &table[k] as *const AltEntry as usize as u64;
        let candidates = |ks: Range<usize>| -> Vec<(Candidate, u64)> {
            ks.map(|k| {
                let held = k % 2 == 1;
                let c = if held {
                    candidate(k, Features::POPCNT, true, true)
                } else {
                    candidate(k, Features::AVX2, false, false)
                };
                (c, addr_of(k))
            })
            .collect()
        };
        let call = |k: usize| Choice::DirectCall {
            entry: k,
            target: base + 0x7000 + k as u64,
        };
        let bytes = |b: u8| ([b; 5], [b + 1; 5]);
        let mut in_place = Sites::in_place(table, caps, 0);
        let mut recorded = Sites::new();
        for (s, ks) in [(0, 0..2), (1, 2..4)] {
            let (before, after) = bytes(s as u8 * 2);
            in_place.push_in_place(ks.clone(), &before, &after).unwrap();
            let choice = call(ks.start + 1);
            recorded
                .push(site(ks.start), &before, &after, candidates(ks), choice)
                .unwrap();
        }
        assert!(matches!(
            &in_place.repr,
            Repr::InPlace(InPlace {
                index: Index::Uniform { .. },
                ..
            })
        ));
        assert_eq!(in_place, recorded);
        let alike = in_place.changed(false).alike().expect("every site alike");
        assert_eq!(changes_of(&alike), changes_of(&recorded.changed(false)));
        let back = in_place.changed(true).alike().unwrap();
        assert_eq!(changes_of(&back), changes_of(&recorded.changed(true)));

        // A site unlike the others (one entry): from then on every start is listed.
        let (before, after) = bytes(4);
        in_place.push_in_place(4..5, &before, &after).unwrap();
        let refused = in_place.push_in_place(4..5, &before, &after);
        assert_eq!(
            refused,
            Err(SitesError::Order),
            "entries follow the previous site's"
        );
        recorded
            .push(site(4), &before, &after, candidates(4..5), Choice::Default)
            .unwrap();
        let (before, after) = bytes(6);
        in_place.push_in_place(5..6, &before, &after).unwrap();
        recorded
            .push(site(5), &before, &after, candidates(5..6), call(5))
            .unwrap();
        assert!(matches!(
            &in_place.repr,
            Repr::InPlace(InPlace {
                index: Index::Listed { .. },
                ..
            })
        ));
        assert_eq!(in_place, recorded);
        assert!(in_place.changed(false).alike().is_none());
        assert_eq!(
            changes_of(&in_place.changed(true)),
            changes_of(&recorded.changed(true))
        );
        let ranges: Vec<_> = in_place.ranges().collect();
        assert_eq!(ranges, recorded.ranges().collect::<Vec<_>>());
        assert_eq!(ranges[2], site(4)..site(4) + 5);
        assert_eq!(in_place.position(site(2)), Some(1));
        assert_eq!(in_place.position(site(2) + 1), None);
        let caps_of = |s: &Sites| s.capabilities().map(|c| c.id()).collect::<Vec<_>>();
        assert_eq!(
            caps_of(&in_place),
            [avx2, popcnt, avx2, popcnt, avx2, popcnt]
        );
        assert_eq!(caps_of(&in_place), caps_of(&recorded));
        assert_eq!(in_place.get(4), None);
        // Where more than one entry holds, the first in table order is the choice.
        let both = CapabilitySet::new(Features::POPCNT | Features::AVX2, Errata::empty());
        let mut first_wins = Sites::in_place(table, both, 0);
        first_wins.push_in_place(0..2, &[1; 5], &[2; 5]).unwrap();
        assert_eq!(first_wins.at(0).choice, Choice::Inline { entry: 0 });
        assert!(first_wins.at(0).candidates.iter().all(|c| c.held));

        // A site pushed as a report: every site is recorded from then on, the same.
        let c = candidate(9, Features::POPCNT, true, false);
        let more = |s: &mut Sites| {
            s.push(
                site(5) + 0x100,
                &[1],
                &[2],
                [(c, 0x55)],
                Choice::Inline { entry: 9 },
            )
        };
        more(&mut in_place).unwrap();
        more(&mut recorded).unwrap();
        assert!(!in_place.is_in_place());
        assert_eq!(in_place, recorded);
        assert_eq!(recorded_addrs(&in_place), recorded_addrs(&recorded));
    }

    fn recorded_addrs(s: &Sites) -> Vec<u64> {
        let r = recorded(s);
        (0..r.entries.len()).map(|k| r.entry_addr(k)).collect()
    }

    #[test]
    fn a_site_kept_in_place_has_no_more_entries_than_a_recorded_one() {
        let n = usize::from(u16::MAX) + 1;
        let table = leaked_table(n, |_| 0x1000, |_| 4, 1);
        let mut sites = Sites::in_place(table, Default::default(), 0);
        assert_eq!(
            sites.push_in_place(0..n, &[1], &[2]),
            Err(SitesError::TooMany)
        );
        sites.push_in_place(0..n - 1, &[1], &[2]).unwrap();
        assert_eq!(sites.at(0).candidates.len(), n - 1);
        // The same site recorded: as many entries.
        let recorded: Sites = sites.iter().collect();
        assert_eq!(recorded, sites);
        // A capacity no memory has is a hint, not a failure.
        let _ = Sites::in_place(table, Default::default(), usize::MAX);
    }

    #[test]
    fn keeping_every_site_of_a_batch_keeps_it_a_batch_of_all() {
        let table = leaked_table(3, |k| 0x1000 + 0x10 * k as u64, |_| 4, 2);
        let mut sites = Sites::in_place(table, Default::default(), 0);
        for k in 0..3 {
            sites.push_in_place(k..k + 1, &[1, 2], &[3, 4]).unwrap();
        }
        let mut back = sites.changed(true);
        back.keep(&[true; 3]);
        assert!(back.which.is_none());
        assert_eq!(back.alike().map(|a| a.len()), Some(3));
        back.keep(&[true, false, true]);
        assert_eq!(back.which.as_deref(), Some(&[0, 2][..]));
        assert!(back.alike().is_none());
    }

    #[test]
    fn sites_kept_in_place_refuse_what_the_planner_never_pushes() {
        let table = leaked_table(3, |k| 0x1000 + 0x10 * k as u64, |_| 4, 2);
        let mut sites = Sites::in_place(table, Default::default(), 0);
        assert_eq!(
            sites.push_in_place(0..1, &[1, 2], &[1]),
            Err(SitesError::Length)
        );
        assert_eq!(sites.push_in_place(0..1, &[], &[]), Err(SitesError::Length));
        assert_eq!(
            sites.push_in_place(0..4, &[1, 2], &[3, 4]),
            Err(SitesError::Order)
        );
        assert_eq!(
            sites.push_in_place(1..1, &[1, 2], &[3, 4]),
            Err(SitesError::Order)
        );
        sites.push_in_place(1..2, &[1, 2], &[3, 4]).unwrap();
        // A site that begins inside the one before.
        let mut overlapping = Sites::in_place(table, Default::default(), 0);
        let long = [0u8; 0x11];
        overlapping.push_in_place(0..1, &long, &long).unwrap();
        assert_eq!(
            overlapping.push_in_place(1..2, &[1, 2], &[3, 4]),
            Err(SitesError::Order)
        );
        assert_eq!(
            sites.push_in_place(0..1, &[1, 2], &[3, 4]),
            Err(SitesError::Order)
        );
        assert_eq!(sites.len(), 1);
        assert_eq!(sites.at(0).addr, table.as_ptr() as usize as u64 + 0x1010);
        // A recorded batch takes no site in place.
        assert_eq!(
            Sites::new().push_in_place(0..1, &[1, 2], &[3, 4]),
            Err(SitesError::Order)
        );
    }

    #[test]
    fn sites_read_back_as_pushed() {
        let mut sites = Sites::with_capacity(3);
        let a = candidate(0, Features::POPCNT, true, false);
        let b = candidate(1, Features::AVX2, false, true);
        let c = candidate(2, Features::AVX2, true, true);
        sites
            .push(0x100, &[1, 2, 3], &[1, 2, 3], [(a, 0)], Choice::Default)
            .unwrap();
        let inline = Choice::Inline { entry: 0 };
        sites
            .push(
                0x200,
                &[0xe8, 0, 0, 0, 0],
                &[9; 5],
                [(b, 0), (a, 0)],
                inline,
            )
            .unwrap();
        let call = Choice::DirectCall {
            entry: 2,
            target: 0x1234,
        };
        sites
            .push(0x300, &[0x90; 5], &[0xe8, 1, 2, 3, 4], [(c, 0)], call)
            .unwrap();
        assert_eq!(sites.len(), 3);
        let all: Vec<SiteReport> = sites.iter().collect();
        assert_eq!(all[0].choice, Choice::Default);
        assert_eq!(&all[0].before[..], [1, 2, 3]);
        assert_eq!(all[1].choice, inline);
        assert_eq!(all[1].candidates[..], [b, a]);
        assert_eq!(all[1].chosen(), Some(&a));
        assert_eq!(&all[1].after[..], [9; 5]);
        assert_eq!(all[2].choice, call);
        assert_eq!(sites.at(2), all[2]);
        assert_eq!(sites.iter().next_back(), Some(all[2].clone()));
        assert_eq!(sites.position(0x200), Some(1));
        assert_eq!(sites.position(0x201), None);
        // Only the sites that change, without building them.
        let changed: Vec<u64> = sites.changes().map(|c| c.addr).collect();
        assert_eq!(changed, [0x200, 0x300]);
        assert_eq!(sites.ranges().nth(1), Some(0x200..0x205));
        // What was pushed is what a plan made by hand holds.
        let again: Sites = all.iter().cloned().collect();
        assert_eq!(again, sites);
    }

    #[test]
    fn bad_sites_are_refused_and_leave_the_others() {
        let mut sites = Sites::new();
        let a = candidate(0, Features::POPCNT, true, false);
        assert_eq!(
            sites.push(0x100, &[1, 2], &[1], [(a, 0)], Choice::Default),
            Err(SitesError::Length)
        );
        assert_eq!(
            sites.push(0x100, &[], &[], [(a, 0)], Choice::Default),
            Err(SitesError::Length)
        );
        assert_eq!(
            sites.push(0x100, &[1], &[2], [(a, 0)], Choice::Inline { entry: 7 }),
            Err(SitesError::Choice)
        );
        // A direct call recorded as inline (or the other way round) would read back wrong.
        let call = candidate(1, Features::AVX2, true, true);
        assert_eq!(
            sites.push(0x100, &[1], &[2], [(call, 0)], Choice::Inline { entry: 1 }),
            Err(SitesError::Choice)
        );
        let direct = Choice::DirectCall {
            entry: 0,
            target: 0x10,
        };
        assert_eq!(
            sites.push(0x100, &[1], &[2], [(a, 0)], direct),
            Err(SitesError::Choice)
        );
        assert!(sites.is_empty());
        assert!(sites.capabilities().next().is_none(), "no entry kept");
        sites
            .push(0x100, &[1, 2], &[1, 2], [(a, 0)], Choice::Default)
            .unwrap();
        // Sites come in address order and do not overlap.
        for addr in [0x101, 0x80] {
            assert_eq!(
                sites.push(addr, &[1], &[1], [(a, 0)], Choice::Default),
                Err(SitesError::Order),
                "{addr:#x}"
            );
        }
        assert_eq!(sites.len(), 1);
        assert_eq!(sites.capabilities().count(), 1);
    }

    #[test]
    fn a_site_may_choose_any_of_many_entries() {
        let mut sites = Sites::new();
        let many = (0..300).map(|i| (candidate(i, Features::POPCNT, i == 299, false), 0));
        let inline = Choice::Inline { entry: 299 };
        sites.push(0x100, &[1], &[2], many, inline).unwrap();
        let site = sites.at(0);
        assert_eq!(site.choice, inline);
        assert_eq!(site.chosen().map(|c| c.entry), Some(299));
        assert_eq!(site.candidates.len(), 300);
    }
}
