//! The capability policy: from per-CPU descriptors to one system-wide decision, and what a CPU
//! that arrives after patching must agree with.
//!
//! The model follows Linux arm64's `cpufeature.c`. Every capability has a [`Scope`]:
//!
//! | scope                | decided from                         | capabilities                       |
//! |----------------------|--------------------------------------|------------------------------------|
//! | [`Scope::System`]    | every CPU: present if **all** have it | CPU features (AND)                 |
//! | [`Scope::LocalCpu`]  | every CPU: present if **any** has it  | errata (OR): a workaround is applied everywhere if one CPU needs it |
//! | [`Scope::BootCpu`]   | the boot CPU alone                   | [`Features::HYPERVISOR`]: a property of the platform |
//!
//! The boot CPU is the reported CPU with the lowest index, so the decision depends on which
//! CPUs reported, never on the order they reported in.
//!
//! # Late CPUs
//!
//! Patching *uses* some capabilities: those some table entry is keyed by. Once sites are
//! written, a CPU that comes up later ([`SystemCaps::check_late_cpu`]) is refused if it
//!
//! - lacks a feature that was patched in (the system has it, the CPU does not), or
//! - needs an erratum workaround that was not applied (the system lacks it, the CPU has it), or
//! - differs from the boot CPU in a boot-scope capability.
//!
//! [`LateCpuPolicy`] says which capabilities count: [`LateCpuPolicy::Optional`] only those
//! patching used, [`LateCpuPolicy::MustMatch`] every capability of the system.
//!
//! ```
//! use alt_runtime::cpu::CpuDescriptor;
//! use alt_runtime::errata::{Midr, ARM, CORTEX_A53, CORTEX_A72};
//! use alt_runtime::policy::SystemCaps;
//! use alt_runtime::Errata;
//!
//! let little = CpuDescriptor::arm64(0, Midr::encode(ARM, CORTEX_A53, 0, 4), 0);
//! let big = CpuDescriptor::arm64(4, Midr::encode(ARM, CORTEX_A72, 0, 2), 0);
//! let sys = SystemCaps::from_cpus(&[big, little]);
//! // The A53's erratum is worked around on every CPU.
//! assert!(sys.capabilities().errata.contains(Errata::ARM64_843419));
//! ```

use core::fmt;

use crate::capability::{Capability, CapabilityKind, CapabilitySet, Errata, Features};
use crate::cpu::CpuDescriptor;

/// How a capability's system-wide value is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// From the boot CPU; every other CPU must agree.
    BootCpu,
    /// Any CPU: present if one CPU has it (errata).
    LocalCpu,
    /// Every CPU: present only if all have it (features).
    System,
}

/// Features whose scope is the boot CPU.
pub const BOOT_CPU_FEATURES: Features = Features::HYPERVISOR;

/// The scope of a capability.
pub fn scope(cap: Capability) -> Scope {
    match cap.kind() {
        CapabilityKind::Feature(f) if BOOT_CPU_FEATURES.contains(f) => Scope::BootCpu,
        CapabilityKind::Feature(_) => Scope::System,
        CapabilityKind::Erratum(_) => Scope::LocalCpu,
    }
}

/// What a CPU that arrives after patching must agree with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LateCpuPolicy {
    /// The CPU must agree with every capability of the system, used or not: it may lack no
    /// system feature and have no erratum the system lacks. Safe for code patched later.
    MustMatch,
    /// Capabilities that patching did not use are optional: only a conflict with a used
    /// capability refuses the CPU.
    Optional,
}

/// Why a CPU was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateCpuError {
    /// The CPU lacks a feature the system (and so the patched code) relies on.
    MissingFeature {
        /// The CPU's index.
        cpu: u32,
        /// The feature.
        feature: Capability,
    },
    /// The CPU needs an erratum workaround that was not applied.
    UnhandledErratum {
        /// The CPU's index.
        cpu: u32,
        /// The erratum.
        erratum: Capability,
    },
    /// The CPU differs from the boot CPU in a boot-scope capability.
    BootCpuMismatch {
        /// The CPU's index.
        cpu: u32,
        /// The capability.
        capability: Capability,
        /// Whether the boot CPU has it.
        boot_has: bool,
    },
}

impl LateCpuError {
    /// The index of the refused CPU.
    pub fn cpu(&self) -> u32 {
        match *self {
            LateCpuError::MissingFeature { cpu, .. }
            | LateCpuError::UnhandledErratum { cpu, .. }
            | LateCpuError::BootCpuMismatch { cpu, .. } => cpu,
        }
    }

    /// The capability in conflict.
    pub fn capability(&self) -> Capability {
        match *self {
            LateCpuError::MissingFeature { feature: c, .. }
            | LateCpuError::UnhandledErratum { erratum: c, .. }
            | LateCpuError::BootCpuMismatch { capability: c, .. } => c,
        }
    }
}

impl fmt::Display for LateCpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LateCpuError::MissingFeature { cpu, feature } => write!(
                f,
                "CPU {cpu} refused: it lacks feature {feature}, which the system uses"
            ),
            LateCpuError::UnhandledErratum { cpu, erratum } => write!(
                f,
                "CPU {cpu} refused: it needs the workaround for {erratum}, which was not applied"
            ),
            LateCpuError::BootCpuMismatch {
                cpu,
                capability,
                boot_has,
            } => write!(
                f,
                "CPU {cpu} refused: boot-CPU capability {capability} is {} on the boot CPU but {} on this CPU",
                if *boot_has { "present" } else { "absent" },
                if *boot_has { "absent" } else { "present" },
            ),
        }
    }
}

/// The system's capabilities, decided from the CPUs present at patch time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemCaps {
    caps: CapabilitySet,
    boot: CapabilitySet,
    cpus: u32,
    used: CapabilitySet,
}

impl Default for SystemCaps {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemCaps {
    /// No CPUs yet. Until a CPU is added the set is empty (no feature is usable).
    pub const fn new() -> Self {
        Self {
            caps: CapabilitySet::new(Features::empty(), Errata::empty()),
            boot: CapabilitySet::new(Features::empty(), Errata::empty()),
            cpus: 0,
            used: CapabilitySet::new(Features::empty(), Errata::empty()),
        }
    }

    /// The decision for these CPUs. The result does not depend on their order.
    pub fn from_cpus(cpus: &[CpuDescriptor]) -> Self {
        let mut s = Self::new();
        let mut boot_index = u32::MAX;
        for d in cpus {
            s.add(d, &mut boot_index);
        }
        s
    }

    fn add(&mut self, d: &CpuDescriptor, boot_index: &mut u32) {
        let c = d.capabilities();
        if self.cpus == 0 {
            self.caps = c;
        } else {
            self.caps = self.caps.combine(c);
        }
        if self.cpus == 0 || d.index < *boot_index {
            *boot_index = d.index;
            self.boot = c;
        }
        self.cpus += 1;
    }

    /// Number of CPUs the decision was made from.
    pub fn cpu_count(&self) -> u32 {
        self.cpus
    }

    /// The system capability set: features every CPU has (boot-scope features from the boot
    /// CPU), errata any CPU has. This is what the planner decides sites by.
    pub fn capabilities(&self) -> CapabilitySet {
        let mut features = self.caps.features & !BOOT_CPU_FEATURES;
        features |= self.boot.features & BOOT_CPU_FEATURES;
        CapabilitySet::new(features, self.caps.errata)
    }

    /// Records which capabilities patching used (the capability ids of the table entries it
    /// decided), for [`check_late_cpu`](Self::check_late_cpu).
    pub fn set_used(&mut self, used: CapabilitySet) {
        self.used = used;
    }

    /// Builder form of [`set_used`](Self::set_used).
    pub fn with_used(mut self, used: CapabilitySet) -> Self {
        self.used = used;
        self
    }

    /// The capabilities patching used.
    pub fn used(&self) -> CapabilitySet {
        self.used
    }

    /// Checks a CPU that arrives after patching. The error names the CPU and the first
    /// conflicting capability in id order.
    pub fn check_late_cpu(
        &self,
        cpu: &CpuDescriptor,
        policy: LateCpuPolicy,
    ) -> Result<(), LateCpuError> {
        let sys = self.capabilities();
        let mine = cpu.capabilities();
        let relevant = |c: Capability| match policy {
            LateCpuPolicy::MustMatch => true,
            LateCpuPolicy::Optional => self.used.has(c),
        };
        for cap in Capability::all().filter(|c| relevant(*c)) {
            let (system_has, cpu_has) = (sys.has(cap), mine.has(cap));
            let index = cpu.index;
            match scope(cap) {
                Scope::BootCpu if system_has != cpu_has => {
                    return Err(LateCpuError::BootCpuMismatch {
                        cpu: index,
                        capability: cap,
                        boot_has: system_has,
                    })
                }
                Scope::System if system_has && !cpu_has => {
                    return Err(LateCpuError::MissingFeature {
                        cpu: index,
                        feature: cap,
                    })
                }
                Scope::LocalCpu if cpu_has && !system_has => {
                    return Err(LateCpuError::UnhandledErratum {
                        cpu: index,
                        erratum: cap,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Why a [`CpuRegistry`] refused a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// A CPU with this index already reported.
    Duplicate {
        /// The index.
        cpu: u32,
    },
    /// The registry holds no more CPUs.
    Full {
        /// The index of the CPU that did not fit.
        cpu: u32,
    },
    /// A CPU that reported after [`CpuRegistry::finalize`] conflicts with what was patched.
    Late(LateCpuError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Duplicate { cpu } => write!(f, "CPU {cpu} reported twice"),
            RegistryError::Full { cpu } => {
                write!(f, "CPU {cpu} refused: the CPU registry is full")
            }
            RegistryError::Late(e) => e.fmt(f),
        }
    }
}

impl From<LateCpuError> for RegistryError {
    fn from(e: LateCpuError) -> Self {
        RegistryError::Late(e)
    }
}

/// Bare-metal CPU bring-up without an allocator: each CPU reports its descriptor as it comes up;
/// the boot code [finalizes](Self::finalize) once the early CPUs are in and patches with the
/// result; CPUs reporting after that are checked against it under the registry's
/// [`LateCpuPolicy`]. Holds up to `N` CPUs (early and accepted late ones).
///
/// The registry is not synchronised: call it under the kernel's bring-up lock.
///
/// ```
/// use alt_runtime::cpu::CpuDescriptor;
/// use alt_runtime::errata::{Midr, ARM, CORTEX_A53, CORTEX_A72};
/// use alt_runtime::policy::{CpuRegistry, LateCpuPolicy, RegistryError};
/// use alt_runtime::{CapabilitySet, Errata, Features};
///
/// let mut reg = CpuRegistry::<8>::new(LateCpuPolicy::Optional);
/// reg.report(CpuDescriptor::arm64(0, Midr::encode(ARM, CORTEX_A72, 0, 2), 0)).unwrap();
/// let caps = reg.finalize();
/// assert!(!caps.errata.contains(Errata::ARM64_843419));
/// // Patching used sites keyed by every erratum (taking none of the workarounds but 1319367).
/// reg.set_used(CapabilitySet::new(Features::empty(), Errata::all()));
/// // A Cortex-A53 r0p4 hot-plugged later needs a workaround that was not applied.
/// let late = CpuDescriptor::arm64(5, Midr::encode(ARM, CORTEX_A53, 0, 4), 0);
/// let err = reg.report(late).unwrap_err();
/// assert!(matches!(err, RegistryError::Late(e) if e.cpu() == 5));
/// ```
#[derive(Clone, Debug)]
pub struct CpuRegistry<const N: usize> {
    cpus: [Option<CpuDescriptor>; N],
    len: usize,
    policy: LateCpuPolicy,
    finalized: Option<SystemCaps>,
}

impl<const N: usize> CpuRegistry<N> {
    /// An empty registry with this late-CPU policy.
    pub const fn new(policy: LateCpuPolicy) -> Self {
        Self {
            cpus: [None; N],
            len: 0,
            policy,
            finalized: None,
        }
    }

    /// A CPU reports. Before [`finalize`](Self::finalize) it joins the decision; after, it is
    /// checked and recorded only if it agrees.
    pub fn report(&mut self, desc: CpuDescriptor) -> Result<(), RegistryError> {
        if self.cpus().any(|d| d.index == desc.index) {
            return Err(RegistryError::Duplicate { cpu: desc.index });
        }
        if let Some(sys) = &self.finalized {
            sys.check_late_cpu(&desc, self.policy)?;
        }
        let slot = self
            .cpus
            .get_mut(self.len)
            .ok_or(RegistryError::Full { cpu: desc.index })?;
        *slot = Some(desc);
        self.len += 1;
        Ok(())
    }

    /// Decides the system's capabilities from the CPUs reported so far (order does not matter)
    /// and turns later reports into late-CPU checks. Calling it again returns the same set.
    pub fn finalize(&mut self) -> CapabilitySet {
        if let Some(sys) = &self.finalized {
            return sys.capabilities();
        }
        let mut sys = SystemCaps::new();
        let mut boot = u32::MAX;
        for d in self.cpus.iter().flatten() {
            sys.add(d, &mut boot);
        }
        self.finalized = Some(sys);
        sys.capabilities()
    }

    /// Records the capabilities patching used (see [`SystemCaps::set_used`]). Has no effect
    /// before [`finalize`](Self::finalize).
    pub fn set_used(&mut self, used: CapabilitySet) {
        if let Some(sys) = &mut self.finalized {
            sys.set_used(used);
        }
    }

    /// The decision, once finalized.
    pub fn system(&self) -> Option<&SystemCaps> {
        self.finalized.as_ref()
    }

    /// The CPUs accepted so far, in report order.
    pub fn cpus(&self) -> impl Iterator<Item = &CpuDescriptor> + '_ {
        self.cpus[..self.len].iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errata::{Midr, ARM, CORTEX_A53, CORTEX_A72};

    fn a53(i: u32) -> CpuDescriptor {
        CpuDescriptor::arm64(i, Midr::encode(ARM, CORTEX_A53, 0, 4), 0)
    }
    fn a72(i: u32) -> CpuDescriptor {
        CpuDescriptor::arm64(i, Midr::encode(ARM, CORTEX_A72, 0, 2), 0)
    }

    #[test]
    fn scopes() {
        let f = |x| Capability::feature(x).unwrap();
        assert_eq!(scope(f(Features::AVX2)), Scope::System);
        assert_eq!(scope(f(Features::HYPERVISOR)), Scope::BootCpu);
        assert_eq!(
            scope(Capability::erratum(Errata::AMD_DIV0).unwrap()),
            Scope::LocalCpu
        );
    }

    #[test]
    fn empty_system_has_nothing() {
        assert_eq!(
            SystemCaps::from_cpus(&[]).capabilities(),
            CapabilitySet::default()
        );
    }

    #[test]
    fn registry_refuses_duplicates_and_overflow() {
        let mut r = CpuRegistry::<2>::new(LateCpuPolicy::MustMatch);
        assert!(r.system().is_none());
        r.report(a53(0)).unwrap();
        assert_eq!(r.report(a53(0)), Err(RegistryError::Duplicate { cpu: 0 }));
        r.report(a72(1)).unwrap();
        assert_eq!(r.report(a72(2)), Err(RegistryError::Full { cpu: 2 }));
        let caps = r.finalize();
        assert_eq!(caps, r.finalize());
        assert_eq!(
            r.system().map(|s| (s.cpu_count(), s.capabilities())),
            Some((2, caps))
        );
        assert_eq!(
            caps,
            SystemCaps::from_cpus(&[a72(1), a53(0)]).capabilities()
        );
    }

    #[test]
    fn the_boot_cpu_is_the_lowest_index_in_any_report_order() {
        let with_hv = |mut d: CpuDescriptor| {
            d.features = Features::HYPERVISOR;
            d
        };
        // CPU 0 runs under a hypervisor, CPU 3 does not (and the other way round): the boot
        // CPU decides, whichever reports first or last.
        for (cpus, boot_has) in [
            ([with_hv(a72(0)), a72(3)], true),
            ([a72(3), with_hv(a72(0))], true),
            ([a72(0), with_hv(a72(3))], false),
            ([with_hv(a72(3)), a72(0)], false),
        ] {
            let sys = SystemCaps::from_cpus(&cpus);
            assert_eq!(
                sys.capabilities().features.contains(Features::HYPERVISOR),
                boot_has,
                "{cpus:?}"
            );
            assert_eq!(sys.cpu_count(), 2);
        }
        // Under MustMatch a late CPU must agree with the boot CPU.
        let sys = SystemCaps::from_cpus(&[a72(3), with_hv(a72(0))]);
        let e = sys
            .check_late_cpu(&a72(5), LateCpuPolicy::MustMatch)
            .unwrap_err();
        assert_eq!(e.cpu(), 5);
        assert_eq!(
            e,
            LateCpuError::BootCpuMismatch {
                cpu: 5,
                capability: Capability::feature(Features::HYPERVISOR).unwrap(),
                boot_has: true
            }
        );
    }

    #[test]
    fn late_cpu_policies() {
        let sys = SystemCaps::from_cpus(&[a72(0), a72(1)]);
        // Nothing used: Optional accepts the A53, MustMatch does not.
        assert!(sys.check_late_cpu(&a53(2), LateCpuPolicy::Optional).is_ok());
        let e = sys
            .check_late_cpu(&a53(2), LateCpuPolicy::MustMatch)
            .unwrap_err();
        assert_eq!(
            e,
            LateCpuError::UnhandledErratum {
                cpu: 2,
                erratum: Capability::erratum(Errata::ARM64_835769).unwrap()
            }
        );
        // A used erratum whose workaround was not applied refuses the CPU under both.
        let used = CapabilitySet::new(Features::empty(), Errata::ARM64_843419);
        let sys = sys.with_used(used);
        assert_eq!(sys.used(), used);
        let e = sys
            .check_late_cpu(&a53(2), LateCpuPolicy::Optional)
            .unwrap_err();
        assert_eq!(e.capability().name(), "erratum_arm64_843419");
        let mut s = crate::test_util::FmtBuf::default();
        fmt::write(&mut s, format_args!("{e}")).unwrap();
        assert_eq!(
            s.as_str(),
            "CPU 2 refused: it needs the workaround for erratum_arm64_843419, which was not applied"
        );
    }
}
