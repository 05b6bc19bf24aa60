//! Reading, verifying and planning the tables of a built binary: `alt_instr`,
//! `alt_replacement` and every `alt_pv_<table>`.
//!
//! Self-relative fields are resolved with the section's virtual address plus the entry's
//! offset (the address the runtime would see), using the layouts of [`alt_runtime::table`].

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use alt_runtime::isa::{Aarch64, X86_64};
use alt_runtime::memory::{Memory, MemoryError};
use alt_runtime::paravirt::validate::check_site;
use alt_runtime::paravirt::PvTableEntry;
use alt_runtime::plan::{plan_alternatives_for, Choice, Layout, TableEntry};
use alt_runtime::table::{
    AltEntry, AltFlags, PvEntry, ALT_ENTRY_SIZE, ALT_INSTR_SECTION, ALT_REPLACEMENT_SECTION,
    PV_ENTRY_SIZE, PV_SECTION_PREFIX,
};
use alt_runtime::{Capability, CapabilitySet};
use object::elf;
use object::read::elf::SectionHeader;
use serde::Serialize;

use crate::read::{Error, ErrorKind, Machine, Object, LE};
use crate::scan::to_hex;

/// One alternative entry, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct AltRecord {
    /// Index in `alt_instr`.
    pub index: usize,
    /// Virtual address of the entry.
    pub entry_addr: u64,
    /// Address of the site.
    pub site: u64,
    /// Address of the replacement (or of the call target, for a direct call).
    pub replacement: u64,
    /// Site length.
    pub site_len: u8,
    /// Replacement length.
    pub replacement_len: u8,
    /// Capability id.
    pub capability_id: u16,
    /// Capability name, or `None` for an unknown id.
    pub capability: Option<&'static str>,
    /// The entry holds when the capability is absent.
    pub not: bool,
    /// The site becomes a direct call to `replacement`.
    pub direct_call: bool,
    /// The raw `key` field.
    pub key: u16,
    /// Site bytes as hex (empty if the site is not in the file).
    pub site_bytes: String,
    /// Replacement bytes as hex (empty for a direct call or if not in the file).
    pub replacement_bytes: String,
    #[serde(skip)]
    entry: AltEntry,
}

/// One paravirt entry, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct PvRecord {
    /// The table name (the section name without `alt_pv_`).
    pub table: String,
    /// Index in the table's section.
    pub index: usize,
    /// Virtual address of the entry.
    pub entry_addr: u64,
    /// Address of the site.
    pub site: u64,
    /// Site length.
    pub site_len: u8,
    /// Operation index.
    pub op: u8,
    /// Clobber bits.
    pub clobbers: u16,
    /// Site bytes as hex.
    pub site_bytes: String,
}

/// Every table of a binary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tables {
    /// `alt_instr` entries, in table order.
    pub alt: Vec<AltRecord>,
    /// `alt_pv_*` entries, per table in section order, then table order.
    pub pv: Vec<PvRecord>,
    /// Address range of `alt_replacement`, if present.
    #[serde(skip)]
    replacement_range: Option<(u64, u64)>,
}

fn section_by_name(obj: &Object<'_>, name: &str) -> Option<usize> {
    (1..obj.section_count()).find(|&i| obj.section_name(i) == name)
}

/// The bytes at virtual address `addr..addr+len` of an allocated section with contents, and
/// whether that section is executable.
fn bytes_at<'d>(obj: &Object<'d>, addr: u64, len: u64) -> Option<(&'d [u8], bool)> {
    for (i, h) in obj.section_headers() {
        let flags = h.sh_flags(LE);
        if flags & u64::from(elf::SHF_ALLOC) == 0 || h.sh_type(LE) == elf::SHT_NOBITS {
            continue;
        }
        let start = h.sh_addr(LE);
        let Some(off) = addr.checked_sub(start) else {
            continue;
        };
        let Some(end) = off.checked_add(len) else {
            continue;
        };
        if end > h.sh_size(LE) {
            continue;
        }
        let data = obj.section_data(i).ok()?;
        let bytes = data.get(off as usize..end as usize)?;
        return Some((bytes, flags & u64::from(elf::SHF_EXECINSTR) != 0));
    }
    None
}

impl Tables {
    /// Reads every table of a linked binary.
    pub fn read(obj: &Object<'_>) -> Result<Self, Error> {
        if !obj.kind.is_final() {
            return Err(Error::new(obj.location(), ErrorKind::NotLinked));
        }
        let mut t = Tables::default();
        if let Some(i) = section_by_name(obj, ALT_REPLACEMENT_SECTION) {
            if let Some(h) = obj.section_header(i) {
                t.replacement_range = Some((h.sh_addr(LE), h.sh_size(LE)));
            }
        }
        for i in 1..obj.section_count() {
            let name = obj.section_name(i);
            let Some(h) = obj.section_header(i) else {
                continue;
            };
            let base = h.sh_addr(LE);
            if name == ALT_INSTR_SECTION {
                let data = obj.section_data(i)?;
                if data.len() % ALT_ENTRY_SIZE != 0 {
                    return Err(Error::malformed(
                        obj.section_location(i),
                        format!(
                            "size {:#x} is not a multiple of {ALT_ENTRY_SIZE}",
                            data.len()
                        ),
                    ));
                }
                for (index, chunk) in data.chunks_exact(ALT_ENTRY_SIZE).enumerate() {
                    let Ok(b) = <&[u8; ALT_ENTRY_SIZE]>::try_from(chunk) else {
                        continue;
                    };
                    if b.iter().all(|&x| x == 0) {
                        // A placeholder that keeps an empty table's section defined.
                        continue;
                    }
                    let entry = AltEntry::from_bytes(b);
                    let entry_addr = base.wrapping_add((index * ALT_ENTRY_SIZE) as u64);
                    let site = entry.site_addr(entry_addr);
                    let replacement = entry.replacement_addr(entry_addr);
                    let flags = entry.flags();
                    let direct_call = flags.contains(AltFlags::DIRECT_CALL);
                    let site_bytes = bytes_at(obj, site, entry.site_len.into())
                        .map(|(b, _)| to_hex(b))
                        .unwrap_or_default();
                    let replacement_bytes = if direct_call {
                        String::new()
                    } else {
                        bytes_at(obj, replacement, entry.replacement_len.into())
                            .map(|(b, _)| to_hex(b))
                            .unwrap_or_default()
                    };
                    t.alt.push(AltRecord {
                        index,
                        entry_addr,
                        site,
                        replacement,
                        site_len: entry.site_len,
                        replacement_len: entry.replacement_len,
                        capability_id: entry.capability_id(),
                        capability: Capability::from_id(entry.capability_id()).map(|c| c.name()),
                        not: flags.contains(AltFlags::NOT),
                        direct_call,
                        key: entry.key,
                        site_bytes,
                        replacement_bytes,
                        entry,
                    });
                }
            } else if let Some(table) = name.strip_prefix(PV_SECTION_PREFIX) {
                if h.sh_type(LE) == elf::SHT_RELA || h.sh_type(LE) == elf::SHT_REL {
                    continue;
                }
                let data = obj.section_data(i)?;
                if data.len() % PV_ENTRY_SIZE != 0 {
                    return Err(Error::malformed(
                        obj.section_location(i),
                        format!(
                            "size {:#x} is not a multiple of {PV_ENTRY_SIZE}",
                            data.len()
                        ),
                    ));
                }
                for (index, chunk) in data.chunks_exact(PV_ENTRY_SIZE).enumerate() {
                    let Ok(b) = <&[u8; PV_ENTRY_SIZE]>::try_from(chunk) else {
                        continue;
                    };
                    if b.iter().all(|&x| x == 0) {
                        // A placeholder that keeps an empty table's section defined.
                        continue;
                    }
                    let entry = PvEntry::from_bytes(b);
                    let entry_addr = base.wrapping_add((index * PV_ENTRY_SIZE) as u64);
                    let site = entry.site_addr(entry_addr);
                    t.pv.push(PvRecord {
                        table: table.to_string(),
                        index,
                        entry_addr,
                        site,
                        site_len: entry.site_len,
                        op: entry.op,
                        clobbers: entry.clobbers,
                        site_bytes: bytes_at(obj, site, entry.site_len.into())
                            .map(|(b, _)| to_hex(b))
                            .unwrap_or_default(),
                    });
                }
            }
        }
        Ok(t)
    }

    /// The tables as JSON: `{"alt":[...],"pv":[...]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The tables in human-readable form.
    pub fn format_human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{ALT_INSTR_SECTION}: {} entries", self.alt.len());
        for a in &self.alt {
            let cap = a.capability.unwrap_or("<unknown>");
            let mut flags = Vec::new();
            if a.not {
                flags.push("not");
            }
            if a.direct_call {
                flags.push("direct_call");
            }
            let _ = writeln!(
                s,
                "  [{}] entry {:#x}: site {:#x} len {} -> {} {:#x} len {} if {}{} ({:#05x}) site [{}] replacement [{}]",
                a.index,
                a.entry_addr,
                a.site,
                a.site_len,
                if a.direct_call { "call" } else { "replacement" },
                a.replacement,
                a.replacement_len,
                if a.not { "!" } else { "" },
                cap,
                a.capability_id,
                a.site_bytes,
                a.replacement_bytes,
            );
        }
        let mut last = None;
        for p in &self.pv {
            if last != Some(&p.table) {
                let n = self.pv.iter().filter(|q| q.table == p.table).count();
                let _ = writeln!(s, "{PV_SECTION_PREFIX}{}: {n} entries", p.table);
                last = Some(&p.table);
            }
            let _ = writeln!(
                s,
                "  [{}] entry {:#x}: site {:#x} len {} op {} clobbers {:#x} site [{}]",
                p.index, p.entry_addr, p.site, p.site_len, p.op, p.clobbers, p.site_bytes
            );
        }
        s
    }
}

/// A table entry that fails verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The section: `alt_instr` or `alt_pv_<table>`.
    pub table: String,
    /// The entry's index in it.
    pub index: usize,
    /// The entry's address.
    pub entry_addr: u64,
    /// The site's address.
    pub site: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}] at {:#x} (site {:#x}): {}",
            self.table, self.index, self.entry_addr, self.site, self.reason
        )
    }
}

/// The binary's code and data as the runtime's validator reads them: by virtual address, from
/// the allocated sections with contents.
struct FileMemory<'a, 'd> {
    obj: &'a Object<'d>,
}

impl Memory for FileMemory<'_, '_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let (bytes, _) = bytes_at(self.obj, addr, buf.len() as u64).ok_or(MemoryError { addr })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// The layout the runtime would patch the binary with: its executable sections (without the
/// replacement section) and the replacement section.
fn layout_of(obj: &Object<'_>, tables: &Tables) -> (Vec<Range<u64>>, Range<u64>) {
    let replacements = tables
        .replacement_range
        .map_or(0..0, |(start, size)| start..start + size);
    let text = obj
        .section_headers()
        .filter(|(_, h)| {
            let flags = h.sh_flags(LE);
            flags & u64::from(elf::SHF_ALLOC) != 0 && flags & u64::from(elf::SHF_EXECINSTR) != 0
        })
        .map(|(_, h)| h.sh_addr(LE)..h.sh_addr(LE) + h.sh_size(LE))
        .filter(|r| r.start != replacements.start || r.is_empty())
        .collect();
    (text, replacements)
}

/// The address and number of operations of the paravirt table `name` (its symbol: 8 bytes per
/// operation).
fn table_symbol(obj: &Object<'_>, name: &str) -> Option<(u64, usize)> {
    obj.symbols()
        .iter()
        .find(|s| obj.symbol_name(s) == Some(name.as_bytes()) && s.st_shndx.get(LE) != 0)
        .map(|s| (s.st_value.get(LE), (s.st_size.get(LE) / 8) as usize))
}

/// Where the paravirt table `name` is when no symbol of that name exists (a table emitted by
/// `alt-tablegen` for a symbol of another name): the slot its sites call through, less 8 per
/// operation, as most of its sites say (the runtime then checks every site against it). Its
/// size is unknown: any operation index is accepted.
fn inferred_table(obj: &Object<'_>, tables: &Tables, name: &str) -> Option<(u64, usize)> {
    let mut votes: HashMap<u64, usize> = HashMap::new();
    for p in tables.pv.iter().filter(|p| p.table == name) {
        let Some((bytes, _)) = bytes_at(obj, p.site, p.site_len.into()) else {
            continue;
        };
        let nops = bytes.iter().take_while(|&&b| b == 0x90).count();
        let at = p.site + nops as u64;
        if let Some((_, _, slot)) = alt_runtime::paravirt::SiteForm::of(&bytes[nops..], at) {
            *votes
                .entry(slot.wrapping_sub(8 * u64::from(p.op)))
                .or_default() += 1;
        }
    }
    let (addr, _) = votes
        .into_iter()
        .max_by_key(|&(a, n)| (n, core::cmp::Reverse(a)))?;
    Some((addr, 256))
}

fn alt_entries(tables: &Tables) -> Vec<TableEntry> {
    tables
        .alt
        .iter()
        .map(|a| TableEntry {
            addr: a.entry_addr,
            entry: a.entry,
        })
        .collect()
}

/// The runtime's plan of the alternatives for `caps`, with the binary's instruction set.
fn plan_for(
    obj: &Object<'_>,
    entries: &[TableEntry],
    layout: &Layout<'_>,
    caps: &CapabilitySet,
) -> Result<alt_runtime::plan::Plan, alt_runtime::plan::TableError> {
    let mem = FileMemory { obj };
    match obj.machine {
        Machine::Aarch64 => plan_alternatives_for::<Aarch64, _>(entries, layout, caps, &mem),
        Machine::X86_64 => plan_alternatives_for::<X86_64, _>(entries, layout, caps, &mem),
    }
}

/// Verifies every entry with the runtime's own validator, so that this tool and the runtime
/// accept and refuse exactly the same sites. An empty result means the tables are valid.
///
/// Alternatives go through the runtime's planner (`alt_runtime::plan`: every check it makes
/// before writing, the return-address rule included), planned for no capability and for every
/// capability so that each entry's code is checked; an entry it refuses is reported and set
/// aside, and the rest planned again, so that every bad entry is named. Paravirt entries go
/// through `alt_runtime::paravirt::validate::check_site` with the table's address and size
/// from its symbol. Sites of different tables must not overlap (`driver::first_overlap`).
pub fn verify(obj: &Object<'_>, tables: &Tables) -> Vec<Problem> {
    let mut problems = Vec::new();
    let (text, replacements) = layout_of(obj, tables);
    let layout = Layout {
        text: &text,
        replacements,
    };
    let mut entries = alt_entries(tables);
    let placeholder = TableEntry {
        addr: 0,
        entry: AltEntry::from_bytes(&[0; ALT_ENTRY_SIZE]),
    };
    let mut refused = std::collections::BTreeSet::new();
    let mut sites: Vec<Range<u64>> = Vec::new();
    let every = CapabilitySet::new(alt_runtime::Features::all(), alt_runtime::Errata::all());
    for caps in [CapabilitySet::default(), every] {
        loop {
            match plan_for(obj, &entries, &layout, &caps) {
                Ok(plan) => {
                    sites = plan.sites.iter().map(|s| s.range()).collect();
                    break;
                }
                Err(e) => {
                    if refused.insert(e.index) {
                        problems.push(Problem {
                            table: ALT_INSTR_SECTION.to_string(),
                            index: e.index,
                            entry_addr: e.entry_addr,
                            site: e.site,
                            reason: e.kind.to_string(),
                        });
                    }
                    entries[e.index] = placeholder;
                }
            }
        }
    }
    let mem = FileMemory { obj };
    let mut owner: HashMap<u64, (String, usize, u64)> = HashMap::new();
    for a in tables.alt.iter().filter(|a| !refused.contains(&a.index)) {
        owner
            .entry(a.site)
            .or_insert((ALT_INSTR_SECTION.to_string(), a.index, a.entry_addr));
    }
    for p in &tables.pv {
        let table = format!("{PV_SECTION_PREFIX}{}", p.table);
        let Some((addr, ops)) =
            table_symbol(obj, &p.table).or_else(|| inferred_table(obj, tables, &p.table))
        else {
            problems.push(Problem {
                table,
                index: p.index,
                entry_addr: p.entry_addr,
                site: p.site,
                reason: format!(
                    "no symbol {} for the table in the binary, and no site says where it is",
                    p.table
                ),
            });
            continue;
        };
        let name: &'static str = "table";
        let entry = PvTableEntry {
            addr: p.entry_addr,
            entry: PvEntry {
                site: alt_runtime::table::relative(p.entry_addr, p.site).unwrap_or(0),
                op: p.op,
                site_len: p.site_len,
                clobbers: p.clobbers,
            },
        };
        match check_site(name, addr, ops, p.index, &entry, &layout, &mem) {
            Ok(v) => {
                sites.push(v.site);
                owner.insert(p.site, (table, p.index, p.entry_addr));
            }
            Err(e) => problems.push(Problem {
                table,
                index: p.index,
                entry_addr: p.entry_addr,
                site: p.site,
                reason: e.kind.to_string(),
            }),
        }
    }
    while let Some((first, second)) = alt_runtime::driver::first_overlap(&mut sites) {
        let (table, index, entry_addr) = owner.get(&second).cloned().unwrap_or_default();
        let (other_table, other_index, _) = owner.get(&first).cloned().unwrap_or_default();
        problems.push(Problem {
            table,
            index,
            entry_addr,
            site: second,
            reason: format!("site overlaps the site at {first:#x} of {other_table}[{other_index}]"),
        });
        sites.retain(|r| r.start != second);
    }
    problems.sort_by(|x, y| (&x.table, x.index).cmp(&(&y.table, y.index)));
    problems
}

pub use crate::cpuspec::CpuSpec;

/// The decision for one alternative site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteDecision {
    /// Site address.
    pub site: u64,
    /// Site length.
    pub site_len: u8,
    /// Indices (in `alt_instr`) of the site's entries, in table order.
    pub entries: Vec<usize>,
    /// The entry applied: the first that holds. `None`: the site keeps its default code.
    pub chosen: Option<usize>,
    /// What the site becomes, in words.
    pub outcome: String,
}

/// Plans every alternative site for a CPU with the runtime's own planner (the priority rule of
/// [`alt_runtime::table`]: the first entry in table order that holds is applied; if none holds,
/// the site keeps its default code). A table the runtime would refuse is refused here too.
pub fn plan(
    obj: &Object<'_>,
    tables: &Tables,
    cpu: &CpuSpec,
) -> Result<Vec<SiteDecision>, alt_runtime::plan::TableError> {
    let (text, replacements) = layout_of(obj, tables);
    let layout = Layout {
        text: &text,
        replacements,
    };
    let plan = plan_for(obj, &alt_entries(tables), &layout, &cpu.capabilities())?;
    Ok(plan
        .sites
        .iter()
        .map(|s| {
            let record = |entry: usize| &tables.alt[entry];
            let outcome = match s.chosen() {
                None => "default code".to_string(),
                Some(c) => {
                    let a = record(c.entry);
                    let cond = format!("{}{}", if c.negated { "!" } else { "" }, c.capability);
                    match s.choice {
                        Choice::DirectCall { target, .. } => {
                            format!("call {target:#x} (alt_instr[{}], {cond})", a.index)
                        }
                        _ => format!(
                            "replacement {:#x} len {} (alt_instr[{}], {cond})",
                            a.replacement, a.replacement_len, a.index
                        ),
                    }
                }
            };
            SiteDecision {
                site: s.addr,
                site_len: s.before.len() as u8,
                entries: s.candidates.iter().map(|c| c.entry).collect(),
                chosen: s.chosen().map(|c| c.entry),
                outcome,
            }
        })
        .collect())
}
