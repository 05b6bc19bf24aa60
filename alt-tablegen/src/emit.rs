//! Writing a paravirt table as a relocatable ELF object that is linked beside the code it
//! describes.
//!
//! The object holds one section, `alt_pv_<table>` ([`PV_SECTION_PREFIX`]), flags
//! `SHF_ALLOC | SHF_GNU_RETAIN`, 4-byte aligned, with one [`PvEntry`] per patchable call site
//! through the table. The entry's `site` field is 0 in the section data and carries an
//! `R_X86_64_PC32` relocation against a global symbol defined in the site's section (the
//! function holding the site, or the nearest global symbol before it) plus the site's distance
//! from that symbol, so the linker writes `site - .` and nothing else moves: no second link pass.
//!
//! The object also defines the global (hidden) symbol `__alt_pv_table_<table>_anchor` at the
//! start of the table. Pass the object **directly** to the linker (an object named on the
//! command line is always linked); if it is put in an archive, something must reference the
//! anchor, or the linker drops the member and the table with it.

use std::collections::HashMap;
use std::path::Path;

use alt_runtime::table::{Clobbers, PvEntry, PV_ENTRY_SIZE, PV_SECTION_PREFIX};
use object::write::{Object as WriteObject, Relocation, Symbol, SymbolSection};
use object::{
    elf, Architecture, BinaryFormat, Endianness, FileFlags, RelocationFlags, SectionFlags,
    SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

use crate::read::{Error, ErrorKind, Input, Location};
use crate::scan::{Anchor, Site};

/// `SHF_GNU_RETAIN`: keep the section through `--gc-sections`.
pub const SHF_GNU_RETAIN: u64 = 0x20_0000;

/// What to emit.
#[derive(Clone, Debug)]
pub struct EmitOptions {
    /// The operations table's name: the section is `alt_pv_<table>`. Must be a C identifier.
    pub table: String,
    /// The clobber set of every entry; `None` means [`Clobbers::C_ABI`], what an ordinary
    /// compiled call (C or `extern "C"` Rust) allows.
    pub clobbers: Option<Clobbers>,
}

/// A table object and what went into it.
#[derive(Clone, Debug)]
pub struct Emitted {
    /// The ELF relocatable object.
    pub object: Vec<u8>,
    /// The sites that have an entry, in entry order.
    pub entries: Vec<Site>,
    /// References that were not patchable calls through the table, so have no entry.
    pub skipped: Vec<Site>,
}

/// The section name of table `table`.
pub fn section_name(table: &str) -> String {
    format!("{PV_SECTION_PREFIX}{table}")
}

/// The name of the global symbol the table object defines.
pub fn anchor_symbol(table: &str) -> String {
    format!("__alt_pv_table_{table}_anchor")
}

fn is_c_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

fn site_location(site: &Site) -> Location {
    Location {
        file: site.file.clone().into(),
        member: site.member.clone(),
        section: Some(site.section.clone()),
        offset: Some(site.offset),
    }
}

/// Builds the table object for `sites` (from [`crate::scan`] over relocatable objects).
///
/// Patchable indirect calls and jumps through the table (`call_rip`, `call_abs32`, `jmp_rip`
/// with an addend that is a multiple of 8) become entries with `op = addend / 8`; every other
/// reference is returned in [`Emitted::skipped`].
pub fn emit_table(sites: &[Site], opts: &EmitOptions) -> Result<Emitted, Error> {
    let here = Location::default();
    if !is_c_identifier(&opts.table) {
        return Err(Error::new(
            here,
            ErrorKind::Other(format!(
                "table name {:?} is not a C identifier, so the linker would not define __start_/__stop_ symbols for its section",
                opts.table
            )),
        ));
    }
    let clobbers = opts.clobbers.unwrap_or(Clobbers::C_ABI).bits();
    let mut obj = WriteObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    // ELFOSABI_GNU, as the GNU assembler marks objects that use SHF_GNU_RETAIN.
    obj.flags = FileFlags::Elf {
        os_abi: elf::ELFOSABI_GNU,
        abi_version: 0,
        e_flags: 0,
    };
    let sec = obj.add_section(
        Vec::new(),
        section_name(&opts.table).into_bytes(),
        SectionKind::ReadOnlyData,
    );
    obj.section_mut(sec).flags = SectionFlags::Elf {
        sh_flags: u64::from(elf::SHF_ALLOC) | SHF_GNU_RETAIN,
    };
    // An empty .note.GNU-stack: the table needs no executable stack.
    obj.add_section(
        Vec::new(),
        b".note.GNU-stack".to_vec(),
        SectionKind::Elf(elf::SHT_PROGBITS),
    );

    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut data = Vec::new();
    let mut relocs = Vec::new();
    for site in sites {
        let op = match site.op {
            Some(op) if site.patchable && site.form.is_table_call() => op,
            _ => {
                skipped.push(site.clone());
                continue;
            }
        };
        let op = u8::try_from(op).map_err(|_| {
            Error::new(
                site_location(site),
                ErrorKind::Other(format!(
                    "operation index {op} does not fit in a table entry (max 255)"
                )),
            )
        })?;
        let site_len = u8::try_from(site.length).unwrap_or(u8::MAX);
        let (name, delta) = match &site.anchor {
            Anchor::Symbol { name, delta } => (name.clone(), *delta),
            Anchor::Unavailable(why) => {
                return Err(Error::new(
                    site_location(site),
                    ErrorKind::Unanchorable(format!(
                        "cannot refer to this site from a table object: {why}"
                    )),
                ))
            }
        };
        let entry = PvEntry {
            site: 0,
            op,
            site_len,
            clobbers,
        };
        relocs.push((data.len() as u64, name, delta));
        data.extend_from_slice(&entry.to_bytes());
        entries.push(site.clone());
    }
    debug_assert_eq!(data.len(), entries.len() * PV_ENTRY_SIZE);
    obj.set_section_data(sec, data, 4);

    obj.add_symbol(Symbol {
        name: anchor_symbol(&opts.table).into_bytes(),
        value: 0,
        size: 0,
        kind: SymbolKind::Data,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(sec),
        flags: SymbolFlags::None,
    });
    let mut symbols = HashMap::new();
    for (offset, name, delta) in relocs {
        let symbol = *symbols.entry(name.clone()).or_insert_with(|| {
            obj.add_symbol(Symbol {
                name: name.into_bytes(),
                value: 0,
                size: 0,
                kind: SymbolKind::Unknown,
                scope: SymbolScope::Dynamic,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            })
        });
        obj.add_relocation(
            sec,
            Relocation {
                offset,
                symbol,
                addend: delta,
                flags: RelocationFlags::Elf {
                    r_type: elf::R_X86_64_PC32,
                },
            },
        )
        .map_err(|e| Error::new(Location::default(), ErrorKind::Other(e.to_string())))?;
    }
    let object = obj
        .write()
        .map_err(|e| Error::new(Location::default(), ErrorKind::Other(e.to_string())))?;
    Ok(Emitted {
        object,
        entries,
        skipped,
    })
}

/// Scans relocatable `paths` for references to `symbol` and builds the table object.
///
/// A final binary is refused ([`ErrorKind::NotRelocatable`]): its sites already have addresses,
/// and a table for it would need a second link.
pub fn emit_files<P: AsRef<Path>>(
    paths: &[P],
    symbol: &str,
    opts: &EmitOptions,
) -> Result<Emitted, Error> {
    let mut sites = Vec::new();
    for p in paths {
        let input = Input::open(p)?;
        for obj in input.objects()? {
            if obj.kind.is_final() {
                return Err(Error::new(obj.location(), ErrorKind::NotRelocatable));
            }
            sites.extend(crate::scan::scan_object(&obj, &[symbol])?);
        }
    }
    emit_table(&sites, opts)
}

/// Parses a clobber set: `c_abi`, a list of register names separated by `,` or `|`
/// (`rax`, `rcx`, `rdx`, `rsi`, `rdi`, `r8`..`r11`, `vector`), or a number (`0x1ff`).
pub fn parse_clobbers(s: &str) -> Result<Clobbers, String> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x") {
        return u16::from_str_radix(hex, 16)
            .map(Clobbers::from_bits_retain)
            .map_err(|e| format!("clobbers {s:?}: {e}"));
    }
    if let Ok(n) = s.parse::<u16>() {
        return Ok(Clobbers::from_bits_retain(n));
    }
    let mut set = Clobbers::empty();
    for name in s.split([',', '|']).map(str::trim).filter(|n| !n.is_empty()) {
        let upper = name.to_ascii_uppercase();
        let flag = Clobbers::from_name(&upper)
            .ok_or_else(|| format!("unknown clobber {name:?} (expected c_abi, rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11, vector or a number)"))?;
        set |= flag;
    }
    Ok(set)
}
