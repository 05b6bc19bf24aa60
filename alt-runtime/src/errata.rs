//! The errata database, as data.
//!
//! Each [`Erratum`] names one [`Errata`] bit, its public id, what goes wrong, where the fact
//! comes from, and the CPUs it affects:
//!
//! - **x86-64** ([`X86Match`]): vendor, a family range and a `(model, stepping)` range compared
//!   as pairs (as Linux's `AMD_MODEL_RANGE`), plus CPUID facts ([`X86Facts`]) that must be present
//!   (`requires`) or absent (`unless`).
//! - **AArch64** ([`MidrMatch`]): MIDR implementer, architecture (`0xf`) and part number, a
//!   `(variant, revision)` range (as Linux's `MIDR_RANGE` / `ERRATA_MIDR_REV_RANGE`, which
//!   compare `MIDR_CPU_MODEL_MASK`: implementer, architecture, part), and REVIDR exclusions: a part
//!   at a given `rXpY` whose REVIDR has one of the listed bits set carries the fix (as Linux's
//!   `MIDR_FIXED`). A part number may be matched under a mask (Linux's `is_kryo_midr`).
//!
//! # Vendor cores that are Arm designs
//!
//! Several SoC vendors ship Arm cores under their own implementer code, and their errata are
//! the Arm core's: Linux's lists name them beside the Arm part, with their own `rXpY` numbering
//! (Kryo 4xx Gold `rcpe..rfpf` is Cortex-A76 `r0p0..r3p1`). The database follows Linux's
//! lists exactly, alias by alias: Broadcom Brahma-B53 (Cortex-A53), Qualcomm Kryo 2xx Silver
//! (Cortex-A53), Kryo 4xx Gold (Cortex-A76), Kryo 4xx Silver (Cortex-A55; Kryo 5xx Silver
//! reports the same MIDR). Qualcomm's Kryo 3xx Silver and Kryo 5xx/6xx cores identify
//! themselves with Arm's own MIDR, so they match the Arm entries directly.
//!
//! # What the database does not decide
//!
//! Linux's Spectre-v2, -v3a, -v4 and -BHB entries depend on ID registers (CSV2, SSBS, ECBHB)
//! and on the firmware's answer, not on MIDR and REVIDR, so they are not here. Errata of cores
//! outside the database (Cortex-A73, A77, A510, A710, ThunderX, ...) are not here either, except
//! where an entry lists them beside a core it covers (ARM 3194386).
//!
//! [`errata_for`] evaluates the table for one CPU. Every entry is a documented erratum; the
//! `source` field says where its affected range was checked.
//!
//! # Adding an erratum
//!
//! 1. Find the public id and the affected range in a primary source: the vendor's errata
//!    notice or revision guide, or the Linux file that handles it (`arch/arm64/kernel/cpu_errata.c`,
//!    `arch/x86/kernel/cpu/{amd,intel,hygon,common}.c`). Read for facts; do not copy code.
//! 2. Add a bit to [`Errata`] and its `erratum_...` name to `ERRATUM_NAMES` in
//!    [`crate::capability`] (never renumber existing bits: table entries store them), and its
//!    `ALT_CAP_ERRATUM_...` id to `include/alt.h`.
//! 3. Add an [`Erratum`] to [`ERRATA`] with its matches and `source`, and a test below with a
//!    CPU just inside and just outside the range (and with the REVIDR fix bit, if any).
//! 4. Add a row to `docs/capabilities.md`.

use crate::capability::{Capability, Errata};
use crate::identity::CpuId;
pub use crate::identity::{
    aarch64_core_name, Midr, AARCH64_CORES, ARM, AZURE_COBALT_100, BRAHMA_B53, BROADCOM,
    CORTEX_A53, CORTEX_A55, CORTEX_A57, CORTEX_A72, CORTEX_A76, FALKOR_V1, KRYO, KRYO_2XX_SILVER,
    KRYO_4XX_GOLD, KRYO_4XX_SILVER, MICROSOFT, MIDR_ARCHITECTURE_ID_REGS, NEOVERSE_N1, QUALCOMM,
};
use crate::x86_64::cpuid::{Vendor, X86Cpu, X86Facts};

/// One documented erratum.
#[derive(Clone, Copy, Debug)]
pub struct Erratum {
    /// Its bit.
    pub erratum: Errata,
    /// Public id: `"ARM 843419"`, `"AMD DIV0 (CVE-2023-20588)"`...
    pub id: &'static str,
    /// What goes wrong, in a line.
    pub description: &'static str,
    /// Where the affected range comes from.
    pub source: &'static str,
    /// The CPUs affected.
    pub matches: Matches,
}

/// The CPUs an erratum affects: a CPU is affected if any range matches.
#[derive(Clone, Copy, Debug)]
pub enum Matches {
    /// x86-64 ranges.
    X86(&'static [X86Match]),
    /// AArch64 MIDR ranges.
    Arm64(&'static [MidrMatch]),
}

/// An x86-64 range.
#[derive(Clone, Copy, Debug)]
pub struct X86Match {
    /// The vendor.
    pub vendor: Vendor,
    /// First and last family, inclusive.
    pub families: (u32, u32),
    /// First `(model, stepping)`, inclusive.
    pub first: (u32, u32),
    /// Last `(model, stepping)`, inclusive.
    pub last: (u32, u32),
    /// Facts that must all be present.
    pub requires: X86Facts,
    /// Facts of which none may be present.
    pub unless: X86Facts,
}

impl X86Match {
    /// Whether `cpu` is in this range.
    pub fn matches(&self, cpu: &X86Cpu) -> bool {
        cpu.vendor == self.vendor
            && (self.families.0..=self.families.1).contains(&cpu.family)
            && (self.first..=self.last).contains(&(cpu.model, cpu.stepping))
            && cpu.facts.contains(self.requires)
            && !cpu.facts.intersects(self.unless)
    }
}

/// A REVIDR fix: a part at `r{variant}p{revision}` whose REVIDR has any bit of `revidr_mask`
/// set is not affected.
#[derive(Clone, Copy, Debug)]
pub struct RevidrFix {
    /// Variant (`rX`).
    pub variant: u8,
    /// Revision (`pY`).
    pub revision: u8,
    /// REVIDR bits that mean "fixed".
    pub revidr_mask: u32,
}

/// An AArch64 MIDR range.
#[derive(Clone, Copy, Debug)]
pub struct MidrMatch {
    /// MIDR implementer (bits 31:24), `0x41` for Arm.
    pub implementer: u8,
    /// MIDR part number (bits 15:4), compared under `part_mask`.
    pub part: u16,
    /// The part-number bits compared: `0xfff` for one part, `0xf00` for a family of parts
    /// (Linux's `is_kryo_midr` matches Qualcomm parts `0x2XX`).
    pub part_mask: u16,
    /// First `(variant, revision)`, inclusive.
    pub first: (u8, u8),
    /// Last `(variant, revision)`, inclusive.
    pub last: (u8, u8),
    /// Revisions fixed by a REVIDR bit.
    pub fixed: &'static [RevidrFix],
}

impl MidrMatch {
    /// Whether the CPU with these MIDR and REVIDR values is affected.
    pub fn matches(&self, midr: u32, revidr: u32) -> bool {
        let m = Midr::decode(midr);
        if m.implementer != self.implementer
            || m.architecture != MIDR_ARCHITECTURE_ID_REGS
            || m.part & self.part_mask != self.part
        {
            return false;
        }
        let rv = (m.variant, m.revision);
        if !(self.first..=self.last).contains(&rv) {
            return false;
        }
        !self
            .fixed
            .iter()
            .any(|f| (f.variant, f.revision) == rv && revidr & f.revidr_mask != 0)
    }
}

/// Arm parts of Linux's `erratum_spec_ssbs_list` (ARM 3194386), beside Cobalt 100.
const SSBS_PARTS: [u16; 20] = [
    CORTEX_A76,
    0xd0d,
    0xd41,
    0xd4b,
    0xd47,
    0xd4d,
    0xd81,
    0xd87,
    0xd44,
    0xd4c,
    0xd48,
    0xd4e,
    0xd82,
    0xd85,
    NEOVERSE_N1,
    0xd49,
    0xd8e,
    0xd40,
    0xd4f,
    0xd84,
];

const ANY: (u32, u32) = (0, u32::MAX);
const ALL_MODELS: ((u32, u32), (u32, u32)) = ((0, 0), (u32::MAX, u32::MAX));

const fn x86(vendor: Vendor, family: u32, first: (u32, u32), last: (u32, u32)) -> X86Match {
    X86Match {
        vendor,
        families: (family, family),
        first,
        last,
        requires: X86Facts::empty(),
        unless: X86Facts::empty(),
    }
}

/// Family 0x17 models `lo..=hi`, every stepping.
const fn fam17(lo: u32, hi: u32) -> X86Match {
    x86(Vendor::Amd, 0x17, (lo, 0), (hi, 0xf))
}

/// Every model of a vendor, with fact conditions.
const fn vendor_wide(vendor: Vendor, requires: X86Facts, unless: X86Facts) -> X86Match {
    X86Match {
        vendor,
        families: ANY,
        first: ALL_MODELS.0,
        last: ALL_MODELS.1,
        requires,
        unless,
    }
}

/// Intel family 6, one model, every stepping, with required facts.
const fn intel6(model: u32, requires: X86Facts) -> X86Match {
    X86Match {
        vendor: Vendor::Intel,
        families: (6, 6),
        first: (model, 0),
        last: (model, 0xf),
        requires,
        unless: X86Facts::empty(),
    }
}

/// `implementer:part` from `rXpY` to `rXpY`, inclusive.
const fn midr(implementer: u8, part: u16, first: (u8, u8), last: (u8, u8)) -> MidrMatch {
    MidrMatch {
        implementer,
        part,
        part_mask: 0xfff,
        first,
        last,
        fixed: &[],
    }
}

const fn arm(part: u16, first: (u8, u8), last: (u8, u8)) -> MidrMatch {
    midr(ARM, part, first, last)
}

/// Every revision of a part (Linux's `MIDR_ALL_VERSIONS`).
const fn all_revs(implementer: u8, part: u16) -> MidrMatch {
    midr(implementer, part, ALL_REVS.0, ALL_REVS.1)
}

const ALL_REVS: ((u8, u8), (u8, u8)) = ((0, 0), (0xf, 0xf));

/// Every revision of every Arm part in [`SSBS_PARTS`], then Cobalt 100.
const SSBS_MATCHES: [MidrMatch; 21] = {
    let mut m = [all_revs(MICROSOFT, AZURE_COBALT_100); 21];
    let mut i = 0;
    while i < SSBS_PARTS.len() {
        m[i] = all_revs(ARM, SSBS_PARTS[i]);
        i += 1;
    }
    m
};

/// Falkor v1 r0p0 and every Kryo `0x2XX` part: Linux's `qcom_erratum_1003_list`, and the
/// Falkor half of `arm64_repeat_tlbi_list`.
const FALKOR_KRYO: [MidrMatch; 2] = [
    midr(QUALCOMM, FALKOR_V1, (0, 0), (0, 0)),
    MidrMatch {
        implementer: QUALCOMM,
        part: KRYO,
        part_mask: 0xf00,
        first: ALL_REVS.0,
        last: ALL_REVS.1,
        fixed: &[],
    },
];

/// A source in Linux's `arch/arm64/kernel/cpu_errata.c`, read at commit c771600c6af1 (the
/// `arm64_errata[]` lists; part numbers from `asm/cputype.h`).
macro_rules! linux {
    ($what:literal) => {
        concat!(
            "Linux arch/arm64/kernel/cpu_errata.c (c771600c6af1) ",
            $what
        )
    };
}

/// The database. Order does not matter.
pub const ERRATA: &[Erratum] = &[
    // ---- x86-64 --------------------------------------------------------------------------
    Erratum {
        erratum: Errata::AMD_DIV0,
        id: "AMD DIV0 (CVE-2023-20588)",
        description: "a division by zero can leave stale quotient data that a later DIV returns speculatively",
        source: "Linux arch/x86/kernel/cpu/amd.c: X86_BUG_DIV0, set for Zen1 (family 0x17 models 0x00-0x2f, 0x50-0x5f, bsp_init_amd)",
        matches: Matches::X86(&[fam17(0x00, 0x2f), fam17(0x50, 0x5f)]),
    },
    Erratum {
        erratum: Errata::ZENBLEED,
        id: "AMD Zenbleed (CVE-2023-20593)",
        description: "VZEROUPPER misprediction can leak the upper halves of YMM registers across contexts",
        source: "Linux arch/x86/kernel/cpu/amd.c: amd_zenbleed[] / Zen2 ranges (family 0x17 models 0x30-0x4f, 0x60-0x7f, 0x90-0x91, 0xa0-0xaf), zen2_zenbleed_check",
        matches: Matches::X86(&[
            fam17(0x30, 0x4f),
            fam17(0x60, 0x7f),
            fam17(0x90, 0x91),
            fam17(0xa0, 0xaf),
        ]),
    },
    Erratum {
        erratum: Errata::CLFLUSH_MONITOR,
        id: "Intel AAI65",
        description: "CLFLUSH is needed before MONITOR for the monitored line to wake MWAIT",
        source: "Linux arch/x86/kernel/cpu/intel.c init_intel: X86_BUG_CLFLUSH_MONITOR for family 6 models 29, 46, 47 (Dunnington, Nehalem-EX, Westmere-EX) with CLFLUSH",
        matches: Matches::X86(&[
            intel6(29, X86Facts::CLFLUSH),
            intel6(46, X86Facts::CLFLUSH),
            intel6(47, X86Facts::CLFLUSH),
        ]),
    },
    Erratum {
        erratum: Errata::MONITOR,
        id: "Intel X86_BUG_MONITOR",
        description: "MONITOR/MWAIT may not wake on a store to the monitored line: an IPI is required",
        source: "Linux arch/x86/kernel/cpu/intel.c init_intel: X86_BUG_MONITOR for INTEL_ATOM_GOLDMONT (family 6 model 0x5c, Apollo Lake) and INTEL_LUNARLAKE_M (model 0xbd) with MWAIT",
        matches: Matches::X86(&[intel6(0x5c, X86Facts::MWAIT), intel6(0xbd, X86Facts::MWAIT)]),
    },
    Erratum {
        erratum: Errata::SYSRET_SS_ATTRS,
        id: "AMD X86_BUG_SYSRET_SS_ATTRS",
        description: "SYSRET does not reset the hidden SS attributes",
        source: "Linux arch/x86/kernel/cpu/amd.c init_amd and hygon.c init_hygon: every AMD and Hygon CPU (not set under Xen PV, which this probe cannot see)",
        matches: Matches::X86(&[
            vendor_wide(Vendor::Amd, X86Facts::empty(), X86Facts::empty()),
            vendor_wide(Vendor::Hygon, X86Facts::empty(), X86Facts::empty()),
        ]),
    },
    Erratum {
        erratum: Errata::NULL_SEG,
        id: "AMD X86_BUG_NULL_SEG",
        description: "loading a null selector into FS/GS keeps the old segment base",
        source: "Linux arch/x86/kernel/cpu/common.c check_null_seg_clears_base (from amd.c and hygon.c): AMD and Hygon unless CPUID 0x80000021 EAX bit 6 (NullSelectorClearsBase); Linux also tests the behaviour on bare-metal family 0x17/0x18, which this database cannot, so those count as affected",
        matches: Matches::X86(&[
            vendor_wide(Vendor::Amd, X86Facts::empty(), X86Facts::NULL_SEL_CLR_BASE),
            vendor_wide(Vendor::Hygon, X86Facts::empty(), X86Facts::NULL_SEL_CLR_BASE),
        ]),
    },
    Erratum {
        erratum: Errata::AMD_E400,
        id: "AMD erratum 400",
        description: "APIC timer interrupts may be lost while in C1E: the idle loop must handle it",
        source: "Linux arch/x86/kernel/cpu/amd.c init_amd_k8 (family 0xf from model 0x41 stepping 2) and init_amd_gh (family 0x10 from model 0x02 stepping 1)",
        matches: Matches::X86(&[
            x86(Vendor::Amd, 0xf, (0x41, 0x2), (u32::MAX, u32::MAX)),
            x86(Vendor::Amd, 0x10, (0x02, 0x1), (u32::MAX, u32::MAX)),
        ]),
    },
    Erratum {
        erratum: Errata::AMD_TLB_MMATCH,
        id: "AMD erratum 383",
        description: "CPU may hang with a TLB multi-match machine check when using large pages",
        source: "Linux arch/x86/kernel/cpu/amd.c init_amd_gh: X86_BUG_AMD_TLB_MMATCH for every family 0x10 CPU",
        matches: Matches::X86(&[x86(Vendor::Amd, 0x10, ALL_MODELS.0, ALL_MODELS.1)]),
    },
    Erratum {
        erratum: Errata::FXSAVE_LEAK,
        id: "AMD X86_BUG_FXSAVE_LEAK",
        description: "FXSAVE/XSAVE do not save FOP/FIP/FDP unless an x87 exception is pending, leaking them between contexts",
        source: "Linux arch/x86/kernel/cpu/amd.c init_amd: family >= 6 without XSaveErPtr (CPUID 0x80000008 EBX bit 2)",
        matches: Matches::X86(&[X86Match {
            vendor: Vendor::Amd,
            families: (6, u32::MAX),
            first: ALL_MODELS.0,
            last: ALL_MODELS.1,
            requires: X86Facts::empty(),
            unless: X86Facts::XSAVEERPTR,
        }]),
    },
    // ---- AArch64 -------------------------------------------------------------------------
    // Sources name Linux's list (or entry) and option; `linux!` adds the file and commit.
    Erratum {
        erratum: Errata::ARM64_835769,
        id: "ARM 835769",
        description: "Cortex-A53: an AArch64 multiply-accumulate instruction might produce an incorrect result",
        source: "Arm TF-A docs (cpu-specific build macros) ERRATA_A53_835769: Cortex-A53 up to r0p4, a compile- and link-time workaround (-mfix-cortex-a53-835769); Linux has no run-time entry or option for it",
        matches: Matches::Arm64(&[arm(CORTEX_A53, (0, 0), (0, 4))]),
    },
    Erratum {
        erratum: Errata::ARM64_843419,
        id: "ARM 843419",
        description: "Cortex-A53: a load or store might access an incorrect address (ADRP at the end of a 4 KiB page)",
        source: linux!("erratum_843419_list, CONFIG_ARM64_ERRATUM_843419: Cortex-A53 r0p0-r0p4 (r0p4 fixed when REVIDR bit 8 is set), Brahma-B53 r0p0"),
        matches: Matches::Arm64(&[
            MidrMatch {
                implementer: ARM,
                part: CORTEX_A53,
                part_mask: 0xfff,
                first: (0, 0),
                last: (0, 4),
                fixed: &[RevidrFix {
                    variant: 0,
                    revision: 4,
                    revidr_mask: 1 << 8,
                }],
            },
            midr(BROADCOM, BRAHMA_B53, (0, 0), (0, 0)),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_845719,
        id: "ARM 845719",
        description: "Cortex-A53: a load might read incorrect data (AArch32 EL0 after a CONTEXTIDR change)",
        source: linux!("erratum_845719_list, CONFIG_ARM64_ERRATUM_845719: Cortex-A53 r0p0-r0p4, Brahma-B53 r0p0, Kryo 2xx Silver rAp4"),
        matches: Matches::Arm64(&[
            arm(CORTEX_A53, (0, 0), (0, 4)),
            midr(BROADCOM, BRAHMA_B53, (0, 0), (0, 0)),
            midr(QUALCOMM, KRYO_2XX_SILVER, (0xa, 4), (0xa, 4)),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_826319,
        id: "ARM 826319",
        description: "Cortex-A53: system might deadlock if a write cannot complete until read data is accepted (cache clean promoted to clean+invalidate)",
        source: CPU_ERRATA_CLEAN_CACHE_012,
        matches: Matches::Arm64(&[arm(CORTEX_A53, (0, 0), (0, 2))]),
    },
    Erratum {
        erratum: Errata::ARM64_827319,
        id: "ARM 827319",
        description: "Cortex-A53: data cache clean instructions might cause overlapping transactions to the interconnect",
        source: CPU_ERRATA_CLEAN_CACHE_012,
        matches: Matches::Arm64(&[arm(CORTEX_A53, (0, 0), (0, 2))]),
    },
    Erratum {
        erratum: Errata::ARM64_824069,
        id: "ARM 824069",
        description: "Cortex-A53: a cache line might not be marked as clean after a CleanShared snoop",
        source: CPU_ERRATA_CLEAN_CACHE_012,
        matches: Matches::Arm64(&[arm(CORTEX_A53, (0, 0), (0, 2))]),
    },
    Erratum {
        erratum: Errata::ARM64_819472,
        id: "ARM 819472",
        description: "Cortex-A53: store-exclusive instructions might cause data corruption",
        source: linux!("workaround_clean_cache, CONFIG_ARM64_ERRATUM_819472: Cortex-A53 r0p0-r0p1"),
        matches: Matches::Arm64(&[arm(CORTEX_A53, (0, 0), (0, 1))]),
    },
    Erratum {
        erratum: Errata::ARM64_832075,
        id: "ARM 832075",
        description: "Cortex-A57: possible deadlock mixing exclusive memory accesses with device load-acquires",
        source: linux!("ARM64_WORKAROUND_DEVICE_LOAD_ACQUIRE, CONFIG_ARM64_ERRATUM_832075: Cortex-A57 r0p0-r1p2"),
        matches: Matches::Arm64(&[arm(CORTEX_A57, (0, 0), (1, 2))]),
    },
    Erratum {
        erratum: Errata::ARM64_834220,
        id: "ARM 834220",
        description: "Cortex-A57: a stage 2 translation fault might be reported in the presence of a stage 1 fault",
        source: linux!("ARM64_WORKAROUND_834220, CONFIG_ARM64_ERRATUM_834220: Cortex-A57 r0p0-r1p2"),
        matches: Matches::Arm64(&[arm(CORTEX_A57, (0, 0), (1, 2))]),
    },
    Erratum {
        erratum: Errata::ARM64_1319367,
        id: "ARM 1319537 (Cortex-A57) / 1319367 (Cortex-A72)",
        description: "Cortex-A57/A72: a speculative AT instruction using an out-of-context translation regime could corrupt later translations",
        source: linux!("erratum_speculative_at_list, CONFIG_ARM64_ERRATUM_1319367: Cortex-A57 and Cortex-A72, all revisions"),
        matches: Matches::Arm64(&[all_revs(ARM, CORTEX_A57), all_revs(ARM, CORTEX_A72)]),
    },
    Erratum {
        erratum: Errata::ARM64_1742098,
        id: "ARM 1742098 (Cortex-A57) / 1655431 (Cortex-A72)",
        description: "Cortex-A57/A72: ELR recorded incorrectly on an interrupt taken between cryptographic instructions of a sequence (AArch32 AES state corrupted)",
        source: linux!("broken_aarch32_aes, CONFIG_ARM64_ERRATUM_1742098: Cortex-A57 r0p1-rfpf, Cortex-A72 all revisions"),
        matches: Matches::Arm64(&[
            arm(CORTEX_A57, (0, 1), (0xf, 0xf)),
            all_revs(ARM, CORTEX_A72),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_1530923,
        id: "ARM 1530923",
        description: "Cortex-A55: a speculative AT instruction using an out-of-context translation regime could corrupt later translations",
        source: linux!("erratum_speculative_at_list, CONFIG_ARM64_ERRATUM_1530923: Cortex-A55 r0p0-r2p0, Kryo 4xx Silver rdpe (Cortex-A55 r1p0)"),
        matches: Matches::Arm64(&[
            arm(CORTEX_A55, (0, 0), (2, 0)),
            midr(QUALCOMM, KRYO_4XX_SILVER, (0xd, 0xe), (0xd, 0xe)),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_2441007,
        id: "ARM 2441007",
        description: "Cortex-A55: completion of affected memory accesses might not be guaranteed by completion of a TLBI (TLBI repeated)",
        source: linux!("arm64_repeat_tlbi_list, CONFIG_ARM64_ERRATUM_2441007: Cortex-A55, all revisions"),
        matches: Matches::Arm64(&[all_revs(ARM, CORTEX_A55)]),
    },
    Erratum {
        erratum: Errata::ARM64_1286807,
        id: "ARM 1286807",
        description: "Cortex-A76: modifying a translation table entry might lead to a read-after-read ordering violation (TLBI repeated)",
        source: linux!("arm64_repeat_tlbi_list, CONFIG_ARM64_ERRATUM_1286807: Cortex-A76 r0p0-r3p0, Kryo 4xx Gold rcpe-rfpe (Cortex-A76 r0p0-r3p0)"),
        matches: Matches::Arm64(&[
            arm(CORTEX_A76, (0, 0), (3, 0)),
            midr(QUALCOMM, KRYO_4XX_GOLD, (0xc, 0xe), (0xf, 0xe)),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_1463225,
        id: "ARM 1463225",
        description: "Cortex-A76: software step might prevent interrupt recognition",
        source: linux!("erratum_1463225, CONFIG_ARM64_ERRATUM_1463225: Cortex-A76 r0p0-r3p1, Kryo 4xx Gold rcpe-rfpf (Linux applies it only when the kernel runs at EL2, which MIDR does not tell)"),
        matches: Matches::Arm64(&[
            arm(CORTEX_A76, (0, 0), (3, 1)),
            midr(QUALCOMM, KRYO_4XX_GOLD, (0xc, 0xe), (0xf, 0xf)),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_1165522,
        id: "ARM 1165522",
        description: "Cortex-A76: a speculative AT instruction using an out-of-context translation regime could corrupt later translations",
        source: linux!("erratum_speculative_at_list, CONFIG_ARM64_ERRATUM_1165522: Cortex-A76 r0p0-r2p0"),
        matches: Matches::Arm64(&[arm(CORTEX_A76, (0, 0), (2, 0))]),
    },
    Erratum {
        erratum: Errata::ARM64_1418040,
        id: "ARM 1418040 (and 1188873)",
        description: "Cortex-A76/Neoverse-N1: an AArch32 MRC read after an MRRC read of a generic timer register might be wrong",
        source: linux!("erratum_1418040_list, CONFIG_ARM64_ERRATUM_1418040: Cortex-A76 and Neoverse-N1 r0p0-r3p1, Kryo 4xx Gold rcpe-rfpf"),
        matches: Matches::Arm64(&[
            arm(CORTEX_A76, (0, 0), (3, 1)),
            arm(NEOVERSE_N1, (0, 0), (3, 1)),
            midr(QUALCOMM, KRYO_4XX_GOLD, (0xc, 0xe), (0xf, 0xf)),
        ]),
    },
    Erratum {
        erratum: Errata::ARM64_1542419,
        id: "ARM 1542419",
        description: "Neoverse-N1: instruction fetches may be mis-ordered when CTR_EL0.DIC says I-cache invalidation is not needed",
        source: linux!("has_neoverse_n1_erratum_1542419, CONFIG_ARM64_ERRATUM_1542419: Neoverse-N1, all revisions, when CTR_EL0.DIC is set; MIDR does not tell DIC, so every N1 counts as affected"),
        matches: Matches::Arm64(&[all_revs(ARM, NEOVERSE_N1)]),
    },
    Erratum {
        erratum: Errata::ARM64_3194386,
        id: "ARM 3194386 (and the same SSBS erratum of later cores)",
        description: "MSR SSBS is not self-synchronizing: a speculation barrier is needed after it",
        source: linux!("erratum_spec_ssbs_list, CONFIG_ARM64_ERRATUM_3194386: Cortex-A76, Cortex-A77, Cortex-A78, Cortex-A78C, Cortex-A710, Cortex-A715, Cortex-A720, Cortex-A725, Cortex-X1, Cortex-X1C, Cortex-X2, Cortex-X3, Cortex-X4, Cortex-X925, Neoverse-N1, Neoverse-N2, Neoverse-N3, Neoverse-V1, Neoverse-V2, Neoverse-V3 and Azure Cobalt 100, all revisions"),
        matches: Matches::Arm64(&SSBS_MATCHES),
    },
    Erratum {
        erratum: Errata::QCOM_FALKOR_E1003,
        id: "Qualcomm Falkor E1003",
        description: "Falkor: an incorrect ASID may be cached in the TLB when ASID and BADDR change together in TTBRx_EL1",
        source: linux!("qcom_erratum_1003_list, CONFIG_QCOM_FALKOR_ERRATUM_1003: Falkor v1 r0p0 and every Kryo part 0x2XX (is_kryo_midr)"),
        matches: Matches::Arm64(&FALKOR_KRYO),
    },
    Erratum {
        erratum: Errata::QCOM_FALKOR_E1009,
        id: "Qualcomm Falkor E1009",
        description: "Falkor: a DSB after a TLBI might complete prematurely (TLBI repeated)",
        source: linux!("arm64_repeat_tlbi_list, CONFIG_QCOM_FALKOR_ERRATUM_1009: Falkor v1 r0p0 and every Kryo part 0x2XX (is_kryo_midr)"),
        matches: Matches::Arm64(&FALKOR_KRYO),
    },
];

const CPU_ERRATA_CLEAN_CACHE_012: &str = linux!("workaround_clean_cache (ARM64_WORKAROUND_CLEAN_CACHE), CONFIG_ARM64_ERRATUM_826319/827319/824069: Cortex-A53 r0p0-r0p2");

impl Erratum {
    /// Whether the CPU is affected.
    pub fn affects(&self, id: &CpuId) -> bool {
        match (self.matches, id) {
            (Matches::X86(ranges), CpuId::X86(cpu)) => ranges.iter().any(|r| r.matches(cpu)),
            (Matches::Arm64(ranges), CpuId::Arm64 { midr, revidr }) => {
                ranges.iter().any(|r| r.matches(*midr, *revidr))
            }
            _ => false,
        }
    }

    /// The erratum as a capability.
    pub fn capability(&self) -> Option<Capability> {
        Capability::erratum(self.erratum)
    }
}

/// The errata that the CPU with this identity needs worked around.
pub fn errata_for(id: &CpuId) -> Errata {
    ERRATA
        .iter()
        .filter(|e| e.affects(id))
        .fold(Errata::empty(), |acc, e| acc | e.erratum)
}

/// The database entry of an erratum bit, if it has one.
pub fn lookup(erratum: Errata) -> Option<&'static Erratum> {
    ERRATA.iter().find(|e| e.erratum == erratum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Features;
    use crate::x86_64::cpuid::CoreType;

    fn a53(variant: u8, revision: u8, revidr: u32) -> CpuId {
        CpuId::Arm64 {
            midr: Midr::encode(ARM, CORTEX_A53, variant, revision),
            revidr,
        }
    }

    fn arm_cpu(part: u16, variant: u8, revision: u8) -> CpuId {
        CpuId::Arm64 {
            midr: Midr::encode(ARM, part, variant, revision),
            revidr: 0,
        }
    }

    fn x86_cpu(vendor: Vendor, family: u32, model: u32, stepping: u32, facts: X86Facts) -> CpuId {
        let id = match vendor {
            Vendor::Intel => *b"GenuineIntel",
            Vendor::Amd => *b"AuthenticAMD",
            Vendor::Hygon => *b"HygonGenuine",
            Vendor::Other => *b"SomethingElz",
        };
        CpuId::X86(X86Cpu {
            vendor,
            vendor_id: id,
            family,
            model,
            stepping,
            core_type: CoreType::Unknown,
            max_leaf: 0xd,
            max_ext_leaf: 0x8000_0008,
            features: Features::empty(),
            facts,
        })
    }

    #[test]
    fn every_entry_is_unique_named_and_sourced() {
        let mut seen = Errata::empty();
        for e in ERRATA {
            assert_eq!(e.erratum.bits().count_ones(), 1, "{}", e.id);
            assert!(!seen.intersects(e.erratum), "{} listed twice", e.id);
            seen |= e.erratum;
            assert!(e
                .capability()
                .is_some_and(|c| c.name().starts_with("erratum_")));
            assert!(!e.source.is_empty() && !e.description.is_empty());
        }
        assert_eq!(
            seen,
            Errata::all(),
            "every erratum bit has a database entry"
        );
    }

    #[test]
    fn midr_round_trip() {
        let m = Midr::encode(ARM, CORTEX_A72, 0, 2);
        assert_eq!(m, 0x410f_d082);
        let d = Midr::decode(0x410f_d034);
        assert_eq!(
            (d.implementer, d.part, d.variant, d.revision),
            (0x41, 0xd03, 0, 4)
        );
    }

    #[test]
    fn cortex_a53_ranges_and_revidr_fix() {
        let r0p4 = errata_for(&a53(0, 4, 0));
        assert_eq!(
            r0p4,
            Errata::ARM64_835769 | Errata::ARM64_843419 | Errata::ARM64_845719
        );
        // r0p4 with REVIDR bit 8: 843419 fixed; other REVIDR bits change nothing.
        assert!(!errata_for(&a53(0, 4, 1 << 8)).contains(Errata::ARM64_843419));
        assert!(errata_for(&a53(0, 4, 1 << 7)).contains(Errata::ARM64_843419));
        // The fix bit only applies at r0p4.
        assert!(errata_for(&a53(0, 3, 1 << 8)).contains(Errata::ARM64_843419));
        let clean = Errata::ARM64_826319 | Errata::ARM64_827319 | Errata::ARM64_824069;
        assert!(errata_for(&a53(0, 2, 0)).contains(clean));
        assert!(!errata_for(&a53(0, 2, 0)).contains(Errata::ARM64_819472));
        assert!(errata_for(&a53(0, 1, 0)).contains(clean | Errata::ARM64_819472));
        assert!(!errata_for(&a53(0, 3, 0)).intersects(clean));
        // r1p0 is past every range.
        assert_eq!(errata_for(&a53(1, 0, 0)), Errata::empty());
    }

    fn cpu(implementer: u8, part: u16, variant: u8, revision: u8) -> CpuId {
        CpuId::Arm64 {
            midr: Midr::encode(implementer, part, variant, revision),
            revidr: 0,
        }
    }

    #[test]
    fn big_cores() {
        let a57 = Errata::ARM64_832075
            | Errata::ARM64_834220
            | Errata::ARM64_1319367
            | Errata::ARM64_1742098;
        assert_eq!(errata_for(&arm_cpu(CORTEX_A57, 1, 2)), a57);
        assert_eq!(
            errata_for(&arm_cpu(CORTEX_A57, 1, 3)),
            Errata::ARM64_1319367 | Errata::ARM64_1742098
        );
        // 1742098 starts at Cortex-A57 r0p1.
        assert!(!errata_for(&arm_cpu(CORTEX_A57, 0, 0)).contains(Errata::ARM64_1742098));
        assert!(errata_for(&arm_cpu(CORTEX_A57, 0, 1)).contains(Errata::ARM64_1742098));
        assert_eq!(
            errata_for(&arm_cpu(CORTEX_A72, 0, 2)),
            Errata::ARM64_1319367 | Errata::ARM64_1742098
        );
        let a76_r3p0 = errata_for(&arm_cpu(CORTEX_A76, 3, 0));
        assert_eq!(
            a76_r3p0,
            Errata::ARM64_1286807
                | Errata::ARM64_1463225
                | Errata::ARM64_1418040
                | Errata::ARM64_3194386
        );
        let a76_r2p0 = errata_for(&arm_cpu(CORTEX_A76, 2, 0));
        assert!(a76_r2p0.contains(Errata::ARM64_1165522));
        assert!(!a76_r3p0.contains(Errata::ARM64_1165522));
        let a76_r3p1 = errata_for(&arm_cpu(CORTEX_A76, 3, 1));
        assert_eq!(
            a76_r3p1,
            Errata::ARM64_1463225 | Errata::ARM64_1418040 | Errata::ARM64_3194386
        );
        assert_eq!(
            errata_for(&arm_cpu(CORTEX_A76, 4, 0)),
            Errata::ARM64_3194386
        );
        let n1 = Errata::ARM64_1542419 | Errata::ARM64_3194386;
        assert_eq!(
            errata_for(&arm_cpu(NEOVERSE_N1, 3, 1)),
            n1 | Errata::ARM64_1418040
        );
        assert_eq!(errata_for(&arm_cpu(NEOVERSE_N1, 4, 1)), n1);
        // Another implementer with the same part number is not an Arm core.
        assert_eq!(
            errata_for(&cpu(QUALCOMM, CORTEX_A53, 0, 0)),
            Errata::empty()
        );
    }

    #[test]
    fn cortex_a55() {
        let both = Errata::ARM64_1530923 | Errata::ARM64_2441007;
        assert_eq!(errata_for(&arm_cpu(CORTEX_A55, 0, 0)), both);
        assert_eq!(errata_for(&arm_cpu(CORTEX_A55, 2, 0)), both);
        assert_eq!(
            errata_for(&arm_cpu(CORTEX_A55, 2, 1)),
            Errata::ARM64_2441007
        );
    }

    #[test]
    fn vendor_cores_that_are_arm_designs() {
        // Broadcom Brahma-B53 r0p0: 843419 and 845719.
        let b53 = errata_for(&cpu(BROADCOM, BRAHMA_B53, 0, 0));
        assert_eq!(b53, Errata::ARM64_843419 | Errata::ARM64_845719);
        assert_eq!(
            errata_for(&cpu(BROADCOM, BRAHMA_B53, 0, 1)),
            Errata::empty()
        );
        // Kryo 2xx Silver rAp4 (Snapdragon 835 little cores): 845719 only, as Linux lists it.
        assert_eq!(
            errata_for(&cpu(QUALCOMM, KRYO_2XX_SILVER, 0xa, 4)),
            Errata::ARM64_845719
        );
        assert_eq!(
            errata_for(&cpu(QUALCOMM, KRYO_2XX_SILVER, 0xa, 5)),
            Errata::empty()
        );
        // Kryo 4xx Gold (Snapdragon 855 big cores, a Cortex-A76): rcpe..rfpe / rcpe..rfpf.
        let gold = |v, r| errata_for(&cpu(QUALCOMM, KRYO_4XX_GOLD, v, r));
        let all = Errata::ARM64_1286807 | Errata::ARM64_1463225 | Errata::ARM64_1418040;
        assert_eq!(gold(0xd, 0xe), all);
        assert_eq!(gold(0xc, 0xe), all);
        assert_eq!(gold(0xc, 0xd), Errata::empty(), "below rcpe");
        assert_eq!(
            gold(0xf, 0xf),
            Errata::ARM64_1463225 | Errata::ARM64_1418040
        );
        // Kryo 4xx Silver rdpe (a Cortex-A55 r1p0): 1530923 only.
        assert_eq!(
            errata_for(&cpu(QUALCOMM, KRYO_4XX_SILVER, 0xd, 0xe)),
            Errata::ARM64_1530923
        );
        assert_eq!(
            errata_for(&cpu(QUALCOMM, KRYO_4XX_SILVER, 0x7, 0xf)),
            Errata::empty()
        );
        // Falkor v1 r0p0 and every Kryo part 0x2XX: E1003 and E1009.
        let falkor = Errata::QCOM_FALKOR_E1003 | Errata::QCOM_FALKOR_E1009;
        assert_eq!(errata_for(&cpu(QUALCOMM, FALKOR_V1, 0, 0)), falkor);
        assert_eq!(errata_for(&cpu(QUALCOMM, FALKOR_V1, 0, 1)), Errata::empty());
        for part in [0x200, 0x201, 0x205, 0x211, 0x2ff] {
            assert_eq!(errata_for(&cpu(QUALCOMM, part, 1, 2)), falkor, "{part:#x}");
        }
        assert_eq!(errata_for(&cpu(QUALCOMM, 0x300, 0, 0)), Errata::empty());
        assert_eq!(errata_for(&cpu(ARM, 0x201, 0, 0)), Errata::empty());
        // Azure Cobalt 100: 3194386.
        assert_eq!(
            errata_for(&cpu(MICROSOFT, AZURE_COBALT_100, 0, 0)),
            Errata::ARM64_3194386
        );
    }

    #[test]
    fn the_midr_architecture_field_is_compared() {
        // A Cortex-A53 r0p0 MIDR with architecture 0xe instead of 0xf matches nothing, as in
        // Linux (MIDR_CPU_MODEL_MASK includes the architecture).
        let good = Midr::encode(ARM, CORTEX_A53, 0, 0);
        let odd = (good & !0x000f_0000) | 0x000e_0000;
        assert_ne!(
            errata_for(&CpuId::Arm64 {
                midr: good,
                revidr: 0
            }),
            Errata::empty()
        );
        assert_eq!(
            errata_for(&CpuId::Arm64 {
                midr: odd,
                revidr: 0
            }),
            Errata::empty()
        );
        assert_eq!(aarch64_core_name(good), Some("Cortex-A53"));
        assert_eq!(aarch64_core_name(odd), None);
        // qemu's `max` CPU (implementer 0, part 0x051): nothing known.
        assert_eq!(
            errata_for(&CpuId::Arm64 {
                midr: 0x000f_0510,
                revidr: 0
            }),
            Errata::empty()
        );
    }

    #[test]
    fn every_arm64_range_names_its_core_in_its_source() {
        for e in ERRATA {
            let Matches::Arm64(ranges) = e.matches else {
                continue;
            };
            for r in ranges {
                let name = if r.part_mask == 0xfff {
                    AARCH64_CORES
                        .iter()
                        .find(|(i, p, _)| *i == r.implementer && *p == r.part)
                        .map(|(_, _, n)| *n)
                        .unwrap_or_else(|| panic!("{}: part {:#x} has no name", e.id, r.part))
                } else {
                    "Kryo part 0x2XX"
                };
                assert!(
                    e.source.contains(name),
                    "{}: source does not name {name}",
                    e.id
                );
                assert!(r.first <= r.last, "{}: empty range", e.id);
            }
            assert!(
                e.source.starts_with("Linux arch/arm64/kernel/cpu_errata.c")
                    || e.source.starts_with("Arm TF-A"),
                "{}",
                e.id
            );
        }
    }

    #[test]
    fn amd_ranges() {
        let clean = X86Facts::XSAVEERPTR | X86Facts::NULL_SEL_CLR_BASE;
        let base = Errata::SYSRET_SS_ATTRS;
        // Zen1 (Naples, family 0x17 model 0x01) and Zen+ (0x08): DIV0.
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Amd, 0x17, 0x01, 2, clean)),
            base | Errata::AMD_DIV0
        );
        // Zen2 Rome (0x31) and Renoir (0x60): Zenbleed, no DIV0.
        for model in [0x31, 0x47, 0x60, 0x71, 0x90, 0x91, 0xa0] {
            assert_eq!(
                errata_for(&x86_cpu(Vendor::Amd, 0x17, model, 0, clean)),
                base | Errata::ZENBLEED,
                "model {model:#x}"
            );
        }
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Amd, 0x17, 0x92, 0, clean)),
            base
        );
        // Zen4 Genoa (family 0x19 model 0x11) with NullSelectorClearsBase and XSaveErPtr.
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Amd, 0x19, 0x11, 1, clean)),
            base
        );
        // ... and without them (as a hypervisor may hide them).
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Amd, 0x19, 0x11, 1, X86Facts::empty())),
            base | Errata::NULL_SEG | Errata::FXSAVE_LEAK
        );
        // Erratum 400 boundaries.
        let k8 = |m, s| errata_for(&x86_cpu(Vendor::Amd, 0xf, m, s, clean));
        assert!(!k8(0x41, 1).contains(Errata::AMD_E400));
        assert!(k8(0x41, 2).contains(Errata::AMD_E400));
        assert!(k8(0x42, 0).contains(Errata::AMD_E400));
        let gh = |m, s| errata_for(&x86_cpu(Vendor::Amd, 0x10, m, s, clean));
        assert!(!gh(0x02, 0).contains(Errata::AMD_E400));
        assert!(gh(0x02, 0).contains(Errata::AMD_TLB_MMATCH));
        assert!(gh(0x02, 1).contains(Errata::AMD_E400 | Errata::AMD_TLB_MMATCH));
        // Hygon: SYSRET and NULL_SEG but not the AMD-only ones.
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Hygon, 0x18, 0x00, 0, X86Facts::empty())),
            Errata::SYSRET_SS_ATTRS | Errata::NULL_SEG
        );
    }

    #[test]
    fn intel_ranges() {
        let c = X86Facts::CLFLUSH | X86Facts::MWAIT;
        for model in [29, 46, 47] {
            assert_eq!(
                errata_for(&x86_cpu(Vendor::Intel, 6, model, 0, c)),
                Errata::CLFLUSH_MONITOR
            );
            // Without CLFLUSH the bug does not apply.
            assert_eq!(
                errata_for(&x86_cpu(Vendor::Intel, 6, model, 0, X86Facts::MWAIT)),
                Errata::empty()
            );
        }
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Intel, 6, 0x5c, 9, c)),
            Errata::MONITOR
        );
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Intel, 6, 0x5c, 9, X86Facts::CLFLUSH)),
            Errata::empty()
        );
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Intel, 6, 0x3c, 3, c)),
            Errata::empty()
        );
        // The same model number in another family is another CPU.
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Intel, 0xf, 29, 0, c)),
            Errata::empty()
        );
        // An x86 CPU never matches an AArch64 entry and vice versa.
        assert_eq!(
            errata_for(&x86_cpu(Vendor::Other, 6, 29, 0, c)),
            Errata::empty()
        );
    }
}
