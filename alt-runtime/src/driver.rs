//! The patching driver: one object that plans, validates, writes, synchronises, names and
//! reports every site of a program, for kernels and processes alike.
//!
//! ```text
//! Patcher::new(capabilities, layout)       what the system has, where the text is
//!     .sections(&sections)                 the alternatives table and its names
//!     .paravirt(table, backend)            each operations table and its backend (unsafe)
//!     .plan(&memory)?                      every entry of every table validated; nothing written
//!     .apply(&mut writer, &mut rendezvous)? all sites written at once, or none
//! ```
//!
//! [`Prepared::apply`] gathers every changed site of every table into one batch and carries it
//! out all or nothing ([`crate::patch::carry_out`]): the sites are re-read, the writer prepares,
//! the [`Rendezvous`] stops every other CPU or thread, the paravirt slots are stored and the sites
//! written, this CPU synchronises through the instruction set ([`Isa::sync`]), the sites are
//! read back, and the others are released. It returns a [`Patched`] record with the [`Report`]
//! that reverts every site and slot exactly.
//!
//! **Failures.** Planning errors ([`PlanError`]) name the table entry and change nothing. An
//! [`ApplyError`] says what failed and whether anything is left changed: if
//! [`ApplyError::leftover`] is `None` every byte and slot is exactly as before; otherwise the
//! record it holds reverts what could not be restored. [`Patched::revert`] checks every site
//! still holds what was written (sites already back to their originals are skipped, so a
//! revert that failed can be retried) and hands the record back on failure.
//!
//! A kernel patches its own text in about four calls (see `docs/kernel.md`); a hosted program
//! does nothing at all: [`crate::process`] patches each object at load through this driver.

use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

use crate::capability::CapabilitySet;
use crate::isa::{Isa, X86_64};
use crate::linker::Names;
use crate::memory::Memory;
use crate::paravirt::{plan_paravirt, Backend, PvError, PvPlan, PvTableEntry, TableDesc};
use crate::patch::Direction::{Back, Forward};
use crate::patch::{
    carry_out, carry_out_read, Changes, Failure, PatchError, SiteChange, SiteWrite, SlotWrite,
};
use crate::plan::{
    plan_static_table, plan_table_for, InMemory, Layout, Plan, TableEntry, TableError,
};
use crate::rendezvous::Rendezvous;
use crate::report::{PvSiteReport, Report};
use crate::sites::keep_flagged;
use crate::table::AltEntry;
use crate::writer::{WriteStats, Writer};

/// Why planning failed. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The alternatives table was refused.
    Table(TableError),
    /// A paravirt table (or its backend) was refused.
    Paravirt(PvError),
    /// Sites of two different tables overlap.
    SitesOverlap {
        /// Start of the first site.
        first: u64,
        /// Start of the second site, which begins inside the first.
        second: u64,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Table(e) => write!(f, "invalid alternatives table: {e}"),
            PlanError::Paravirt(e) => write!(f, "invalid paravirt table: {e}"),
            PlanError::SitesOverlap { first, second } => write!(
                f,
                "the site at {second:#x} begins inside the site at {first:#x} of another table"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PlanError {}

/// An operations table to patch: its descriptor, its backend, its entries, and where its
/// operations' inline sequences lie if not in the layout's replacement section.
type PvTable<'a> = (
    TableDesc<'a>,
    Backend<'a>,
    Vec<PvTableEntry>,
    Option<Range<u64>>,
);

/// The first two sites that overlap, by start address (the ranges are sorted in place): the
/// check across tables, which each table's own validation cannot make.
pub fn first_overlap(sites: &mut [Range<u64>]) -> Option<(u64, u64)> {
    sites.sort_unstable_by_key(|r| r.start);
    sites
        .windows(2)
        .find(|w| w[0].end > w[1].start)
        .map(|w| (w[0].start, w[1].start))
}

/// The alternatives table a patcher plans.
#[derive(Debug)]
enum Alternatives<'a> {
    /// Entries given one by one, with their addresses.
    Listed(Vec<TableEntry>),
    /// A table of this address space, read where it lies (no copy of it is kept).
    InMemory(&'a [AltEntry]),
    /// A table of this program that lies in memory for good (from its sections): the plan and
    /// the report read their sites' entries from it again.
    Static(&'static [AltEntry]),
}

/// What to patch: the capabilities, the text, and the tables.
#[derive(Debug)]
pub struct Patcher<'a, I: Isa = X86_64> {
    caps: CapabilitySet,
    layout: Layout<'a>,
    alternatives: Alternatives<'a>,
    names: Names,
    paravirt: Vec<PvTable<'a>>,
    isa: PhantomData<I>,
}

impl<'a> Patcher<'a, X86_64> {
    /// A patcher for x86-64 text in `layout`, deciding by `caps`.
    ///
    /// # Safety
    ///
    /// `layout` must describe code of this program (its text ranges and its replacement
    /// section), and every table given to the patcher must be one the `alt` macros, `alt.h` or
    /// `alt-tablegen` generated for that code: the planner trusts a valid entry's replacement
    /// to be correct code for its site. Every feature in `caps` must be usable on every CPU
    /// that will run the patched code (the probed features, or fewer): a variant chosen for a
    /// feature runs its instructions, and direct calls and `has!` arms call `#[target_feature]`
    /// functions on its word. Errata may be added or left out freely. The memory given to
    /// [`Patcher::plan`] must read that code as it is (the bytes planned from it are written
    /// into the text), and the text must stay mapped for as long as the plan, or a
    /// [`Patched`] record made from it, is used (reverting writes it back). A process's own
    /// alternatives sites are patched by [`crate::process`] (at load, by `patch_self`,
    /// `revert_self`), which does not read them again between planning and writing: a patcher
    /// for those sites must not write them while that may run (opt out of patching at load
    /// with [`crate::no_patch_at_load!`] and patch them through the patcher alone).
    pub unsafe fn new(caps: CapabilitySet, layout: Layout<'a>) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Self::for_isa(caps, layout) }
    }
}

impl<'a, I: Isa> Patcher<'a, I> {
    /// A patcher for text of the instruction set `I`.
    ///
    /// # Safety
    ///
    /// As for [`Patcher::new`].
    pub unsafe fn for_isa(caps: CapabilitySet, layout: Layout<'a>) -> Self {
        Patcher {
            caps,
            layout,
            alternatives: Alternatives::Listed(Vec::new()),
            names: Names::default(),
            paravirt: Vec::new(),
            isa: PhantomData,
        }
    }

    /// The alternatives table: its entries in table order, with their addresses.
    pub fn alternatives(mut self, entries: impl IntoIterator<Item = TableEntry>) -> Self {
        self.alternatives = Alternatives::Listed(entries.into_iter().collect());
        self
    }

    /// The alternatives table of this address space, read where it lies.
    pub fn alternatives_in_memory(mut self, table: &'a [AltEntry]) -> Self {
        self.alternatives = Alternatives::InMemory(table);
        self
    }

    /// The alternatives table of this program, which lies in memory for good (as its
    /// sections do): read where it lies, and the plan and its report read each site's entries
    /// from it again instead of keeping a copy (a few bytes a site instead of a few dozen).
    pub fn alternatives_static(mut self, table: &'static [AltEntry]) -> Self {
        self.alternatives = Alternatives::Static(table);
        self
    }

    /// Names for the report.
    pub fn names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// The alternatives table and its names from a program's sections.
    #[cfg(target_arch = "x86_64")]
    pub fn sections(self, s: &crate::linker::Sections) -> Self {
        self.alternatives_static(s.alt_entries()).names(s.names())
    }

    /// An operations table, patched for `backend`.
    ///
    /// # Safety
    ///
    /// `table` must describe a live operations table of this program (its slots, thunks and
    /// entry section, as the generated `descriptor()` does) that stays mapped for as long as
    /// the plan, or any [`Patched`] record made from it, lives (reverting reads and stores its
    /// slots; an object unloaded meanwhile must not be reverted), and every
    /// [`crate::paravirt::OpChoice::Function`] of `backend` must be an `extern "C"` function
    /// with the operation's signature that is sound to call wherever the operation is called.
    pub unsafe fn paravirt(mut self, table: TableDesc<'a>, backend: Backend<'a>) -> Self {
        // SAFETY: the caller's contract: the bounds are the table's entry section.
        let raw = unsafe { crate::paravirt::entries_between(table.entries.clone()) };
        let entries = PvTableEntry::in_memory(raw).collect();
        self.paravirt.push((table, backend, entries, None));
        self
    }

    /// Sites of an operations table that another object calls: `entries` are that object's
    /// (a module loaded after boot calling the kernel's table, a test's), and the operations'
    /// inline sequences lie in `sequences` (the table's own object's replacement section) when
    /// it is not the layout's.
    ///
    /// # Safety
    ///
    /// As for [`Patcher::paravirt`]; `entries` must be the calling object's table entries.
    pub unsafe fn paravirt_entries(
        mut self,
        table: TableDesc<'a>,
        backend: Backend<'a>,
        entries: Vec<PvTableEntry>,
        sequences: Option<Range<u64>>,
    ) -> Self {
        self.paravirt.push((table, backend, entries, sequences));
        self
    }

    /// Validates every entry of every table and decides every site, reading the code through
    /// `mem`. Nothing is written.
    pub fn plan<M: Memory>(&self, mem: &M) -> Result<Prepared<I>, PlanError> {
        let mut alt = match &self.alternatives {
            Alternatives::Listed(entries) => {
                plan_table_for::<I, M, _>(&entries[..], &self.layout, &self.caps, mem)
            }
            Alternatives::InMemory(table) => {
                plan_table_for::<I, M, _>(&InMemory(table), &self.layout, &self.caps, mem)
            }
            Alternatives::Static(table) => {
                plan_static_table::<I, M>(table, &self.layout, &self.caps, mem)
            }
        }
        .map_err(PlanError::Table)?;
        // Names are looked up when a site is read, not now.
        alt.sites.set_names(self.names.clone());
        let mut pv = Vec::with_capacity(self.paravirt.len());
        for (table, backend, entries, sequences) in &self.paravirt {
            let layout = Layout {
                text: self.layout.text,
                replacements: sequences
                    .clone()
                    .unwrap_or_else(|| self.layout.replacements.clone()),
            };
            let p = plan_paravirt(table, backend, entries, &layout, mem)
                .map_err(PlanError::Paravirt)?;
            pv.push(p);
        }
        // Tables are validated one by one; their sites must not overlap one another either.
        // (With the alternatives table alone there is nothing to add: its planner refuses
        // sites that overlap.)
        if !pv.is_empty() {
            let mut all: Vec<Range<u64>> = Vec::with_capacity(
                alt.sites.len() + pv.iter().map(|p| p.sites.len()).sum::<usize>(),
            );
            all.extend(alt.sites.ranges());
            for p in &pv {
                all.extend(p.sites.iter().map(|s| s.write.range()));
            }
            if let Some((first, second)) = first_overlap(&mut all) {
                return Err(PlanError::SitesOverlap { first, second });
            }
        }
        Ok(Prepared {
            alt,
            pv,
            isa: PhantomData,
        })
    }
}

/// Every site planned and validated, ready to be written.
#[derive(Debug)]
pub struct Prepared<I: Isa = X86_64> {
    /// The alternatives plan, named.
    alt: Plan,
    pv: Vec<PvPlan>,
    isa: PhantomData<I>,
}

/// Why applying failed, and what is left to undo.
#[derive(Debug)]
pub struct ApplyError<I: Isa = X86_64> {
    /// What went wrong.
    pub error: PatchError,
    /// `None`: every site and slot is exactly as before. `Some`: some sites could not be
    /// restored; reverting this record restores them.
    pub leftover: Option<alloc::boxed::Box<Patched<I>>>,
}

impl<I: Isa> fmt::Display for ApplyError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        match self.leftover {
            None => f.write_str("; nothing was changed"),
            Some(_) => f.write_str("; some sites could not be restored: revert the record"),
        }
    }
}

#[cfg(feature = "std")]
impl<I: Isa + fmt::Debug> std::error::Error for ApplyError<I> {}

impl<I: Isa> Prepared<I> {
    /// A prepared pass for an alternatives plan made elsewhere (by
    /// [`crate::plan::plan_alternatives_for`] directly), without names.
    ///
    /// # Safety
    ///
    /// `plan` must have been made by the planner for code of this program, from a table under
    /// [`Patcher::new`]'s contract, and left as the planner made it.
    pub unsafe fn from_alternatives(plan: Plan) -> Self {
        Prepared {
            alt: plan,
            pv: Vec::new(),
            isa: PhantomData,
        }
    }

    /// The alternatives plan.
    pub fn alternatives(&self) -> &Plan {
        &self.alt
    }

    /// The paravirt plans, one per table.
    pub fn paravirt(&self) -> &[PvPlan] {
        &self.pv
    }

    /// What [`Prepared::apply`] would report, without writing (`pages` is 0).
    pub fn preview(&self) -> Report {
        report_of(self.alt.clone(), self.pv.clone(), WriteStats::default())
    }

    /// Writes every changed site of every table, and the paravirt slots, all or nothing (see
    /// the [module documentation](self)).
    pub fn apply<W: Writer, R: Rendezvous + ?Sized>(
        self,
        writer: &mut W,
        rendezvous: &mut R,
    ) -> Result<Patched<I>, ApplyError<I>> {
        // SAFETY: the sites are read again before anything is written.
        unsafe { self.apply_read(writer, rendezvous, true) }
    }

    /// [`Prepared::apply`] of a plan made just now, whose sites hold what the planner read
    /// and checked: they are not read again before the write (they are read back after it).
    /// For a process patching itself at start-up, under its lock.
    ///
    /// # Safety
    ///
    /// No one wrote the sites since the plan was made from them, and no one but the caller
    /// writes them until this returns.
    pub(crate) unsafe fn apply_as_planned<W: Writer, R: Rendezvous + ?Sized>(
        self,
        writer: &mut W,
        rendezvous: &mut R,
    ) -> Result<Patched<I>, ApplyError<I>> {
        // SAFETY: the caller's contract: the sites hold what the plan says they hold.
        unsafe { self.apply_read(writer, rendezvous, false) }
    }

    /// # Safety
    ///
    /// Without `reread`, as for [`Prepared::apply_as_planned`].
    unsafe fn apply_read<W: Writer, R: Rendezvous + ?Sized>(
        self,
        writer: &mut W,
        rendezvous: &mut R,
        reread: bool,
    ) -> Result<Patched<I>, ApplyError<I>> {
        let slots: Vec<SlotWrite> = self
            .pv
            .iter()
            .flat_map(|p| &p.slots)
            .map(|s| SlotWrite {
                addr: s.addr,
                // SAFETY: the contract of `Patcher::paravirt`: the slots are live.
                old: unsafe { crate::patch::load_slot(s.addr) },
                new: s.value,
            })
            .filter(|s| s.old != s.new)
            .collect();
        let done = {
            let pv_sites: usize = self.pv.iter().map(|p| p.sites.len()).sum();
            // SAFETY (both calls): `Patcher::new`'s contract (the sites are this program's, the
            // bytes planned from trusted tables), `Patcher::paravirt`'s (the slots are live)
            // and the unsafe `Rendezvous` trait's (it really stops everyone).
            if pv_sites == 0 {
                // The alternatives alone, in address order already: a batch of indices.
                let writes = self.alt.sites.changed(false);
                match writes.alike() {
                    Some(alike) => unsafe {
                        carry_out_read::<I, W, R, _>(
                            &alike, &slots, Forward, writer, rendezvous, reread,
                        )
                    },
                    None => unsafe {
                        carry_out_read::<I, W, R, _>(
                            &writes, &slots, Forward, writer, rendezvous, reread,
                        )
                    },
                }
            } else {
                let mut writes: Vec<SiteChange<'_>> =
                    Vec::with_capacity(self.alt.sites.len() + pv_sites);
                writes.extend(self.alt.sites.changes());
                let pv = self
                    .pv
                    .iter()
                    .flat_map(|p| p.sites.iter().map(|s| &s.write));
                writes.extend(pv.filter(|w| w.changed()).map(SiteWrite::change));
                writes.sort_unstable_by_key(|w| w.addr);
                let writes = &writes[..];
                unsafe {
                    carry_out_read::<I, W, R, _>(
                        writes, &slots, Forward, writer, rendezvous, reread,
                    )
                }
            }
        };
        match done {
            Ok(stats) => Ok(Patched {
                report: alloc::sync::Arc::new(self.into_report(stats)),
                slots,
                isa: PhantomData,
            }),
            Err(Failure {
                error,
                text_changed,
            }) => {
                let leftover = text_changed.then(|| {
                    alloc::boxed::Box::new(Patched {
                        report: alloc::sync::Arc::new(self.into_report(WriteStats::default())),
                        slots: Vec::new(),
                        isa: PhantomData,
                    })
                });
                Err(ApplyError { error, leftover })
            }
        }
    }

    fn into_report(self, stats: WriteStats) -> Report {
        report_of(self.alt, self.pv, stats)
    }
}

/// The report of a plan carried out with `stats`.
fn report_of(alt: Plan, pv: Vec<PvPlan>, stats: WriteStats) -> Report {
    let mut paravirt: Vec<PvSiteReport> = pv
        .into_iter()
        .flat_map(|p| {
            let (table, backend) = (p.table, p.backend);
            p.sites
                .into_iter()
                .map(move |s| PvSiteReport::from_plan(s, table, backend))
        })
        .collect();
    paravirt.sort_by_key(|s| s.addr);
    Report {
        capabilities: alt.capabilities,
        // The plan's sites are the report's: nothing is copied.
        sites: alt.sites,
        paravirt,
        pages: stats.pages,
        elapsed_ns: None,
    }
}

/// Sites as patched: the report (with what each site held before and holds now) and the slots,
/// which revert every change exactly.
#[derive(Clone, Debug)]
pub struct Patched<I: Isa = X86_64> {
    report: alloc::sync::Arc<Report>,
    slots: Vec<SlotWrite>,
    isa: PhantomData<I>,
}

impl<I: Isa> Patched<I> {
    /// What was done.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Attaches the time patching took to the report (copied first if shared). The rest of
    /// the report is the record that [`Patched::revert`] writes back, so it cannot be changed.
    pub fn set_elapsed_ns(&mut self, ns: Option<u64>) {
        alloc::sync::Arc::make_mut(&mut self.report).elapsed_ns = ns;
    }

    /// The report, shared: handing it out copies nothing.
    pub fn shared_report(&self) -> alloc::sync::Arc<Report> {
        self.report.clone()
    }

    /// The slots that were stored.
    pub fn slots(&self) -> &[SlotWrite] {
        &self.slots
    }

    /// Every capability some alternative entry is keyed by, taken or not: what a CPU that comes
    /// up later must agree with ([`crate::policy::SystemCaps::set_used`]).
    pub fn used(&self) -> CapabilitySet {
        let mut used = CapabilitySet::default();
        for c in self.report.sites.capabilities() {
            used.set(c);
        }
        used
    }

    /// Restores every changed site to its original bytes and every slot to its old value.
    ///
    /// Every site must hold what was written, or already its original (skipped: a revert that
    /// failed part-way can be retried); otherwise nothing is written and the error names the
    /// site. On error `self` is handed back, still a valid record.
    // The error hands the record back so the caller keeps the originals; it is the cold path.
    #[allow(clippy::result_large_err)]
    pub fn revert<W: Writer, R: Rendezvous + ?Sized>(
        self,
        writer: &mut W,
        rendezvous: &mut R,
    ) -> Result<WriteStats, (Self, PatchError)> {
        // Back: from what was written to what the sites held.
        let report = &self.report;
        let mut alone = report.sites.changed(true);
        let mut all: Vec<SiteChange<'_>> = Vec::new();
        if !report.paravirt.is_empty() {
            all.extend(report.sites.changes().map(SiteChange::reversed));
            all.extend(
                report
                    .paravirt
                    .iter()
                    .filter(|s| s.changed())
                    .map(|s| SiteChange {
                        addr: s.addr,
                        from: &s.after,
                        to: &s.before,
                    }),
            );
            all.sort_unstable_by_key(|w| w.addr);
        }
        // Sites already back to their originals are left out.
        let pending = if report.paravirt.is_empty() {
            still_patched(writer, &alone)
        } else {
            still_patched(writer, &all[..])
        };
        let pending = match pending {
            Ok(p) => p,
            Err(e) => return Err((self, e)),
        };
        alone.keep(&pending);
        keep_flagged(&mut all, &pending);
        let mut slots = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            // SAFETY: the slots were stored by `apply`, under `Patcher::paravirt`'s contract.
            let now = unsafe { crate::patch::load_slot(s.addr) };
            if now == s.new {
                slots.push(*s);
            } else if now != s.old {
                let e = PatchError::UnexpectedSlot {
                    addr: s.addr,
                    expected: s.new,
                    found: now,
                };
                return Err((self, e));
            }
        }
        // SAFETY: as for `apply`: the originals are the bytes the sites held before.
        let done = if report.paravirt.is_empty() {
            match alone.alike() {
                Some(alike) => unsafe {
                    carry_out::<I, W, R, _>(&alike, &slots, Back, writer, rendezvous)
                },
                None => unsafe {
                    carry_out::<I, W, R, _>(&alone, &slots, Back, writer, rendezvous)
                },
            }
        } else {
            unsafe { carry_out::<I, W, R, _>(&all[..], &slots, Back, writer, rendezvous) }
        };
        match done {
            Ok(stats) => Ok(stats),
            Err(f) => Err((self, f.error)),
        }
    }
}

/// The indices of the sites that still hold what was written; an error for a site that holds
/// neither that nor its original.
fn still_patched<M: Memory, C: Changes + ?Sized>(
    mem: &M,
    sites: &C,
) -> Result<Vec<bool>, PatchError> {
    let each = || (0..sites.len()).map(|i| sites.change(i));
    let ranges: Vec<Range<u64>> = each().map(|s| s.range()).collect();
    let mut now = alloc::vec![0u8; each().map(|s| s.from.len()).sum()];
    mem.read_each(&ranges, &mut now)
        .map_err(PatchError::Memory)?;
    let mut at = 0;
    let mut pending = Vec::with_capacity(sites.len());
    for s in each() {
        let found = &now[at..at + s.from.len()];
        at += s.from.len();
        if found != s.from && found != s.to {
            return Err(PatchError::UnexpectedBytes {
                addr: s.addr,
                expected: s.from.to_vec(),
                found: found.to_vec(),
            });
        }
        pending.push(found == s.from);
    }
    Ok(pending)
}
