//! What a CPU is: its identity, as the errata database and the reports name it.
//!
//! [`CpuId`] is a CPU's identity (CPUID results on x86-64, MIDR_EL1 and REVIDR_EL1 on
//! AArch64); [`Midr`] splits a MIDR value; the implementer and part numbers are those of
//! Linux's `arch/arm64/include/asm/cputype.h`, and [`aarch64_core_name`] names a core for
//! people. The descriptors of [`crate::cpu`] and the matches of [`crate::errata`] both build on
//! this module, which depends on neither.

use core::fmt;

use crate::x86_64::cpuid::X86Cpu;

/// The identity of a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuId {
    /// An x86-64 CPU, as decoded from CPUID.
    X86(X86Cpu),
    /// An AArch64 CPU.
    Arm64 {
        /// MIDR_EL1.
        midr: u32,
        /// REVIDR_EL1.
        revidr: u32,
    },
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuId::X86(cpu) => cpu.fmt(f),
            CpuId::Arm64 { midr, revidr } => {
                let m = Midr::decode(*midr);
                write!(f, "MIDR {midr:#010x} (")?;
                if let Some(name) = aarch64_core_name(*midr) {
                    write!(f, "{name} ")?;
                }
                write!(
                    f,
                    "r{}p{}, implementer {:#04x} part {:#05x}) REVIDR {revidr:#x}",
                    m.variant, m.revision, m.implementer, m.part
                )
            }
        }
    }
}

/// The fields of a MIDR_EL1 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Midr {
    /// Implementer, bits 31:24.
    pub implementer: u8,
    /// Variant (`rX`), bits 23:20.
    pub variant: u8,
    /// Architecture, bits 19:16.
    pub architecture: u8,
    /// Part number, bits 15:4.
    pub part: u16,
    /// Revision (`pY`), bits 3:0.
    pub revision: u8,
}

impl Midr {
    /// Splits a MIDR_EL1 value.
    pub const fn decode(midr: u32) -> Self {
        Self {
            implementer: (midr >> 24) as u8,
            variant: ((midr >> 20) & 0xf) as u8,
            architecture: ((midr >> 16) & 0xf) as u8,
            part: ((midr >> 4) & 0xfff) as u16,
            revision: (midr & 0xf) as u8,
        }
    }

    /// Builds a MIDR_EL1 value (architecture `0xf`, "see the ID registers", as every Armv8 part).
    pub const fn encode(implementer: u8, part: u16, variant: u8, revision: u8) -> u32 {
        ((implementer as u32) << 24)
            | (((variant & 0xf) as u32) << 20)
            | (0xf << 16)
            | (((part & 0xfff) as u32) << 4)
            | (revision & 0xf) as u32
    }
}

/// MIDR architecture `0xf`: "defined by the ID registers", what every Armv8 and later part
/// reports. Linux's `MIDR_CPU_MODEL` includes it, so a MIDR with another architecture value
/// matches no entry.
pub const MIDR_ARCHITECTURE_ID_REGS: u8 = 0xf;

/// Arm Ltd. implementer code.
pub const ARM: u8 = 0x41;
/// Broadcom implementer code.
pub const BROADCOM: u8 = 0x42;
/// Qualcomm implementer code.
pub const QUALCOMM: u8 = 0x51;
/// Microsoft implementer code.
pub const MICROSOFT: u8 = 0x6d;
/// Cortex-A53 part number.
pub const CORTEX_A53: u16 = 0xd03;
/// Cortex-A55 part number.
pub const CORTEX_A55: u16 = 0xd05;
/// Cortex-A57 part number.
pub const CORTEX_A57: u16 = 0xd07;
/// Cortex-A72 part number.
pub const CORTEX_A72: u16 = 0xd08;
/// Cortex-A76 part number.
pub const CORTEX_A76: u16 = 0xd0b;
/// Neoverse-N1 part number.
pub const NEOVERSE_N1: u16 = 0xd0c;
/// Broadcom Brahma-B53 part number (a Cortex-A53).
pub const BRAHMA_B53: u16 = 0x100;
/// Qualcomm Falkor v1 part number (Qualcomm's own design).
pub const FALKOR_V1: u16 = 0x800;
/// Qualcomm Kryo parts `0x2XX` (Qualcomm's own design), matched under the mask `0xf00`.
pub const KRYO: u16 = 0x200;
/// Qualcomm Kryo 2xx Silver part number (a Cortex-A53).
pub const KRYO_2XX_SILVER: u16 = 0x801;
/// Qualcomm Kryo 4xx Gold part number (a Cortex-A76).
pub const KRYO_4XX_GOLD: u16 = 0x804;
/// Qualcomm Kryo 4xx Silver part number (a Cortex-A55).
pub const KRYO_4XX_SILVER: u16 = 0x805;

/// The AArch64 cores the database names, for people: `(implementer, part, name)`. Part
/// numbers are those of Linux's `arch/arm64/include/asm/cputype.h`.
pub const AARCH64_CORES: &[(u8, u16, &str)] = &[
    (ARM, CORTEX_A53, "Cortex-A53"),
    (ARM, CORTEX_A55, "Cortex-A55"),
    (ARM, CORTEX_A57, "Cortex-A57"),
    (ARM, CORTEX_A72, "Cortex-A72"),
    (ARM, CORTEX_A76, "Cortex-A76"),
    (ARM, NEOVERSE_N1, "Neoverse-N1"),
    (ARM, 0xd0d, "Cortex-A77"),
    (ARM, 0xd41, "Cortex-A78"),
    (ARM, 0xd4b, "Cortex-A78C"),
    (ARM, 0xd47, "Cortex-A710"),
    (ARM, 0xd4d, "Cortex-A715"),
    (ARM, 0xd81, "Cortex-A720"),
    (ARM, 0xd87, "Cortex-A725"),
    (ARM, 0xd44, "Cortex-X1"),
    (ARM, 0xd4c, "Cortex-X1C"),
    (ARM, 0xd48, "Cortex-X2"),
    (ARM, 0xd4e, "Cortex-X3"),
    (ARM, 0xd82, "Cortex-X4"),
    (ARM, 0xd85, "Cortex-X925"),
    (ARM, 0xd49, "Neoverse-N2"),
    (ARM, 0xd8e, "Neoverse-N3"),
    (ARM, 0xd40, "Neoverse-V1"),
    (ARM, 0xd4f, "Neoverse-V2"),
    (ARM, 0xd84, "Neoverse-V3"),
    (BROADCOM, BRAHMA_B53, "Brahma-B53"),
    (QUALCOMM, FALKOR_V1, "Falkor v1"),
    (QUALCOMM, KRYO_2XX_SILVER, "Kryo 2xx Silver"),
    (QUALCOMM, KRYO_4XX_GOLD, "Kryo 4xx Gold"),
    (QUALCOMM, KRYO_4XX_SILVER, "Kryo 4xx Silver"),
    (MICROSOFT, AZURE_COBALT_100, "Azure Cobalt 100"),
];

/// The name of the core a MIDR value identifies, if the database knows it (Qualcomm parts
/// `0x2XX` are "Kryo").
pub fn aarch64_core_name(midr: u32) -> Option<&'static str> {
    let m = Midr::decode(midr);
    if m.architecture != MIDR_ARCHITECTURE_ID_REGS {
        return None;
    }
    AARCH64_CORES
        .iter()
        .find(|(i, p, _)| *i == m.implementer && *p == m.part)
        .map(|(_, _, n)| *n)
        .or((m.implementer == QUALCOMM && m.part & 0xf00 == KRYO).then_some("Kryo"))
}

/// Microsoft Azure Cobalt 100 part number (a Neoverse-N2).
pub const AZURE_COBALT_100: u16 = 0xd49;
