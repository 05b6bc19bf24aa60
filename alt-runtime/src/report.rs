//! The report: per site what was chosen and why, the bytes before and after, totals per
//! capability, pages touched and time taken.
//!
//! Patching returns one: [`crate::process::patch_self`] in a hosted process (after its run, so
//! the report describes text that is already patched), a paravirt table's `install`, or a kernel's
//! own call of the [driver](crate::driver). It is plain data: print it, log it, or keep it; reverting
//! does not need it (the patched state is kept by the patching code).
//!
//! [`Report`] implements [`Display`](core::fmt::Display) for people, and
//! [`Report::to_json`] gives one JSON object for programs:
//!
//! ```text
//! {"capabilities":{"features":[..],"errata":[..]},
//!  "sites":[{"address":N,"length":N,"function":S|null,"capability":S|null,"variant":S,
//!            "decision":"default"|"inline"|"direct_call","entry":N|null,"why":S,
//!            "before":"hex","after":"hex"}],
//!  "paravirt":[{"address":N,"length":N,"table":S,"op":S,"backend":S,
//!               "decision":"inline"|"direct_call"|"nop"|"trap","entry":N,"why":S,
//!               "before":"hex","after":"hex"}],
//!  "totals":[{"capability":S,"applied":N,"not_applied":N}],
//!  "sites_changed":N,"bytes_changed":N,"pages":N,"elapsed_ns":N|null}
//! ```
//!
//! `sites` are the alternatives' sites and `paravirt` the paravirt sites, each sorted by
//! address; `entry` is the index of the chosen entry in its table (for a paravirt site, in its
//! table's entry section). `sites_changed`, `bytes_changed` and `pages` count both kinds.
//!
//! [`Report::sites`] keeps the alternatives' sites compactly ([`crate::sites::Sites`]: a few
//! dozen bytes a site, names looked up in the program's name tables when read); iterating it
//! (`for s in &report.sites`, `report.sites.iter()`, `report.sites.at(i)`) gives each as a
//! [`SiteReport`] value. A program with a hundred thousand sites pays for their reports' text
//! only when it prints them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::bytes::SiteBytes;
use crate::capability::{Capability, CapabilitySet};
use crate::paravirt::{PvDecision, PvSitePlan};
pub use crate::sites::SiteReport;
use crate::sites::Sites;

/// What was done at one paravirt site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvSiteReport {
    /// Address of the site.
    pub addr: u64,
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
    /// The decision.
    pub decision: PvDecision,
    /// Why, for people.
    pub why: String,
    /// The bytes before.
    pub before: SiteBytes,
    /// The bytes after.
    pub after: SiteBytes,
}

impl PvSiteReport {
    /// The report of a planned site of `table` for `backend`.
    pub fn from_plan(s: PvSitePlan, table: &'static str, backend: &'static str) -> Self {
        PvSiteReport {
            addr: s.write.addr,
            table,
            op: s.op,
            op_name: s.op_name,
            backend,
            entry: s.entry,
            decision: s.decision,
            why: s.why,
            before: s.write.original,
            after: s.write.new,
        }
    }

    /// `TABLE.op`.
    pub fn label(&self) -> String {
        format!("{}.{}", self.table, self.op_name)
    }

    /// Whether the site's bytes changed.
    pub fn changed(&self) -> bool {
        self.before != self.after
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The capabilities the plan was made for.
    pub capabilities: CapabilitySet,
    /// Every alternatives site, sorted by address (each read as a [`SiteReport`]).
    pub sites: Sites,
    /// Every paravirt site, sorted by address.
    pub paravirt: Vec<PvSiteReport>,
    /// Pages whose contents changed.
    pub pages: usize,
    /// Time taken, where a clock was available (hosted).
    pub elapsed_ns: Option<u64>,
}

fn diff(before: &[u8], after: &[u8]) -> usize {
    before.iter().zip(after).filter(|(a, b)| a != b).count()
}

impl Report {
    /// Sites whose bytes changed, of both kinds.
    pub fn sites_changed(&self) -> usize {
        self.sites.changes().count() + self.paravirt.iter().filter(|s| s.changed()).count()
    }

    /// Bytes that differ between before and after, over all sites.
    pub fn bytes_changed(&self) -> usize {
        let alt: usize = self.sites.changes().map(|c| diff(c.from, c.to)).sum();
        let pv: usize = self
            .paravirt
            .iter()
            .map(|s| diff(&s.before, &s.after))
            .sum();
        alt + pv
    }

    /// The alternatives site at `addr`.
    pub fn site(&self, addr: u64) -> Option<SiteReport> {
        self.sites.get(self.sites.position(addr)?)
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

    /// The report as one JSON object (see the [module documentation](self)).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"capabilities\":{\"features\":[");
        let names = |it: &mut dyn Iterator<Item = Capability>| {
            it.map(|c| json_str(c.name())).collect::<Vec<_>>().join(",")
        };
        let (feats, errata): (Vec<Capability>, Vec<Capability>) = self
            .capabilities
            .iter()
            .partition(|c| matches!(c.kind(), crate::CapabilityKind::Feature(_)));
        out.push_str(&names(&mut feats.into_iter()));
        out.push_str("],\"errata\":[");
        out.push_str(&names(&mut errata.into_iter()));
        out.push_str("]},\"sites\":[");
        let null = || String::from("null");
        let sites: Vec<String> = self
            .sites
            .iter()
            .map(|s| {
                format!(
                    "{{\"address\":{},\"length\":{},\"function\":{},\"capability\":{},\"variant\":{},\"decision\":\"{}\",\"entry\":{},\"why\":{},\"before\":\"{}\",\"after\":\"{}\"}}",
                    s.addr,
                    s.before.len(),
                    s.function.map_or_else(null, json_str),
                    s.capability().map_or_else(null, |c| json_str(c.name())),
                    json_str(&s.variant()),
                    s.decision(),
                    s.chosen().map_or_else(null, |c| format!("{}", c.entry)),
                    json_str(&s.why()),
                    Hex(&s.before),
                    Hex(&s.after),
                )
            })
            .collect();
        out.push_str(&sites.join(","));
        out.push_str("],\"paravirt\":[");
        let pv: Vec<String> = self
            .paravirt
            .iter()
            .map(|s| {
                format!(
                    "{{\"address\":{},\"length\":{},\"table\":{},\"op\":{},\"backend\":{},\"decision\":\"{}\",\"entry\":{},\"why\":{},\"before\":\"{}\",\"after\":\"{}\"}}",
                    s.addr,
                    s.before.len(),
                    json_str(s.table),
                    json_str(s.op_name),
                    json_str(s.backend),
                    s.decision.name(),
                    s.entry,
                    json_str(&s.why),
                    Hex(&s.before),
                    Hex(&s.after),
                )
            })
            .collect();
        out.push_str(&pv.join(","));
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
            self.elapsed_ns.map_or_else(null, |n| format!("{n}"))
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

pub use crate::bytes::Hex;

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

fn bytes_lines(f: &mut fmt::Formatter<'_>, before: &[u8], after: &[u8]) -> fmt::Result {
    if before != after {
        writeln!(f, "    before: {}", SpacedHex(before))?;
        writeln!(f, "    after:  {}", SpacedHex(after))?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paravirt decisions do not depend on capabilities: a report of paravirt sites alone
        // has no capabilities line.
        if !self.sites.is_empty() || self.paravirt.is_empty() {
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
            bytes_lines(f, &s.before, &s.after)?;
        }
        for s in &self.paravirt {
            writeln!(
                f,
                "site {:#x} {:>2}B {:<24} {:<11} {:<14} {}",
                s.addr,
                s.before.len(),
                s.label(),
                s.decision.name(),
                s.backend,
                s.why
            )?;
            bytes_lines(f, &s.before, &s.after)?;
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
            self.sites.len() + self.paravirt.len(),
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
