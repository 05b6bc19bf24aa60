//! A module loaded after boot, as Linux's module loader does it: an ELF relocatable object
//! (`module/module.c`, built by `build.rs` into `module.ko`) is laid out in memory from the
//! heap, relocated against its own sections and the kernel's exported symbols, patched with the
//! decisions made at boot (its own alternatives table, and its calls through the kernel's
//! paravirt table `PV_OPS` for the boot backend) while its text is still writable and nothing
//! runs it, then mapped read-only and executable.

use alloc::vec::Vec;
use core::ops::Range;

use alt::driver::{Patched, Patcher};
use alt::paravirt::{Backend, PvTableEntry, TableDesc};
use alt::plan::{Layout, TableEntry};
use alt::rendezvous::Alone;
use alt::table::{AltEntry, PvEntry};
use alt::writer::DirectWriter;
use alt::CapabilitySet;
use object::elf;
use object::read::elf::{ElfFile64, ElfSection64};
use object::{
    LittleEndian, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget,
};

use crate::paging::{self, PAGE};

/// The module's bytes, aligned for the ELF parser.
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

static MODULE: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/module.ko")));

/// A module in memory.
pub struct Loaded {
    /// Its text (every executable section but the replacements), read-only and executable.
    pub text: Range<u64>,
    /// The patching record.
    pub patched: Patched,
    symbols: Vec<(&'static str, u64)>,
}

impl Loaded {
    /// The address of the module's symbol `name`.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|s| s.0 == name).map(|s| s.1)
    }
}

type File<'a> = ElfFile64<'a, LittleEndian>;

fn is_text(s: &ElfSection64<'_, '_, LittleEndian>) -> bool {
    let flags = match s.flags() {
        object::SectionFlags::Elf { sh_flags } => sh_flags,
        _ => 0,
    };
    flags & u64::from(elf::SHF_EXECINSTR) != 0 && s.name() != Ok("alt_replacement")
}

fn allocated(s: &ElfSection64<'_, '_, LittleEndian>) -> bool {
    matches!(s.flags(), object::SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_ALLOC) != 0)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)) * a.max(1)
}

/// The kernel's symbols a module may refer to.
fn kernel_symbol(name: &str) -> Option<u64> {
    match name {
        "PV_OPS" => Some(&crate::pv::PV_OPS as *const _ as u64),
        _ => None,
    }
}

/// Loads, relocates and patches the module for `caps` and the paravirt `backend`, with the
/// kernel's `PV_OPS` descriptor `table` (whose inline sequences lie in the kernel's replacement
/// section `kernel_replacements`).
pub fn load(
    caps: CapabilitySet,
    table: TableDesc<'_>,
    backend: Backend<'_>,
    kernel_replacements: Range<u64>,
) -> Result<Loaded, alloc::string::String> {
    use alloc::format;
    let file = File::parse(&MODULE.0).map_err(|e| format!("module: {e}"))?;

    // Layout: text sections first, from a page boundary; everything else from the next page.
    let mut offsets: Vec<(usize, u64)> = Vec::new();
    let mut at = 0u64;
    for pass_text in [true, false] {
        if !pass_text {
            at = align_up(at, PAGE);
        }
        for s in file.sections().filter(allocated) {
            if is_text(&s) == pass_text {
                at = align_up(at, s.align());
                offsets.push((s.index().0, at));
                at += s.size();
            }
        }
    }
    let text_len = file
        .sections()
        .filter(|s| allocated(s) && is_text(s))
        .filter_map(|s| {
            offsets
                .iter()
                .find(|o| o.0 == s.index().0)
                .map(|o| o.1 + s.size())
        })
        .max()
        .unwrap_or(0);
    let size = align_up(at.max(PAGE), PAGE);
    let layout = core::alloc::Layout::from_size_align(size as usize, PAGE as usize)
        .map_err(|_| format!("module: {size} bytes"))?;
    // SAFETY: a non-zero size; the memory is the module's for the kernel's lifetime.
    let base = unsafe { alloc::alloc::alloc_zeroed(layout) } as u64;
    if base == 0 {
        return Err(format!("module: out of memory for {size} bytes"));
    }
    let addr_of = |index: usize| offsets.iter().find(|o| o.0 == index).map(|o| base + o.1);

    // Copy.
    for s in file.sections().filter(allocated) {
        if s.kind() == object::SectionKind::UninitializedData {
            continue;
        }
        let data = s.data().map_err(|e| format!("module: {e}"))?;
        let to = addr_of(s.index().0).expect("laid out");
        // SAFETY: `to..to + data.len()` lies inside the fresh allocation (laid out above).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), to as *mut u8, data.len()) };
    }

    // Symbols: the module's own, or the kernel's exports.
    let symbol_address = |index: object::SymbolIndex| -> Result<u64, alloc::string::String> {
        let sym = file
            .symbol_by_index(index)
            .map_err(|e| format!("module: {e}"))?;
        if sym.is_undefined() {
            let name = sym.name().unwrap_or("?");
            return kernel_symbol(name).ok_or_else(|| {
                format!("module: undefined symbol {name} (not exported by the kernel)")
            });
        }
        let section = sym
            .section_index()
            .ok_or_else(|| format!("module: symbol {:?} has no section", sym.name()))?;
        let base = addr_of(section.0)
            .ok_or_else(|| format!("module: symbol {:?} in a section not loaded", sym.name()))?;
        Ok(base + sym.address())
    };

    // Relocate.
    for s in file.sections().filter(allocated) {
        let Some(target) = addr_of(s.index().0) else {
            continue;
        };
        for (offset, r) in s.relocations() {
            let RelocationTarget::Symbol(sym) = r.target() else {
                return Err(format!(
                    "module: relocation without a symbol in {:?}",
                    s.name()
                ));
            };
            let RelocationFlags::Elf { r_type } = r.flags() else {
                return Err(format!("module: not an ELF relocation in {:?}", s.name()));
            };
            let p = target + offset;
            let value = symbol_address(sym)?.wrapping_add(r.addend() as u64);
            let out_of_range = || format!("module: relocation {r_type} at {p:#x} out of range");
            // SAFETY: `p` lies inside the section's copy (the ELF says so); every store below
            // is unaligned-safe.
            unsafe {
                match r_type {
                    elf::R_X86_64_64 => (p as *mut u64).write_unaligned(value),
                    elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => {
                        let rel = i32::try_from(value.wrapping_sub(p) as i64)
                            .map_err(|_| out_of_range())?;
                        (p as *mut i32).write_unaligned(rel)
                    }
                    elf::R_X86_64_32 => {
                        let v = u32::try_from(value).map_err(|_| out_of_range())?;
                        (p as *mut u32).write_unaligned(v)
                    }
                    elf::R_X86_64_32S => {
                        let v = i32::try_from(value as i64).map_err(|_| out_of_range())?;
                        (p as *mut i32).write_unaligned(v)
                    }
                    other => return Err(format!("module: unsupported relocation type {other}")),
                }
            }
        }
    }

    let section = |name: &str| -> Option<Range<u64>> {
        let s = file.section_by_name(name)?;
        let a = addr_of(s.index().0)?;
        Some(a..a + s.size())
    };
    let symbols = file
        .symbols()
        .filter(|s| s.is_definition() && s.kind() == object::SymbolKind::Text)
        .filter_map(|s| Some((s.name().ok()?, symbol_address(s.index()).ok()?)))
        .collect();

    // Patch with the decisions made at boot, while the text is still writable and unused.
    let text = base..base + align_up(text_len, PAGE);
    let whole = base..base + size;
    let replacements = section("alt_replacement").unwrap_or(whole.end..whole.end);
    let alt: &[AltEntry] = match section("alt_instr") {
        // SAFETY: the module's alt_instr section, copied and relocated above: 4-aligned whole
        // 12-byte entries (the emitters write nothing else there).
        Some(r) => unsafe {
            core::slice::from_raw_parts(
                r.start as *const AltEntry,
                ((r.end - r.start) / 12) as usize,
            )
        },
        None => &[],
    };
    let pv: Vec<PvTableEntry> = match section("alt_pv_PV_OPS") {
        // SAFETY: as above, 8-byte paravirt entries written by alt-tablegen.
        Some(r) => PvTableEntry::in_memory(unsafe {
            core::slice::from_raw_parts(r.start as *const PvEntry, ((r.end - r.start) / 8) as usize)
        })
        .collect(),
        None => Vec::new(),
    };
    let ranges = [whole.clone(), kernel_replacements.clone()];
    // SAFETY: the module's memory is the kernel heap's, mapped readable and writable, and no
    // CPU runs the module yet; the kernel's replacement section is read-only data, only read.
    let mut writer = unsafe { DirectWriter::new(&ranges) };
    let text_ranges = [text.clone()];
    let layout = Layout {
        text: &text_ranges,
        replacements,
    };
    // SAFETY: the layout is the module's, its table the module's own; PV_OPS's descriptor and
    // backend are the kernel's, as at boot, and `pv` are the module's calls through it.
    let patcher = unsafe {
        Patcher::new(caps, layout)
            .alternatives(TableEntry::in_memory(alt))
            .paravirt_entries(table, backend, pv, Some(kernel_replacements))
    };
    let prepared = patcher.plan(&writer).map_err(|e| format!("module: {e}"))?;
    // SAFETY: nothing runs the module's code yet: no one to stop.
    let mut alone = unsafe { Alone::new() };
    let patched = prepared
        .apply(&mut writer, &mut alone)
        .map_err(|e| format!("module: {e}"))?;

    // Now map the text read-only and executable, the rest stays writable and not executable.
    paging::map_module_text(text.clone());
    Ok(Loaded {
        text,
        patched,
        symbols,
    })
}
