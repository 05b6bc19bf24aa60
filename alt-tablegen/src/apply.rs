//! `alt-tablegen apply`: a patched copy of a linked image for a CPU, as the runtime would
//! patch it in memory.
//!
//! The `alt_instr` entries are read with the layouts of [`alt_runtime::table`] and planned by
//! the runtime's own planner ([`alt_runtime::plan::plan_alternatives_for`] with
//! [`alt_runtime::isa::X86_64`] or [`alt_runtime::isa::Aarch64`], chosen by the image's
//! `e_machine`) for the capabilities of the [`CpuSpec`]: every entry is validated first, the
//! first entry of a site that holds wins, replacements are re-targeted to their site and padded
//! with NOPs, direct calls are encoded. Then each site's new bytes are written at the site's
//! file offset in a copy of the file. Nothing else in the file changes.
//!
//! An AArch64 image patched this way needs no cache maintenance: it is written before it is
//! loaded. A program that patches itself at run time does (`alt.h`'s `alt_sync_icache`).

use std::ops::Range;
use std::path::Path;

use alt_runtime::isa::{Aarch64, X86_64};
use alt_runtime::memory::{Memory, MemoryError};
use alt_runtime::plan::{plan_alternatives_for, Choice, Layout, Plan, TableEntry};
use alt_runtime::table::{AltEntry, ALT_ENTRY_SIZE, ALT_INSTR_SECTION, ALT_REPLACEMENT_SECTION};
use object::elf;
use object::read::elf::SectionHeader;
use serde::Serialize;

use crate::cpuspec::CpuSpec;
use crate::read::{Error, ErrorKind, Input, Location, Machine, Object, LE};
use crate::scan::to_hex;

/// One site of the patched image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppliedSite {
    /// Address of the site.
    pub site: u64,
    /// Its length.
    pub len: usize,
    /// Where it is in the file.
    pub file_offset: u64,
    /// `default`, `replacement` or `call`.
    pub choice: &'static str,
    /// The `alt_instr` index of the entry applied, if any.
    pub entry: Option<usize>,
    /// The capability of that entry, with `!` when it holds on absence.
    pub condition: Option<String>,
    /// The call target, for a direct call.
    pub target: Option<u64>,
    /// The bytes before, as hex.
    pub before: String,
    /// The bytes after, as hex.
    pub after: String,
    /// Whether the bytes changed.
    pub changed: bool,
}

/// A patched copy of an image.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    /// The image's instruction set.
    #[serde(serialize_with = "machine_name")]
    pub machine: Machine,
    /// The capabilities planned for, by name.
    pub capabilities: Vec<&'static str>,
    /// Every site, in address order.
    pub sites: Vec<AppliedSite>,
    /// The patched file.
    #[serde(skip)]
    pub image: Vec<u8>,
}

fn machine_name<S: serde::Serializer>(m: &Machine, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.name())
}

impl Applied {
    /// The sites whose bytes changed.
    pub fn changed(&self) -> impl Iterator<Item = &AppliedSite> {
        self.sites.iter().filter(|s| s.changed)
    }

    /// JSON: `{"machine", "capabilities", "sites": [...]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The allocated sections of a linked image as memory at their virtual addresses.
struct ImageMemory<'a, 'd> {
    obj: &'a Object<'d>,
}

impl ImageMemory<'_, '_> {
    /// The file offset of `addr..addr + len`, inside one allocated section with contents.
    fn file_offset(&self, addr: u64, len: u64) -> Option<u64> {
        self.obj.section_headers().find_map(|(_, h)| {
            let flags = h.sh_flags(LE);
            if flags & u64::from(elf::SHF_ALLOC) == 0 || h.sh_type(LE) == elf::SHT_NOBITS {
                return None;
            }
            let off = addr.checked_sub(h.sh_addr(LE))?;
            (off.checked_add(len)? <= h.sh_size(LE)).then(|| h.sh_offset(LE) + off)
        })
    }
}

impl Memory for ImageMemory<'_, '_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self
            .file_offset(addr, buf.len() as u64)
            .ok_or(MemoryError { addr })?;
        let start = usize::try_from(off).map_err(|_| MemoryError { addr })?;
        let bytes = self
            .obj
            .data
            .get(start..start + buf.len())
            .ok_or(MemoryError { addr })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

fn section_by_name(obj: &Object<'_>, name: &str) -> Option<usize> {
    (1..obj.section_count()).find(|&i| obj.section_name(i) == name)
}

/// Plans `obj`'s alternatives for `cpu` and returns the patched copy of its bytes.
pub fn apply(obj: &Object<'_>, cpu: &CpuSpec) -> Result<Applied, Error> {
    if !obj.kind.is_final() {
        return Err(Error::new(obj.location(), ErrorKind::NotLinked));
    }
    cpu.check_machine(obj.machine, obj.file)
        .map_err(|e| Error::new(obj.location(), ErrorKind::Other(e)))?;
    let caps = cpu.capabilities();
    let mut entries = Vec::new();
    let mut table_section = None;
    if let Some(i) = section_by_name(obj, ALT_INSTR_SECTION) {
        table_section = Some(i);
        let base = obj.section_header(i).map_or(0, |h| h.sh_addr(LE));
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
        for (n, chunk) in data.chunks_exact(ALT_ENTRY_SIZE).enumerate() {
            let Ok(b) = <&[u8; ALT_ENTRY_SIZE]>::try_from(chunk) else {
                continue;
            };
            entries.push(TableEntry {
                addr: base.wrapping_add((n * ALT_ENTRY_SIZE) as u64),
                entry: AltEntry::from_bytes(b),
            });
        }
    }
    let text: Vec<Range<u64>> = obj
        .section_headers()
        .filter(|(_, h)| {
            let f = h.sh_flags(LE);
            f & u64::from(elf::SHF_ALLOC) != 0
                && f & u64::from(elf::SHF_EXECINSTR) != 0
                && h.sh_type(LE) != elf::SHT_NOBITS
        })
        .map(|(_, h)| h.sh_addr(LE)..h.sh_addr(LE).saturating_add(h.sh_size(LE)))
        .collect();
    let replacements = section_by_name(obj, ALT_REPLACEMENT_SECTION)
        .and_then(|i| obj.section_header(i))
        .map_or(0..0, |h| {
            h.sh_addr(LE)..h.sh_addr(LE).saturating_add(h.sh_size(LE))
        });
    let layout = Layout {
        text: &text,
        replacements,
    };
    let mem = ImageMemory { obj };
    let plan: Plan = match obj.machine {
        Machine::X86_64 => plan_alternatives_for::<X86_64, _>(&entries, &layout, &caps, &mem),
        Machine::Aarch64 => plan_alternatives_for::<Aarch64, _>(&entries, &layout, &caps, &mem),
    }
    .map_err(|e| {
        let loc = table_section.map_or_else(|| obj.location(), |i| obj.section_location(i));
        Error::new(loc, ErrorKind::Other(e.to_string()))
    })?;

    let mut image = obj.data.to_vec();
    let mut sites = Vec::with_capacity(plan.sites.len());
    for s in &plan.sites {
        let len = s.before.len();
        let file_offset = mem.file_offset(s.addr, len as u64).ok_or_else(|| {
            Error::new(
                obj.location(),
                ErrorKind::Other(format!("site {:#x} is not in the file", s.addr)),
            )
        })?;
        let start = file_offset as usize;
        image[start..start + len].copy_from_slice(&s.after);
        let chosen = s.chosen();
        let (choice, target) = match s.choice {
            Choice::Inline { .. } => ("replacement", None),
            Choice::DirectCall { target, .. } => ("call", Some(target)),
            _ => ("default", None),
        };
        sites.push(AppliedSite {
            site: s.addr,
            len,
            file_offset,
            choice,
            entry: s.choice.entry(),
            condition: chosen.map(|c| {
                format!(
                    "{}{}",
                    if c.negated { "!" } else { "" },
                    c.capability.name()
                )
            }),
            target,
            before: to_hex(&s.before),
            after: to_hex(&s.after),
            changed: s.changed(),
        });
    }
    Ok(Applied {
        machine: obj.machine,
        capabilities: caps.iter().map(|c| c.name()).collect(),
        sites,
        image,
    })
}

/// Reads `input` (a linked x86-64 or AArch64 image), applies its alternatives for `cpu` and
/// writes the patched copy to `output` with `input`'s permissions.
pub fn apply_file(input: &Path, output: &Path, cpu: &CpuSpec) -> Result<Applied, Error> {
    let file = Input::open(input)?;
    let objects = file.objects_for(&[Machine::X86_64, Machine::Aarch64])?;
    let [obj] = &objects[..] else {
        return Err(Error::new(
            Location::file(input),
            ErrorKind::Other("apply writes one linked image, not an archive".into()),
        ));
    };
    let applied = apply(obj, cpu)?;
    let io = |e| Error::new(Location::file(output), ErrorKind::Io(e));
    std::fs::write(output, &applied.image).map_err(io)?;
    let perms = std::fs::metadata(input)
        .map_err(|e| Error::new(Location::file(input), ErrorKind::Io(e)))?
        .permissions();
    std::fs::set_permissions(output, perms).map_err(io)?;
    Ok(applied)
}
