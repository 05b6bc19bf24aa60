//! What `--cpu` describes: a recorded system (one CPU or many), decided by the same per-CPU
//! policy as a live one (`alt_runtime::policy::SystemCaps`: features every CPU has, errata
//! any CPU has).
//!
//! | `--cpu` value                               | system |
//! |---------------------------------------------|--------|
//! | `Haswell`, `qemu64`, ... ([`CPU_MODELS`])    | x86-64: the CPUID `qemu-x86_64 -cpu NAME` presents |
//! | `cortex-a53`, `neoverse-n1`, `max`, ... ([`QEMU_AARCH64_MODELS`]) | AArch64: the MIDR `qemu-aarch64 -cpu NAME` answers |
//! | `cortex-a53:r0p4`, `kryo-4xx-gold:r13p14`    | AArch64: a core the errata database names, at `rXpY` |
//! | `0x410fd034`, `0x410fd034/0x100`             | AArch64: a MIDR_EL1 value (and REVIDR_EL1) |
//! | `cortex-a53:r0p4,cortex-a72:r0p2`            | AArch64: several CPUs (big.LITTLE), numbered from 0 |
//! | a directory                                 | AArch64: a recorded sysfs tree (it stands for `/sys`; every online CPU) |
//! | a file                                      | x86-64: a CPUID dump, this crate's text form or an AIDA64 / InstLatx64 dump (every logical CPU in it) |
//!
//! [`CPU_MODELS`]: alt_runtime::x86_64::cpuid::CPU_MODELS

use std::path::Path;

use alt_runtime::cpu::CpuDescriptor;
use alt_runtime::errata::{Midr, AARCH64_CORES, MIDR_ARCHITECTURE_ID_REGS};
use alt_runtime::policy::SystemCaps;
use alt_runtime::sysfs::Sysfs;
use alt_runtime::x86_64::cpuid::{cpu_model_dump, CPU_MODELS};
use alt_runtime::x86_64::dump::parse_dumps;
use alt_runtime::{Capability, CapabilitySet};

use crate::read::Machine;

/// The MIDR_EL1 each `qemu-aarch64 -cpu NAME` model answers (QEMU 7.2, Debian 12; checked
/// against the emulator by `tests/aarch64_qemu.rs`).
pub const QEMU_AARCH64_MODELS: &[(&str, u32)] = &[
    ("cortex-a35", 0x411f_d040),
    ("cortex-a53", 0x410f_d034),
    ("cortex-a57", 0x411f_d070),
    ("cortex-a72", 0x410f_d083),
    ("cortex-a76", 0x414f_d0b1),
    ("neoverse-n1", 0x414f_d0c1),
    ("a64fx", 0x461f_0010),
    ("max", 0x000f_0510),
];

/// What the CPU (or system) looks like, for [`crate::inspect::plan`] and [`crate::apply`].
#[derive(Clone, Debug)]
pub enum CpuSpec {
    /// These capabilities are present (features usable, errata needing their workaround), on
    /// any instruction set.
    Capabilities(CapabilitySet),
    /// A recorded system: its CPUs, decided by the runtime's policy.
    System {
        /// Their instruction set.
        machine: Machine,
        /// One descriptor per CPU.
        cpus: Vec<CpuDescriptor>,
    },
}

impl CpuSpec {
    /// Parses a comma-separated list of capability names (`popcnt,avx2,erratum_amd_div0`).
    pub fn from_names(list: &str) -> Result<Self, String> {
        let mut set = CapabilitySet::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let cap = Capability::from_name(name).ok_or_else(|| {
                let hint = Capability::suggest(name)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                format!(
                    "unknown capability name {name:?}{hint} (capabilities: {})",
                    alt_runtime::capability::CapabilityNames
                )
            })?;
            set.set(cap);
        }
        Ok(Self::Capabilities(set))
    }

    /// Parses a `--cpu` value: any form of the [module table](self). A name that is both an
    /// x86-64 and an AArch64 QEMU model (`max`) is the x86-64 one; see [`CpuSpec::for_image`].
    pub fn from_model(spec: &str) -> Result<Self, String> {
        Self::for_image(spec, None)
    }

    /// [`CpuSpec::from_model`] for an image of instruction set `machine`: a name both
    /// instruction sets have (`max`) is the model of `machine`'s.
    pub fn for_image(spec: &str, machine: Option<Machine>) -> Result<Self, String> {
        if machine == Some(Machine::Aarch64) {
            if let Some((_, midr)) = QEMU_AARCH64_MODELS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(spec))
            {
                return Ok(Self::System {
                    machine: Machine::Aarch64,
                    cpus: vec![CpuDescriptor::arm64(0, *midr, 0)],
                });
            }
        }
        let x86 = |cpus| Self::System {
            machine: Machine::X86_64,
            cpus,
        };
        let arm = |cpus| Self::System {
            machine: Machine::Aarch64,
            cpus,
        };
        if let Some(dump) = cpu_model_dump(spec) {
            return Ok(x86(vec![CpuDescriptor::from_source(0, &dump)]));
        }
        let path = Path::new(spec);
        if path.is_dir() {
            let cpus = alt_runtime::cpu::arm64_cpus(&Sysfs::at(path))
                .map_err(|e| format!("--cpu {spec}: not a sysfs tree of AArch64 CPUs: {e}"))?;
            if cpus.is_empty() {
                return Err(format!("--cpu {spec}: the sysfs tree has no online CPU"));
            }
            return Ok(arm(cpus));
        }
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--cpu {spec}: cannot read the CPUID dump: {e}"))?;
            let dumped = parse_dumps(&text).map_err(|e| format!("--cpu {spec}: {e}"))?;
            return Ok(x86(dumped
                .iter()
                .map(|c| CpuDescriptor::from_source(c.index, &c.dump))
                .collect()));
        }
        let mut cpus = Vec::new();
        for (i, item) in spec.split(',').map(str::trim).enumerate() {
            let (midr, revidr) = aarch64_cpu(item).ok_or_else(|| {
                format!(
                    "--cpu {spec}: unknown CPU model, and no core, MIDR, sysfs tree or CPUID \
                     dump file: {item:?}; x86-64 models: {}; AArch64 models: {}; or CORE:rXpY \
                     (cores: {}), a MIDR value 0x410fd034[/REVIDR], a sysfs directory, a CPUID \
                     dump file",
                    CPU_MODELS.join(", "),
                    QEMU_AARCH64_MODELS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    AARCH64_CORES
                        .iter()
                        .map(|(_, _, n)| core_key(n))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?;
            cpus.push(CpuDescriptor::arm64(i as u32, midr, revidr));
        }
        Ok(arm(cpus))
    }

    /// The capabilities the system has: for a recorded system, features every CPU has and
    /// errata any CPU has.
    pub fn capabilities(&self) -> CapabilitySet {
        match self {
            Self::Capabilities(c) => *c,
            Self::System { cpus, .. } => SystemCaps::from_cpus(cpus).capabilities(),
        }
    }

    /// The instruction set the spec is about; `None` for a list of capability names.
    pub fn machine(&self) -> Option<Machine> {
        match self {
            Self::Capabilities(_) => None,
            Self::System { machine, .. } => Some(*machine),
        }
    }

    /// The CPUs of a recorded system (none for a list of capability names).
    pub fn cpus(&self) -> &[CpuDescriptor] {
        match self {
            Self::Capabilities(_) => &[],
            Self::System { cpus, .. } => cpus,
        }
    }

    /// Refuses a spec for another instruction set than `machine`'s.
    pub fn check_machine(&self, machine: Machine, file: &Path) -> Result<(), String> {
        match self.machine() {
            Some(m) if m != machine => Err(format!(
                "--cpu describes {} CPUs but {} is an {} image",
                m.name(),
                file.display(),
                machine.name()
            )),
            _ => Ok(()),
        }
    }
}

/// `Cortex-A53` -> `cortex-a53`, `Kryo 4xx Gold` -> `kryo-4xx-gold`.
fn core_key(name: &str) -> String {
    name.to_ascii_lowercase().replace(' ', "-")
}

fn hex32(s: &str) -> Option<u32> {
    let d = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u32::from_str_radix(d, 16).ok()
}

/// One AArch64 CPU: a QEMU model, `CORE:rXpY`, or `MIDR[/REVIDR]`; `(midr, revidr)`.
fn aarch64_cpu(item: &str) -> Option<(u32, u32)> {
    if let Some((_, midr)) = QEMU_AARCH64_MODELS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(item))
    {
        return Some((*midr, 0));
    }
    if let Some((midr, revidr)) = item.split_once('/') {
        return Some((hex32(midr)?, hex32(revidr)?));
    }
    if let Some(midr) = hex32(item) {
        return Some((midr, 0));
    }
    let (core, rev) = item.split_once(':')?;
    let (_, implementer, part) = AARCH64_CORES
        .iter()
        .map(|(i, p, n)| (core_key(n), *i, *p))
        .find(|(k, _, _)| k.eq_ignore_ascii_case(core))?;
    let (variant, revision) = rev.strip_prefix(['r', 'R'])?.split_once(['p', 'P'])?;
    let (variant, revision): (u8, u8) = (variant.parse().ok()?, revision.parse().ok()?);
    if variant > 0xf || revision > 0xf {
        return None;
    }
    let midr = Midr::encode(implementer, part, variant, revision);
    debug_assert_eq!(Midr::decode(midr).architecture, MIDR_ARCHITECTURE_ID_REGS);
    Some((midr, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alt_runtime::{Errata, Features};

    #[test]
    fn aarch64_forms() {
        let one = |s| CpuSpec::from_model(s).unwrap();
        let midr = |s: &CpuSpec| match s.cpus()[0].id {
            alt_runtime::cpu::CpuId::Arm64 { midr, revidr } => (midr, revidr),
            _ => panic!("not AArch64"),
        };
        assert_eq!(midr(&one("cortex-a53")), (0x410f_d034, 0));
        assert_eq!(midr(&one("Cortex-A53:r0p4")), (0x410f_d034, 0));
        assert_eq!(midr(&one("cortex-a72:r0p2")), (0x410f_d082, 0));
        assert_eq!(midr(&one("kryo-4xx-gold:r13p14")), (0x51df_804e, 0));
        assert_eq!(midr(&one("0x410fd034/0x100")), (0x410f_d034, 0x100));
        assert_eq!(one("max").machine(), Some(Machine::X86_64), "x86-64 first");
        let max = CpuSpec::for_image("max", Some(Machine::Aarch64)).unwrap();
        assert_eq!(midr(&max), (0x000f_0510, 0));
        assert_eq!(one("neoverse-n1").machine(), Some(Machine::Aarch64));
        let bl = one("cortex-a53:r0p4,cortex-a72:r0p2");
        assert_eq!(bl.cpus().len(), 2);
        assert_eq!(bl.cpus()[1].index, 1);
        // big.LITTLE: the A53's errata and the A72's, OR.
        let e = bl.capabilities().errata;
        assert!(e.contains(Errata::ARM64_843419 | Errata::ARM64_1319367));
        // The REVIDR fix bit is honoured.
        assert!(!one("0x410fd034/0x100")
            .capabilities()
            .errata
            .contains(Errata::ARM64_843419));
        for bad in [
            "cortex-a53:r16p0",
            "cortex-a53:x0",
            "nosuch:r0p0",
            "0x1g",
            "pentium",
        ] {
            let e = CpuSpec::from_model(bad).unwrap_err();
            assert!(e.contains("unknown CPU model"), "{bad}: {e}");
        }
    }

    #[test]
    fn x86_models_and_machines() {
        let hsw = CpuSpec::from_model("Haswell").unwrap();
        assert_eq!(hsw.machine(), Some(Machine::X86_64));
        assert!(hsw.capabilities().features.contains(Features::AVX2));
        assert!(hsw
            .check_machine(Machine::Aarch64, Path::new("a.out"))
            .unwrap_err()
            .contains("describes x86-64 CPUs but a.out is an AArch64 image"));
        assert!(CpuSpec::from_names("popcnt")
            .unwrap()
            .check_machine(Machine::Aarch64, Path::new("x"))
            .is_ok());
    }
}
