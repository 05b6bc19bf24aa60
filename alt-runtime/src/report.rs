//! The report: per site what was chosen and why, the bytes before and after, totals per
//! capability, pages touched and time taken.
//!
//! Patching returns one: [`crate::process::patch_self`] in a hosted process (after its run, so
//! the report describes text that is already patched), a paravirt table's `install`, or a kernel's
//! own call of [`crate::patch::apply`]. It is plain data: print it, log it, or keep it; reverting
//! does not need it (the patched state is kept by the patching code).
//!
//! [`Report`] implements [`Display`](core::fmt::Display) for people, and
//! [`Report::to_json`] gives one JSON object for programs:
//!
//! ```text
//! {"capabilities":{"features":[..],"errata":[..]},
//!  "sites":[{"address":N,"length":N,"function":S|null,"table":S|null,"op":S|null,
//!            "capability":S|null,"variant":S,
//!            "decision":"default"|"inline"|"direct_call"|"nop"|"trap",
//!            "entry":N|null,"why":S,"before":"hex","after":"hex"}],
//!  "totals":[{"capability":S,"applied":N,"not_applied":N}],
//!  "sites_changed":N,"bytes_changed":N,"pages":N,"elapsed_ns":N|null}
//! ```
//!
//! `table` and `op` name a paravirt site's operations table and operation (`null` for
//! alternatives); for a paravirt site `variant` is the backend's name and `entry` the index of
//! its entry in the table's entry section. `nop` and `trap` are paravirt decisions only.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::capability::{Capability, CapabilitySet};
use crate::plan::{Candidate, Choice, Plan, PvSiteInfo};
use crate::writer::WriteStats;

/// What was done at one site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteReport {
    /// Address of the site.
    pub addr: u64,
    /// Name of the function the site belongs to, where the table names it.
    pub function: Option<&'static str>,
    /// Names of the site's entries' variants, parallel to `candidates`, where known.
    pub variants: Vec<Option<&'static str>>,
    /// The decision.
    pub choice: Choice,
    /// Every entry considered, in priority order, with whether it held.
    pub candidates: Vec<Candidate>,
    /// The bytes before.
    pub before: Vec<u8>,
    /// The bytes after.
    pub after: Vec<u8>,
    /// For a paravirt site, its table, operation, backend and the reason; `None` for
    /// alternatives.
    pub paravirt: Option<PvSiteInfo>,
}

impl SiteReport {
    /// What the site is, for people: `TABLE.op` for a paravirt site, else the function name
    /// (`?` where unknown).
    pub fn label(&self) -> String {
        match (&self.paravirt, self.function) {
            (Some(pv), _) => format!("{}.{}", pv.table, pv.op_name),
            (None, Some(f)) => String::from(f),
            (None, None) => String::from("?"),
        }
    }

    /// Whether the site's bytes changed.
    pub fn changed(&self) -> bool {
        self.before != self.after
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
        if let Some(pv) = &self.paravirt {
            return String::from(pv.backend);
        }
        match self.chosen() {
            None => String::from("default"),
            Some(c) => {
                let i = self.candidates.iter().position(|x| x.entry == c.entry);
                match i.and_then(|i| self.variants.get(i).copied().flatten()) {
                    Some(name) => String::from(name),
                    None => format!("entry {}", c.entry),
                }
            }
        }
    }

    /// Short name of the decision.
    pub fn decision(&self) -> &'static str {
        match self.choice {
            Choice::Default => "default",
            Choice::Inline { .. } | Choice::PvInline { .. } => "inline",
            Choice::DirectCall { .. } | Choice::PvCall { .. } => "direct_call",
            Choice::PvNop { .. } => "nop",
            Choice::PvTrap { .. } => "trap",
        }
    }

    /// Why: the chosen entry's condition, or why every entry failed.
    pub fn why(&self) -> String {
        if let Some(pv) = &self.paravirt {
            return pv.why.clone();
        }
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

impl Candidate {
    /// Whether the candidate's capability was present (as opposed to whether it held).
    pub fn capability_present(&self) -> bool {
        self.held != self.negated
    }
}

/// Totals for one capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityTotal {
    /// The capability.
    pub capability: Capability,
    /// Sites where an entry keyed by it was applied.
    pub applied: usize,
    /// Entries keyed by it that were not applied.
    pub not_applied: usize,
}

/// What a patching pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The capabilities the plan was made for.
    pub capabilities: CapabilitySet,
    /// Every site, sorted by address.
    pub sites: Vec<SiteReport>,
    /// Pages whose contents changed.
    pub pages: usize,
    /// Time taken, where a clock was available (hosted).
    pub elapsed_ns: Option<u64>,
}

impl Report {
    /// The report of a plan carried out with these writer statistics.
    pub fn from_plan(plan: Plan, stats: WriteStats) -> Self {
        let sites = plan
            .sites
            .into_iter()
            .map(|s| SiteReport {
                addr: s.addr,
                function: None,
                variants: alloc::vec![None; s.candidates.len()],
                choice: s.choice,
                candidates: s.candidates,
                before: s.original,
                after: s.new,
                paravirt: s.paravirt,
            })
            .collect();
        Report {
            capabilities: plan.capabilities,
            sites,
            pages: stats.pages,
            elapsed_ns: None,
        }
    }

    /// Sites whose bytes changed.
    pub fn sites_changed(&self) -> usize {
        self.sites.iter().filter(|s| s.changed()).count()
    }

    /// Bytes that differ between before and after, over all sites.
    pub fn bytes_changed(&self) -> usize {
        self.sites
            .iter()
            .map(|s| {
                s.before
                    .iter()
                    .zip(&s.after)
                    .filter(|(a, b)| a != b)
                    .count()
            })
            .sum()
    }

    /// Totals per capability, in capability id order.
    pub fn totals(&self) -> Vec<CapabilityTotal> {
        let mut totals: Vec<CapabilityTotal> = Vec::new();
        for site in &self.sites {
            let chosen = site.chosen().map(|c| c.entry);
            for c in &site.candidates {
                let t = match totals.iter_mut().find(|t| t.capability == c.capability) {
                    Some(t) => t,
                    None => {
                        totals.push(CapabilityTotal {
                            capability: c.capability,
                            applied: 0,
                            not_applied: 0,
                        });
                        totals.last_mut().expect("just pushed")
                    }
                };
                if Some(c.entry) == chosen {
                    t.applied += 1;
                } else {
                    t.not_applied += 1;
                }
            }
        }
        totals.sort_by_key(|t| t.capability);
        totals
    }

    /// Attaches names: `function(site address)` names a site's function and
    /// `variant(entry index)` an entry's variant.
    pub fn name_sites(
        &mut self,
        function: impl Fn(u64) -> Option<&'static str>,
        variant: impl Fn(usize) -> Option<&'static str>,
    ) {
        for s in &mut self.sites {
            s.function = function(s.addr);
            s.variants = s.candidates.iter().map(|c| variant(c.entry)).collect();
        }
    }

    /// The report as one JSON object (see the [module documentation](self)).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"capabilities\":{\"features\":[");
        let names = |it: &mut dyn Iterator<Item = Capability>| {
            it.map(|c| json_str(c.name())).collect::<Vec<_>>().join(",")
        };
        let caps = self.capabilities;
        let (feats, errata): (Vec<Capability>, Vec<Capability>) = caps
            .iter()
            .partition(|c| matches!(c.kind(), crate::CapabilityKind::Feature(_)));
        out.push_str(&names(&mut feats.into_iter()));
        out.push_str("],\"errata\":[");
        out.push_str(&names(&mut errata.into_iter()));
        out.push_str("]},\"sites\":[");
        let sites: Vec<String> = self
            .sites
            .iter()
            .map(|s| {
                format!(
                    "{{\"address\":{},\"length\":{},\"function\":{},\"table\":{},\"op\":{},\"capability\":{},\"variant\":{},\"decision\":\"{}\",\"entry\":{},\"why\":{},\"before\":\"{}\",\"after\":\"{}\"}}",
                    s.addr,
                    s.before.len(),
                    s.function.map_or(String::from("null"), json_str),
                    s.paravirt.as_ref().map_or(String::from("null"), |p| json_str(p.table)),
                    s.paravirt.as_ref().map_or(String::from("null"), |p| json_str(p.op_name)),
                    s.capability().map_or(String::from("null"), |c| json_str(c.name())),
                    json_str(&s.variant()),
                    s.decision(),
                    s.chosen()
                        .map(|c| c.entry)
                        .or(s.paravirt.as_ref().map(|p| p.entry))
                        .map_or(String::from("null"), |e| format!("{e}")),
                    json_str(&s.why()),
                    Hex(&s.before),
                    Hex(&s.after),
                )
            })
            .collect();
        out.push_str(&sites.join(","));
        out.push_str("],\"totals\":[");
        let totals: Vec<String> = self
            .totals()
            .iter()
            .map(|t| {
                format!(
                    "{{\"capability\":{},\"applied\":{},\"not_applied\":{}}}",
                    json_str(t.capability.name()),
                    t.applied,
                    t.not_applied
                )
            })
            .collect();
        out.push_str(&totals.join(","));
        out.push_str(&format!(
            "],\"sites_changed\":{},\"bytes_changed\":{},\"pages\":{},\"elapsed_ns\":{}}}",
            self.sites_changed(),
            self.bytes_changed(),
            self.pages,
            self.elapsed_ns
                .map_or(String::from("null"), |n| format!("{n}"))
        ));
        out
    }
}

/// A JSON string literal for `s`.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes shown as lower-case hex without separators.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Bytes shown as spaced hex (`e8 12 34 56 78`).
struct SpacedHex<'a>(&'a [u8]);

impl fmt::Display for SpacedHex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paravirt decisions do not depend on capabilities: a report of paravirt sites alone
        // has no capabilities line.
        let only_paravirt =
            !self.sites.is_empty() && self.sites.iter().all(|s| s.paravirt.is_some());
        if !only_paravirt {
            let feats: Vec<&str> = self.capabilities.iter().map(|c| c.name()).collect();
            writeln!(f, "capabilities: {}", feats.join(" "))?;
        }
        for s in &self.sites {
            writeln!(
                f,
                "site {:#x} {:>2}B {:<24} {:<11} {:<14} {}",
                s.addr,
                s.before.len(),
                s.label(),
                s.decision(),
                s.variant(),
                s.why()
            )?;
            if s.changed() {
                writeln!(f, "    before: {}", SpacedHex(&s.before))?;
                writeln!(f, "    after:  {}", SpacedHex(&s.after))?;
            }
        }
        for t in self.totals() {
            writeln!(
                f,
                "capability {:<12} applied at {} site(s), not applied {} time(s)",
                t.capability.name(),
                t.applied,
                t.not_applied
            )?;
        }
        write!(
            f,
            "{} site(s), {} changed, {} byte(s) changed, {} page(s) touched",
            self.sites.len(),
            self.sites_changed(),
            self.bytes_changed(),
            self.pages
        )?;
        if let Some(ns) = self.elapsed_ns {
            write!(f, ", {}.{:03} ms", ns / 1_000_000, (ns / 1000) % 1000)?;
        }
        Ok(())
    }
}
