//! Reading, verifying and planning the tables of a built binary: `alt_instr`,
//! `alt_replacement` and every `alt_pv_<table>`.
//!
//! Self-relative fields are resolved with the section's virtual address plus the entry's
//! offset (the address the runtime would see), using the layouts of [`alt_runtime::table`].

use std::collections::HashMap;
use std::fmt;

use alt_runtime::table::{
    AltEntry, AltFlags, PvEntry, ALT_ENTRY_SIZE, ALT_INSTR_SECTION, ALT_REPLACEMENT_SECTION,
    KEY_RESERVED_MASK, PV_ENTRY_SIZE, PV_SECTION_PREFIX,
};
use alt_runtime::{Capability, Clobbers};
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};
use object::elf;
use object::read::elf::SectionHeader;
use serde::Serialize;

use crate::read::{Error, ErrorKind, Object, LE};
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

/// Checks that `bytes` (at `ip`) decode into whole instructions that end exactly at the end.
fn whole_instructions(bytes: &[u8], ip: u64) -> Result<(), String> {
    let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        let at = d.position();
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(if d.last_error() == DecoderError::NoMoreBytes {
                format!(
                    "the instruction at +{at} runs past the end ({} bytes)",
                    bytes.len()
                )
            } else {
                format!("invalid instruction at +{at}")
            });
        }
    }
    Ok(())
}

/// Verifies every entry. An empty result means the tables are valid.
///
/// Alternative entries: site inside an executable section; replacement inside
/// `alt_replacement` (for [`AltFlags::DIRECT_CALL`]: the target inside an executable section,
/// `replacement_len` 0 and `site_len >= 5`); `replacement_len <= site_len`; a known capability;
/// reserved flag bits zero; site and replacement bytes decode into whole instructions.
/// Paravirt entries: site inside an executable section, `site_len >= 5`, known clobber bits,
/// whole instructions. All entries: entries for one site agree on its length, and distinct
/// sites do not overlap.
pub fn verify(obj: &Object<'_>, tables: &Tables) -> Vec<Problem> {
    let mut problems = Vec::new();
    // Every distinct site: address -> (length, table, index).
    let mut sites: HashMap<u64, (u8, String, usize)> = HashMap::new();
    let mut note =
        |problems: &mut Vec<Problem>, table: &str, index, entry_addr, site, len| match sites
            .get(&site)
        {
            Some((l, t, i)) if *l != len => problems.push(Problem {
                table: table.to_string(),
                index,
                entry_addr,
                site,
                reason: format!("site length {len} disagrees with {t}[{i}], which says {l}"),
            }),
            Some(_) => {}
            None => {
                sites.insert(site, (len, table.to_string(), index));
            }
        };
    for a in &tables.alt {
        let mut bad = |reason: String| {
            problems.push(Problem {
                table: ALT_INSTR_SECTION.to_string(),
                index: a.index,
                entry_addr: a.entry_addr,
                site: a.site,
                reason,
            })
        };
        let e = &a.entry;
        match bytes_at(obj, a.site, e.site_len.into()) {
            Some((bytes, true)) => {
                if let Err(why) = whole_instructions(bytes, a.site) {
                    bad(format!(
                        "site bytes do not decode into whole instructions: {why}"
                    ));
                }
            }
            _ => bad(format!(
                "site {:#x}..{:#x} is not inside an executable section",
                a.site,
                a.site.wrapping_add(e.site_len.into())
            )),
        }
        if e.site_len == 0 {
            bad("site length is 0".into());
        }
        if Capability::from_id(e.capability_id()).is_none() {
            bad(format!("unknown capability id {:#05x}", e.capability_id()));
        }
        if e.key & KEY_RESERVED_MASK != 0 {
            bad(format!(
                "reserved flag bits {:#06x} are set in key {:#06x}",
                e.key & KEY_RESERVED_MASK,
                e.key
            ));
        }
        if a.direct_call {
            if e.site_len < 5 {
                bad(format!(
                    "a direct call needs a site of at least 5 bytes, the site has {}",
                    e.site_len
                ));
            }
            if e.replacement_len != 0 {
                bad(format!(
                    "a direct call has replacement length 0, this entry says {}",
                    e.replacement_len
                ));
            }
            if !matches!(bytes_at(obj, a.replacement, 1), Some((_, true))) {
                bad(format!(
                    "call target {:#x} is not inside an executable section",
                    a.replacement
                ));
            }
        } else {
            if e.replacement_len > e.site_len {
                bad(format!(
                    "replacement ({} bytes) is longer than the site ({} bytes)",
                    e.replacement_len, e.site_len
                ));
            }
            let inside = tables.replacement_range.is_some_and(|(start, size)| {
                a.replacement >= start
                    && a.replacement - start <= size
                    && size - (a.replacement - start) >= u64::from(e.replacement_len)
            });
            if !inside {
                bad(format!(
                    "replacement {:#x}..{:#x} is not inside {ALT_REPLACEMENT_SECTION}",
                    a.replacement,
                    a.replacement.wrapping_add(e.replacement_len.into())
                ));
            } else if let Some((bytes, _)) = bytes_at(obj, a.replacement, e.replacement_len.into())
            {
                if let Err(why) = whole_instructions(bytes, a.replacement) {
                    bad(format!(
                        "replacement bytes do not decode into whole instructions: {why}"
                    ));
                }
            }
        }
        note(
            &mut problems,
            ALT_INSTR_SECTION,
            a.index,
            a.entry_addr,
            a.site,
            e.site_len,
        );
    }
    for p in &tables.pv {
        let table = format!("{PV_SECTION_PREFIX}{}", p.table);
        let mut bad = |reason: String| {
            problems.push(Problem {
                table: table.clone(),
                index: p.index,
                entry_addr: p.entry_addr,
                site: p.site,
                reason,
            })
        };
        match bytes_at(obj, p.site, p.site_len.into()) {
            Some((bytes, true)) => {
                if let Err(why) = whole_instructions(bytes, p.site) {
                    bad(format!(
                        "site bytes do not decode into whole instructions: {why}"
                    ));
                }
            }
            _ => bad(format!(
                "site {:#x}..{:#x} is not inside an executable section",
                p.site,
                p.site.wrapping_add(p.site_len.into())
            )),
        }
        if p.site_len < 5 {
            bad(format!(
                "a paravirt site needs at least 5 bytes (a direct call), the site has {}",
                p.site_len
            ));
        }
        if Clobbers::from_bits(p.clobbers).is_none() {
            bad(format!("unknown clobber bits in {:#06x}", p.clobbers));
        }
        note(
            &mut problems,
            &table,
            p.index,
            p.entry_addr,
            p.site,
            p.site_len,
        );
    }
    // Distinct sites must not overlap.
    let mut ordered: Vec<(u64, u8, String, usize)> = sites
        .into_iter()
        .map(|(addr, (len, t, i))| (addr, len, t, i))
        .collect();
    ordered.sort();
    for w in ordered.windows(2) {
        let (a, alen, at, ai) = &w[0];
        let (b, _, bt, bi) = &w[1];
        if a.saturating_add(u64::from(*alen)) > *b {
            let entry_addr = tables
                .alt
                .iter()
                .find(|x| ALT_INSTR_SECTION == bt && x.index == *bi)
                .map(|x| x.entry_addr)
                .or_else(|| {
                    tables
                        .pv
                        .iter()
                        .find(|x| {
                            format!("{PV_SECTION_PREFIX}{}", x.table) == *bt && x.index == *bi
                        })
                        .map(|x| x.entry_addr)
                })
                .unwrap_or(0);
            problems.push(Problem {
                table: bt.clone(),
                index: *bi,
                entry_addr,
                site: *b,
                reason: format!("site overlaps the site at {a:#x} (length {alen}) of {at}[{ai}]"),
            });
        }
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

/// Plans every alternative site for a CPU, by the priority rule of [`alt_runtime::table`]:
/// the first entry in table order that holds (capability present, or absent with
/// [`AltFlags::NOT`]) is applied; if none holds, the site keeps its default code.
pub fn plan(tables: &Tables, cpu: &CpuSpec) -> Vec<SiteDecision> {
    let caps = cpu.capabilities();
    let mut order: Vec<u64> = Vec::new();
    let mut by_site: HashMap<u64, Vec<&AltRecord>> = HashMap::new();
    for a in &tables.alt {
        by_site
            .entry(a.site)
            .or_insert_with(|| {
                order.push(a.site);
                Vec::new()
            })
            .push(a);
    }
    order
        .into_iter()
        .map(|site| {
            let entries = by_site.remove(&site).unwrap_or_default();
            let chosen = entries.iter().find(|a| {
                Capability::from_id(a.capability_id).is_some_and(|c| caps.has(c) != a.not)
            });
            let outcome = match chosen {
                None => "default code".to_string(),
                Some(a) => {
                    let cond = format!(
                        "{}{}",
                        if a.not { "!" } else { "" },
                        a.capability.unwrap_or("?")
                    );
                    if a.direct_call {
                        format!("call {:#x} (alt_instr[{}], {cond})", a.replacement, a.index)
                    } else {
                        format!(
                            "replacement {:#x} len {} (alt_instr[{}], {cond})",
                            a.replacement, a.replacement_len, a.index
                        )
                    }
                }
            };
            SiteDecision {
                site,
                site_len: entries.first().map_or(0, |a| a.site_len),
                entries: entries.iter().map(|a| a.index).collect(),
                chosen: chosen.map(|a| a.index),
                outcome,
            }
        })
        .collect()
}
