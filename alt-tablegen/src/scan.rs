//! Finding the references to given symbols in executable sections, and classifying each by the
//! instruction it sits in.
//!
//! For every relocation in a section with `SHF_EXECINSTR` whose symbol is one of the requested
//! names (directly, or a section symbol plus addend that resolves inside the symbol's extent),
//! the instruction that holds the relocated field is decoded with `iced-x86` and classified as a
//! [`Form`]. Decoding always starts at a known instruction boundary: the start of the section,
//! or the start or end of a function symbol (`STT_FUNC` with a size).
//!
//! The scan is linear in the size of the input: relocations of interest are filtered first,
//! sorted per section, and each section is decoded once, from one boundary to the next
//! relocation of interest, with a cursor that only moves forward (a two-pointer walk over the
//! sorted relocations and the sorted boundaries). Code nobody refers to is never decoded.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use iced_x86::{ConstantOffsets, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use object::elf;
use object::read::elf::{Rela, SectionHeader, Sym};
use serde::Serialize;

use crate::read::{Error, ErrorKind, Input, Object, LE};

/// The instruction form of a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `call *sym+disp(%rip)`: `ff 15` disp32, 6 bytes. Patchable.
    CallRip,
    /// `call *sym+disp` with an absolute 32-bit address: `ff 14 25` disp32, 7 bytes. Patchable.
    CallAbs32,
    /// `jmp *sym+disp(%rip)` (an indirect tail call): `ff 25` disp32, 6 bytes. Patchable.
    JmpRip,
    /// `call sym`: `e8` rel32, 5 bytes. A direct call, not through a table slot: the runtime
    /// has nothing to patch it from, so not patchable.
    CallRel32,
    /// `jmp sym` (a direct tail call): `e9` rel32, 5 bytes. Not patchable, like `CallRel32`.
    JmpRel32,
    /// A memory read through the symbol (`mov sym(%rip), %rax`, a GOT load under `-fPIC`, any
    /// other instruction reading memory at the symbol).
    Load,
    /// A `mov` that writes to memory at the symbol.
    Store,
    /// The symbol's address taken: `lea sym(%rip), %rax`, or an immediate (`mov $sym, %eax`).
    Address,
    /// Any other instruction (a prefixed or conditional branch, a relocation in a data field).
    Other,
    /// No instruction could be decoded at the relocation: the bytes before it are not code, or
    /// the relocated field does not lie inside one instruction.
    Undecodable,
}

impl Form {
    /// The short name used in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Self::CallRip => "call_rip",
            Self::CallAbs32 => "call_abs32",
            Self::JmpRip => "jmp_rip",
            Self::CallRel32 => "call_rel32",
            Self::JmpRel32 => "jmp_rel32",
            Self::Load => "load",
            Self::Store => "store",
            Self::Address => "address",
            Self::Other => "other",
            Self::Undecodable => "undecodable",
        }
    }

    /// Whether a site of this form can be patched: exactly the forms the runtime's paravirt
    /// validator accepts (`alt_runtime::paravirt::SiteForm`), a call or tail jump through a
    /// table slot. `emit` writes entries for these only.
    pub fn is_patchable(self) -> bool {
        self.is_table_call()
    }

    /// Whether this is an indirect call or jump through a memory slot (an operations table).
    pub fn is_table_call(self) -> bool {
        matches!(self, Self::CallRip | Self::CallAbs32 | Self::JmpRip)
    }
}

/// How a table object refers to a site in a relocatable object: through a global symbol
/// defined in the same section, plus the distance from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// `site = symbol + delta`.
    Symbol {
        /// A global symbol defined in the site's section.
        name: String,
        /// The site's offset minus the symbol's.
        delta: i64,
    },
    /// No symbol another object could use; the string says why.
    Unavailable(String),
}

/// One reference to a requested symbol.
#[derive(Clone, Debug, Serialize)]
pub struct Site {
    /// The input file.
    pub file: String,
    /// The archive member, or `None`.
    pub member: Option<String>,
    /// The section name.
    pub section: String,
    /// Offset of the instruction's first byte within the section.
    pub offset: u64,
    /// Virtual address of the instruction's first byte; equal to `offset` for relocatable
    /// inputs.
    pub address: u64,
    /// Instruction length in bytes (0 if [`Form::Undecodable`]).
    pub length: u32,
    /// The requested symbol the instruction refers to.
    pub symbol: String,
    /// The byte offset into `symbol` that the instruction refers to.
    pub addend: i64,
    /// The instruction form.
    pub form: Form,
    /// Whether the site can be patched ([`Form::is_patchable`]).
    pub patchable: bool,
    /// For indirect calls through a table: the operation index, `addend / 8`.
    pub op: Option<u64>,
    /// The instruction bytes, as lower-case hex in JSON.
    #[serde(serialize_with = "hex")]
    pub bytes: Vec<u8>,
    /// Offset of the relocated field within the section.
    pub reloc_offset: u64,
    /// The relocation type, such as `R_X86_64_PC32`.
    pub reloc_type: String,
    /// Index of the site's section in its object.
    #[serde(skip)]
    pub section_index: usize,
    /// How a table object can refer to this site.
    #[serde(skip)]
    pub anchor: Anchor,
}

fn hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(bytes))
}

/// Lower-case hex of `bytes`, without separators.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Counts over a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// All sites.
    pub sites: usize,
    /// Sites whose form is patchable.
    pub patchable: usize,
    /// The others.
    pub not_patchable: usize,
    /// Sites per form name.
    pub by_form: BTreeMap<&'static str, usize>,
}

/// The result of a scan: every site, and the counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Sites, in input order, then section order, then offset.
    pub sites: Vec<Site>,
    /// Counts.
    pub summary: Summary,
}

impl Report {
    /// A report over these sites.
    pub fn new(sites: Vec<Site>) -> Self {
        let mut summary = Summary {
            sites: sites.len(),
            ..Summary::default()
        };
        for s in &sites {
            if s.patchable {
                summary.patchable += 1;
            } else {
                summary.not_patchable += 1;
            }
            *summary.by_form.entry(s.form.name()).or_default() += 1;
        }
        Self { sites, summary }
    }

    /// The report as JSON (the schema is in the crate documentation).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Scans files (objects, archives, final binaries) for references to `symbols`.
pub fn scan_files<P: AsRef<Path>>(paths: &[P], symbols: &[&str]) -> Result<Report, Error> {
    let mut sites = Vec::new();
    for p in paths {
        let input = Input::open(p)?;
        sites.extend(scan_data(input.path(), input.data(), symbols)?);
    }
    Ok(Report::new(sites))
}

/// Scans the contents `data` of `file` (an ELF file or an archive).
pub fn scan_data(file: &Path, data: &[u8], symbols: &[&str]) -> Result<Vec<Site>, Error> {
    let mut sites = Vec::new();
    for obj in crate::read::objects(file, data)? {
        sites.extend(scan_object(&obj, symbols)?);
    }
    Ok(sites)
}

/// A requested symbol defined in the object: references through a section symbol that land in
/// `[value, value + size)` of section `shndx` refer to it.
struct Extent {
    shndx: usize,
    value: u64,
    size: u64,
    name: usize,
}

enum Target {
    /// The relocation names requested symbol `names[i]`.
    Direct(usize),
    /// The relocation names a section symbol with this value; resolved after decoding.
    Section { shndx: usize, value: u64 },
}

struct Candidate {
    offset: u64,
    r_type: u32,
    addend: i64,
    target: Target,
}

fn is_pc_relative(r_type: u32) -> bool {
    matches!(
        r_type,
        elf::R_X86_64_PC32
            | elf::R_X86_64_PLT32
            | elf::R_X86_64_GOTPCREL
            | elf::R_X86_64_GOTPCRELX
            | elf::R_X86_64_REX_GOTPCRELX
            | elf::R_X86_64_PC64
            | elf::R_X86_64_PC16
            | elf::R_X86_64_PC8
            | elf::R_X86_64_GOTPC32
            | elf::R_X86_64_GOTPC64
            | elf::R_X86_64_GOTPCREL64
            | elf::R_X86_64_TLSGD
            | elf::R_X86_64_TLSLD
            | elf::R_X86_64_GOTTPOFF
    )
}

fn field_size(r_type: u32) -> u64 {
    match r_type {
        elf::R_X86_64_64
        | elf::R_X86_64_PC64
        | elf::R_X86_64_GOTOFF64
        | elf::R_X86_64_GOTPC64
        | elf::R_X86_64_GOTPCREL64
        | elf::R_X86_64_GOT64
        | elf::R_X86_64_PLTOFF64
        | elf::R_X86_64_SIZE64
        | elf::R_X86_64_DTPOFF64
        | elf::R_X86_64_TPOFF64 => 8,
        elf::R_X86_64_16 | elf::R_X86_64_PC16 => 2,
        elf::R_X86_64_8 | elf::R_X86_64_PC8 => 1,
        _ => 4,
    }
}

/// The name of an x86-64 relocation type.
pub fn reloc_type_name(r_type: u32) -> String {
    let n = match r_type {
        elf::R_X86_64_64 => "R_X86_64_64",
        elf::R_X86_64_PC32 => "R_X86_64_PC32",
        elf::R_X86_64_GOT32 => "R_X86_64_GOT32",
        elf::R_X86_64_PLT32 => "R_X86_64_PLT32",
        elf::R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL",
        elf::R_X86_64_32 => "R_X86_64_32",
        elf::R_X86_64_32S => "R_X86_64_32S",
        elf::R_X86_64_16 => "R_X86_64_16",
        elf::R_X86_64_PC16 => "R_X86_64_PC16",
        elf::R_X86_64_8 => "R_X86_64_8",
        elf::R_X86_64_PC8 => "R_X86_64_PC8",
        elf::R_X86_64_PC64 => "R_X86_64_PC64",
        elf::R_X86_64_GOTOFF64 => "R_X86_64_GOTOFF64",
        elf::R_X86_64_GOTPC32 => "R_X86_64_GOTPC32",
        elf::R_X86_64_GOTPCRELX => "R_X86_64_GOTPCRELX",
        elf::R_X86_64_REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX",
        _ => return format!("R_X86_64_#{r_type}"),
    };
    n.to_string()
}

fn classify(bytes: &[u8], field: usize, insn: &Instruction, offsets: &ConstantOffsets) -> Form {
    match (bytes, field) {
        ([0xff, 0x15, _, _, _, _], 2) => return Form::CallRip,
        ([0xff, 0x14, 0x25, _, _, _, _], 3) => return Form::CallAbs32,
        ([0xff, 0x25, _, _, _, _], 2) => return Form::JmpRip,
        ([0xe8, _, _, _, _], 1) => return Form::CallRel32,
        ([0xe9, _, _, _, _], 1) => return Form::JmpRel32,
        _ => {}
    }
    let branch = matches!(insn.mnemonic(), Mnemonic::Call | Mnemonic::Jmp)
        || matches!(
            insn.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        );
    if branch {
        return Form::Other;
    }
    if offsets.has_displacement() && offsets.displacement_offset() == field {
        if insn.mnemonic() == Mnemonic::Lea {
            return Form::Address;
        }
        if insn.mnemonic() == Mnemonic::Mov && insn.op0_kind() == OpKind::Memory {
            return Form::Store;
        }
        return Form::Load;
    }
    if (offsets.has_immediate() && offsets.immediate_offset() == field)
        || (offsets.has_immediate2() && offsets.immediate_offset2() == field)
    {
        return Form::Address;
    }
    Form::Other
}

/// Per-object symbol facts the scan needs.
struct SymbolFacts {
    /// Symbol index -> index into the requested names.
    direct: HashMap<u32, usize>,
    /// Requested symbols defined here.
    extents: Vec<Extent>,
    /// Function symbols (value, size) per section.
    functions: HashMap<usize, Vec<(u64, u64)>>,
    /// Global symbols (value, symbol index) per section; relocatable objects only.
    globals: HashMap<usize, Vec<(u64, usize)>>,
}

fn symbol_facts(obj: &Object<'_>, names: &[&str]) -> SymbolFacts {
    let mut f = SymbolFacts {
        direct: HashMap::new(),
        extents: Vec::new(),
        functions: HashMap::new(),
        globals: HashMap::new(),
    };
    let relocatable = !obj.kind.is_final();
    for (i, sym) in obj.symbols().iter().enumerate().skip(1) {
        let shndx = sym.st_shndx(LE);
        let defined = shndx != elf::SHN_UNDEF && shndx < elf::SHN_LORESERVE;
        let st_type = sym.st_type();
        if st_type == elf::STT_SECTION || st_type == elf::STT_FILE {
            continue;
        }
        let shndx = usize::from(shndx);
        let value = sym.st_value(LE);
        let size = sym.st_size(LE);
        if defined && st_type == elf::STT_FUNC && size > 0 {
            f.functions.entry(shndx).or_default().push((value, size));
        }
        if relocatable && defined && sym.st_bind() == elf::STB_GLOBAL {
            f.globals.entry(shndx).or_default().push((value, i));
        }
        let Some(name) = obj.symbol_name(sym) else {
            continue;
        };
        if let Some(k) = names.iter().position(|n| n.as_bytes() == name) {
            let Ok(index) = u32::try_from(i) else {
                continue;
            };
            f.direct.insert(index, k);
            if defined {
                f.extents.push(Extent {
                    shndx,
                    value,
                    size,
                    name: k,
                });
            }
        }
    }
    for v in f.globals.values_mut() {
        v.sort_unstable();
    }
    f
}

/// Scans one object for references to `names`.
///
/// Errors: a relocation naming a symbol outside the symbol table, a relocation outside its
/// section, section data outside the file, or a final binary without `--emit-relocs`.
pub fn scan_object(obj: &Object<'_>, names: &[&str]) -> Result<Vec<Site>, Error> {
    let facts = symbol_facts(obj, names);
    let syms = obj.symbols();
    let symtab = obj.symtab_index();
    let is_final = obj.kind.is_final();

    let mut exec_sections = 0usize;
    let mut exec_with_relocs = 0usize;
    let mut candidates: HashMap<usize, Vec<Candidate>> = HashMap::new();
    for (idx, h) in obj.section_headers() {
        if h.sh_flags(LE) & u64::from(elf::SHF_EXECINSTR) != 0 && h.sh_size(LE) > 0 {
            exec_sections += 1;
        }
        if h.sh_type(LE) != elf::SHT_RELA || symtab == 0 || h.sh_link(LE) as usize != symtab {
            continue;
        }
        let target = h.sh_info(LE) as usize;
        if !obj.is_executable(target) {
            continue;
        }
        exec_with_relocs += 1;
        if facts.direct.is_empty() {
            continue;
        }
        let relas: &[elf::Rela64<object::LittleEndian>] =
            h.data_as_array(LE, obj.data).map_err(|_| {
                Error::malformed(
                    obj.section_location(idx),
                    format!(
                        "relocation entries at file offset {:#x} size {:#x} lie outside the file",
                        h.sh_offset(LE),
                        h.sh_size(LE)
                    ),
                )
            })?;
        let sh_addr = obj.section_header(target).map_or(0, |t| t.sh_addr(LE));
        for (k, r) in relas.iter().enumerate() {
            let si = r.r_sym(LE, false);
            if si == 0 {
                continue;
            }
            let t = if let Some(&n) = facts.direct.get(&si) {
                Target::Direct(n)
            } else if facts.extents.is_empty() {
                continue;
            } else {
                let Some(sym) = syms.get(si as usize) else {
                    return Err(Error::malformed(
                        obj.section_location(idx).at(k as u64 * 24),
                        format!(
                            "relocation {k} names symbol {si}, but the symbol table has {} symbols",
                            syms.len()
                        ),
                    ));
                };
                let shndx = usize::from(sym.st_shndx(LE));
                if sym.st_type() != elf::STT_SECTION
                    || !facts.extents.iter().any(|e| e.shndx == shndx)
                {
                    continue;
                }
                Target::Section {
                    shndx,
                    value: sym.st_value(LE),
                }
            };
            let r_offset = r.r_offset(LE);
            let offset = if is_final {
                r_offset.checked_sub(sh_addr).ok_or_else(|| {
                    Error::malformed(
                        obj.section_location(target).at(r_offset),
                        format!(
                            "relocation {k} of {} at address {r_offset:#x} lies before the section (address {sh_addr:#x})",
                            obj.section_name(idx)
                        ),
                    )
                })?
            } else {
                r_offset
            };
            candidates.entry(target).or_default().push(Candidate {
                offset,
                r_type: r.r_type(LE, false),
                addend: r.r_addend(LE),
                target: t,
            });
        }
    }
    if is_final && exec_sections > 0 && exec_with_relocs == 0 {
        return Err(Error::new(obj.location(), ErrorKind::MissingRelocations));
    }

    let mut keys: Vec<usize> = candidates.keys().copied().collect();
    keys.sort_unstable();
    let mut sites = Vec::new();
    for sec in keys {
        let mut list = candidates.remove(&sec).unwrap_or_default();
        list.sort_by_key(|c| c.offset);
        scan_section(obj, &facts, names, sec, &list, &mut sites)?;
    }
    Ok(sites)
}

/// The decoding cursor of one section: the instruction last decoded and the boundary its
/// segment started from.
struct Cursor {
    anchor: u64,
    start: u64,
    end: u64,
    broken: bool,
    insn: Instruction,
    offsets: Option<ConstantOffsets>,
}

fn scan_section(
    obj: &Object<'_>,
    facts: &SymbolFacts,
    names: &[&str],
    sec: usize,
    list: &[Candidate],
    sites: &mut Vec<Site>,
) -> Result<(), Error> {
    let data = obj.section_data(sec)?;
    let header = obj
        .section_header(sec)
        .ok_or_else(|| Error::malformed(obj.location(), format!("no section {sec}")))?;
    let is_final = obj.kind.is_final();
    let sh_addr = header.sh_addr(LE);
    let base = if is_final { sh_addr } else { 0 };
    let len = data.len() as u64;
    let section_name = obj.section_name(sec);
    let in_group = header.sh_flags(LE) & u64::from(elf::SHF_GROUP) != 0;

    // Known instruction boundaries: the section start, and every function's start and end.
    let mut anchors = vec![0u64];
    if let Some(funcs) = facts.functions.get(&sec) {
        for &(value, size) in funcs {
            let Some(start) = value.checked_sub(base) else {
                continue;
            };
            if start < len {
                anchors.push(start);
                if let Some(end) = start.checked_add(size).filter(|e| *e < len) {
                    anchors.push(end);
                }
            }
        }
    }
    anchors.sort_unstable();
    anchors.dedup();

    let mut decoder = Decoder::with_ip(64, data, base, DecoderOptions::NONE);
    let mut cur: Option<Cursor> = None;
    let mut ai = 0usize;
    let file = obj.file.display().to_string();
    for c in list {
        let fsize = field_size(c.r_type);
        if c.offset.checked_add(fsize).is_none_or(|e| e > len) {
            return Err(Error::malformed(
                obj.section_location(sec).at(c.offset),
                format!(
                    "relocation ({}) lies outside the section (size {len:#x})",
                    reloc_type_name(c.r_type)
                ),
            ));
        }
        while ai + 1 < anchors.len() && anchors[ai + 1] <= c.offset {
            ai += 1;
        }
        let anchor = anchors[ai];
        let restart = cur.as_ref().is_none_or(|k| k.anchor != anchor);
        if restart {
            // `anchor < len`, so the position is valid.
            let ok = decoder.set_position(anchor as usize).is_ok();
            decoder.set_ip(base.wrapping_add(anchor));
            cur = Some(Cursor {
                anchor,
                start: anchor,
                end: anchor,
                broken: !ok,
                insn: Instruction::default(),
                offsets: None,
            });
        }
        let Some(k) = cur.as_mut() else { continue };
        while !k.broken && k.end <= c.offset {
            if !decoder.can_decode() {
                k.broken = true;
                break;
            }
            decoder.decode_out(&mut k.insn);
            if k.insn.is_invalid() {
                k.broken = true;
                break;
            }
            k.start = k.end;
            k.end = k.start + k.insn.len() as u64;
            k.offsets = None;
        }
        let found = !k.broken && k.start <= c.offset && c.offset + fsize <= k.end;
        let (start, end, form) = if found {
            let offsets = *k
                .offsets
                .get_or_insert_with(|| decoder.get_constant_offsets(&k.insn));
            let bytes = &data[k.start as usize..k.end as usize];
            let form = classify(bytes, (c.offset - k.start) as usize, &k.insn, &offsets);
            (k.start, k.end, form)
        } else {
            (c.offset, c.offset, Form::Undecodable)
        };
        // Distance from the relocated field to the end of the instruction: what the CPU adds
        // to a PC-relative field besides the field's own address.
        let to_end = if found { end - c.offset } else { fsize };
        let pc_adjust = if is_pc_relative(c.r_type) {
            to_end as i64
        } else {
            0
        };
        let refers = c.addend.wrapping_add(pc_adjust);
        let (name, addend) = match c.target {
            Target::Direct(n) => (n, refers),
            Target::Section { shndx, value } => {
                let resolved = value.wrapping_add(refers as u64);
                let hit = facts.extents.iter().find(|e| {
                    e.shndx == shndx && resolved >= e.value && resolved - e.value < e.size.max(1)
                });
                match hit {
                    Some(e) => (e.name, resolved.wrapping_sub(e.value) as i64),
                    None => continue,
                }
            }
        };
        let patchable = form.is_patchable();
        let op =
            (form.is_table_call() && addend >= 0 && addend % 8 == 0).then_some(addend as u64 / 8);
        let anchor = if is_final {
            Anchor::Unavailable("the site is in a final binary".into())
        } else if in_group {
            Anchor::Unavailable(format!(
                "section {section_name} is in a COMDAT group, and the linker may keep another object's copy"
            ))
        } else {
            site_anchor(obj, facts, sec, start, &section_name)
        };
        sites.push(Site {
            file: file.clone(),
            member: obj.member.clone(),
            section: section_name.clone(),
            offset: start,
            address: base.wrapping_add(start),
            length: (end - start) as u32,
            symbol: names.get(name).copied().unwrap_or("?").to_string(),
            addend,
            form,
            patchable,
            op,
            bytes: data[start as usize..end as usize].to_vec(),
            reloc_offset: c.offset,
            reloc_type: reloc_type_name(c.r_type),
            section_index: sec,
            anchor,
        });
    }
    Ok(())
}

fn site_anchor(
    obj: &Object<'_>,
    facts: &SymbolFacts,
    sec: usize,
    offset: u64,
    name: &str,
) -> Anchor {
    let Some(globals) = facts.globals.get(&sec).filter(|g| !g.is_empty()) else {
        return Anchor::Unavailable(format!(
            "no global symbol is defined in section {name}, so another object cannot refer to \
             it; make a function in it non-static, or compile without -ffunction-sections"
        ));
    };
    // The nearest global symbol at or before the site, else the first one after it.
    let i = globals.partition_point(|(v, _)| *v <= offset);
    let (value, index) = globals[i.saturating_sub(1)];
    let sym_name = obj
        .symbols()
        .get(index)
        .and_then(|s| obj.symbol_name(s))
        .map(|n| String::from_utf8_lossy(n).into_owned());
    match sym_name {
        Some(n) if !n.is_empty() => Anchor::Symbol {
            name: n,
            delta: offset.wrapping_sub(value) as i64,
        },
        _ => Anchor::Unavailable(format!("the global symbol in section {name} has no name")),
    }
}

/// The report as a human-readable table, one line per site, then the counts.
pub fn format_human(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for site in &report.sites {
        let member = site
            .member
            .as_deref()
            .map(|m| format!("({m})"))
            .unwrap_or_default();
        let op = site.op.map(|o| format!(" op {o}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "{}{member} {}+{:#x} [{:#x}] len {} {}+{} {}{}{op} {}",
            site.file,
            site.section,
            site.offset,
            site.address,
            site.length,
            site.symbol,
            site.addend,
            site.form.name(),
            if site.patchable { " patchable" } else { "" },
            to_hex(&site.bytes),
        );
    }
    let by_form: Vec<String> = report
        .summary
        .by_form
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "{} sites: {} patchable, {} not patchable ({})",
        report.summary.sites,
        report.summary.patchable,
        report.summary.not_patchable,
        by_form.join(", ")
    );
    s
}
