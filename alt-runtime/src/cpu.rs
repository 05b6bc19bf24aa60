//! Per-CPU descriptors: what one logical CPU is and what it can do.
//!
//! A [`CpuDescriptor`] holds a CPU's identity ([`CpuId`]: CPUID results on x86-64, MIDR and
//! REVIDR on AArch64), its usable [`Features`] and the [`Errata`] the
//! [errata database](crate::errata) says it has. [`crate::policy`] combines the descriptors of
//! all CPUs into the system's capabilities.
//!
//! - **Hosted Linux** (`std`): `probe_online_cpus` returns one descriptor per **online** CPU
//!   (`/sys/devices/system/cpu/online`), whatever the process's affinity mask, cheaply enough
//!   for every process start: on AArch64 from each CPU's MIDR_EL1/REVIDR_EL1 in sysfs (no
//!   thread); on x86-64 one probe stands for every CPU of a core type (one probe in all on a
//!   part that is not hybrid; one pinned probe per core type on a hybrid part, whose types
//!   sysfs lists). `probe_every_cpu` (x86-64) probes each online CPU on a thread pinned to it,
//!   assuming nothing; `probe_this_cpu` probes wherever the caller runs.
//! - **Bare metal**: each CPU builds its own descriptor as it comes up
//!   ([`CpuDescriptor::probe_native`] on x86-64, [`CpuDescriptor::arm64`] from MIDR_EL1 and
//!   REVIDR_EL1) and reports it to a [`CpuRegistry`](crate::policy::CpuRegistry).

use core::fmt;

use crate::capability::{CapabilitySet, Errata, Features};
use crate::errata::errata_for;
pub use crate::identity::CpuId;
use crate::x86_64::cpuid::{probe, CpuidSource, X86Cpu};

/// AArch64: one descriptor per online CPU of the sysfs tree, in CPU order, from each CPU's
/// MIDR and REVIDR (errata from the database). No thread, no instruction: two small files per
/// CPU.
#[cfg(feature = "std")]
pub fn arm64_cpus(
    sysfs: &crate::sysfs::Sysfs,
) -> Result<alloc::vec::Vec<CpuDescriptor>, crate::sysfs::SysfsError> {
    sysfs
        .online_cpus()?
        .cpus()
        .iter()
        .map(|&cpu| arm64_cpu(sysfs, cpu))
        .collect()
}

/// AArch64: the descriptor of CPU `cpu` of the sysfs tree (see [`arm64_cpus`]).
#[cfg(feature = "std")]
pub fn arm64_cpu(
    sysfs: &crate::sysfs::Sysfs,
    cpu: u32,
) -> Result<CpuDescriptor, crate::sysfs::SysfsError> {
    let (midr, revidr) = sysfs.arm64_identity(cpu)?;
    Ok(CpuDescriptor::arm64(cpu, midr, revidr))
}

/// One logical CPU: its number, identity, usable features and errata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuDescriptor {
    /// Logical CPU number (Linux's CPU number on hosted Linux).
    pub index: u32,
    /// What the CPU is.
    pub id: CpuId,
    /// Its usable features.
    pub features: Features,
    /// The errata it needs worked around.
    pub errata: Errata,
}

impl CpuDescriptor {
    /// The descriptor of an x86-64 CPU from its probe result; errata from the database.
    pub fn x86(index: u32, cpu: X86Cpu) -> Self {
        let id = CpuId::X86(cpu);
        Self {
            index,
            id,
            features: cpu.features,
            errata: errata_for(&id),
        }
    }

    /// Probes `src` and describes the result as CPU `index`.
    pub fn from_source<S: CpuidSource>(index: u32, src: &S) -> Self {
        Self::x86(index, probe(src))
    }

    /// Probes the CPU this code runs on (x86-64). A bare-metal kernel calls this on each CPU as
    /// it comes up.
    #[cfg(target_arch = "x86_64")]
    pub fn probe_native(index: u32) -> Self {
        Self::from_source(index, &crate::x86_64::cpuid::NativeCpuid)
    }

    /// The descriptor of an AArch64 CPU from MIDR_EL1 and REVIDR_EL1; errata from the database.
    /// ([`Features`] names x86-64 features, so an AArch64 CPU has none of them.)
    pub fn arm64(index: u32, midr: u32, revidr: u32) -> Self {
        let id = CpuId::Arm64 { midr, revidr };
        Self {
            index,
            id,
            features: Features::empty(),
            errata: errata_for(&id),
        }
    }

    /// Features and errata as one set.
    pub fn capabilities(&self) -> CapabilitySet {
        CapabilitySet::new(self.features, self.errata)
    }
}

impl fmt::Display for CpuDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu{}: {}; features: {}; errata: {}",
            self.index,
            self.id,
            CapabilityList(CapabilitySet::new(self.features, Errata::empty())),
            CapabilityList(CapabilitySet::new(Features::empty(), self.errata)),
        )
    }
}

/// Displays the names of the capabilities in a set, separated by spaces, or `-` when empty.
#[derive(Clone, Copy, Debug)]
pub struct CapabilityList(pub CapabilitySet);

impl fmt::Display for CapabilityList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for cap in self.0.iter() {
            if any {
                f.write_str(" ")?;
            }
            f.write_str(cap.name())?;
            any = true;
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
pub use plan::{x86_probe_plan, X86ProbePlan};

/// Which CPUs the hosted x86-64 probe runs on: a pure function of what sysfs says, so that
/// recorded trees can check it.
#[cfg(feature = "std")]
mod plan {
    use std::vec::Vec;

    use crate::sysfs::{CoreTypes, CpuList};
    use crate::x86_64::cpuid::CoreType;

    /// How the hosted x86-64 probe covers every online CPU.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum X86ProbePlan {
        /// Not a hybrid part: one probe, wherever the caller runs, stands for every online CPU.
        One,
        /// A hybrid part whose core types sysfs lists: one probe pinned to each kind's online
        /// CPUs stands for every CPU of that kind.
        PerCoreType(Vec<(CoreType, CpuList)>),
        /// A hybrid part without complete core-type lists: a probe pinned to each online CPU.
        EveryCpu,
    }

    /// The plan for these online CPUs, the core-type lists sysfs gave (if any) and whether
    /// CPUID says the part is hybrid (leaf 7 EDX bit 15, the same on every core of a part).
    ///
    /// Core-type lists are used only if every online CPU is in exactly one of them; otherwise
    /// (a CPU in none, or in both) every online CPU is probed on its own.
    pub fn x86_probe_plan(
        online: &CpuList,
        kinds: Option<&CoreTypes>,
        hybrid: bool,
    ) -> X86ProbePlan {
        if !hybrid {
            return X86ProbePlan::One;
        }
        let Some(kinds) = kinds else {
            return X86ProbePlan::EveryCpu;
        };
        let groups: Vec<(CoreType, CpuList)> = kinds
            .0
            .iter()
            .map(|(t, l)| (*t, l.intersection(online)))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        let covered_once = online
            .cpus()
            .iter()
            .all(|&c| groups.iter().filter(|(_, l)| l.contains(c)).count() == 1);
        if covered_once {
            X86ProbePlan::PerCoreType(groups)
        } else {
            X86ProbePlan::EveryCpu
        }
    }
}

#[cfg(all(feature = "std", target_os = "linux"))]
pub use hosted::CpuError;

#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub use hosted::{
    allowed_cpus, probe_cpu_kinds, probe_every_cpu, probe_online_cpus, probe_this_cpu,
};

#[cfg(all(feature = "std", target_os = "linux", target_arch = "aarch64"))]
pub use hosted::{probe_cpu_kinds, probe_online_cpus};

#[cfg(all(feature = "std", target_os = "linux"))]
mod hosted {
    use std::fmt;
    #[cfg(target_arch = "x86_64")]
    use std::vec::Vec;

    use crate::sysfs::{CpuList, SysfsError};
    use crate::x86_64::cpuid::CoreType;
    #[cfg(target_arch = "x86_64")]
    use {
        super::{x86_probe_plan, CpuDescriptor, X86ProbePlan},
        crate::capability::Features,
        crate::sysfs::Sysfs,
        crate::x86_64::cpuid::{probe, NativeCpuid, X86Cpu},
    };

    /// Why the CPUs could not all be probed.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum CpuError {
        /// A sysfs file (the online CPUs, a core-type list, an AArch64 identification
        /// register) could not be read.
        Sysfs(SysfsError),
        /// `sched_getaffinity` failed with this errno.
        GetAffinity(i32),
        /// Pinning a thread to these CPUs failed with this errno (for example a CPU outside
        /// the process's cpuset).
        Pin {
            /// The CPUs.
            cpus: CpuList,
            /// The errno.
            errno: i32,
        },
        /// A thread pinned to `cpus` ran elsewhere (`ran_on`).
        NotPinned {
            /// The CPUs asked for.
            cpus: CpuList,
            /// Where the thread ran.
            ran_on: i32,
        },
        /// A thread pinned to the CPUs sysfs lists as one core type found another in CPUID
        /// leaf 0x1A.
        CoreType {
            /// The CPUs.
            cpus: CpuList,
            /// The core type sysfs gave.
            expected: CoreType,
            /// The core type CPUID gave.
            found: CoreType,
        },
        /// The calling thread's affinity could not be restored after probing (errno).
        RestoreAffinity(i32),
        /// The probe thread for `cpu` could not be started or did not finish.
        Thread {
            /// The CPU.
            cpu: u32,
        },
    }

    impl fmt::Display for CpuError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let os = |e: i32| std::io::Error::from_raw_os_error(e);
            match self {
                CpuError::Sysfs(e) => write!(f, "reading sysfs: {e}"),
                CpuError::GetAffinity(e) => write!(f, "sched_getaffinity failed: {}", os(*e)),
                CpuError::Pin { cpus, errno } => {
                    write!(f, "cannot pin a thread to CPUs {cpus}: {}", os(*errno))
                }
                CpuError::NotPinned { cpus, ran_on } => {
                    write!(f, "probe pinned to CPUs {cpus} ran on CPU {ran_on}")
                }
                CpuError::CoreType {
                    cpus,
                    expected,
                    found,
                } => write!(
                    f,
                    "CPUs {cpus} are listed as core type {expected} but CPUID says {found}"
                ),
                CpuError::RestoreAffinity(e) => write!(
                    f,
                    "cannot restore the calling thread's CPU affinity after probing: {}",
                    os(*e)
                ),
                CpuError::Thread { cpu } => write!(f, "probe thread for CPU {cpu} failed"),
            }
        }
    }

    impl std::error::Error for CpuError {}

    /// AArch64: one descriptor per online CPU from its MIDR_EL1 and REVIDR_EL1 in sysfs
    /// ([`super::arm64_cpus`]). No thread and no instruction: Linux keeps every online CPU's
    /// registers in `/sys/devices/system/cpu/cpuN/regs/identification`.
    #[cfg(target_arch = "aarch64")]
    pub fn probe_online_cpus() -> Result<std::vec::Vec<super::CpuDescriptor>, CpuError> {
        super::arm64_cpus(&crate::sysfs::Sysfs::system()).map_err(CpuError::Sysfs)
    }

    /// AArch64: every online CPU ([`probe_online_cpus`]); its kinds are only known from each.
    #[cfg(target_arch = "aarch64")]
    pub fn probe_cpu_kinds() -> Result<std::vec::Vec<super::CpuDescriptor>, CpuError> {
        probe_online_cpus()
    }

    #[cfg(target_arch = "x86_64")]
    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[cfg(target_arch = "x86_64")]
    fn get_affinity() -> Result<libc::cpu_set_t, CpuError> {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(CpuError::GetAffinity(errno()));
        }
        Ok(set)
    }

    #[cfg(target_arch = "x86_64")]
    fn set_affinity(set: &libc::cpu_set_t) -> Result<(), i32> {
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        if rc != 0 {
            return Err(errno());
        }
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    fn cpu_set(cpus: &CpuList) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus.cpus() {
            if (cpu as usize) < libc::CPU_SETSIZE as usize {
                // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_SET writes inside `set`.
                unsafe { libc::CPU_SET(cpu as usize, &mut set) };
            }
        }
        set
    }

    #[cfg(target_arch = "x86_64")]
    fn current_cpu() -> i32 {
        // SAFETY: sched_getcpu has no preconditions.
        unsafe { libc::sched_getcpu() }
    }

    /// The CPUs this thread may run on (its `sched_getaffinity` mask), in increasing order.
    /// This is not the set the probe covers: that is every online CPU.
    #[cfg(target_arch = "x86_64")]
    pub fn allowed_cpus() -> Result<Vec<u32>, CpuError> {
        let set = get_affinity()?;
        let max = u32::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
        Ok((0..max)
            // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_ISSET reads inside `set`.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu as usize, &set) })
            .collect())
    }

    /// Probes while the calling thread is pinned to each group's CPUs in turn, then restores
    /// its affinity exactly as it was. One probe per group; checks that the thread ran inside
    /// the group and, for a known core type, that CPUID agrees.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn probe_pinned_groups(
        groups: &[(CoreType, CpuList)],
    ) -> Result<Vec<X86Cpu>, CpuError> {
        let saved = get_affinity()?;
        let mut out = Vec::with_capacity(groups.len());
        let mut failure = None;
        for (ty, cpus) in groups {
            if let Err(errno) = set_affinity(&cpu_set(cpus)) {
                failure = Some(CpuError::Pin {
                    cpus: cpus.clone(),
                    errno,
                });
                break;
            }
            // The kernel moves the calling thread before sched_setaffinity returns.
            let cpu = probe(&NativeCpuid);
            let ran_on = current_cpu();
            if ran_on >= 0 && !cpus.contains(ran_on as u32) {
                failure = Some(CpuError::NotPinned {
                    cpus: cpus.clone(),
                    ran_on,
                });
                break;
            }
            if *ty != CoreType::Unknown && cpu.core_type != *ty {
                failure = Some(CpuError::CoreType {
                    cpus: cpus.clone(),
                    expected: *ty,
                    found: cpu.core_type,
                });
                break;
            }
            out.push(cpu);
        }
        set_affinity(&saved).map_err(CpuError::RestoreAffinity)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// One probe per CPU, each on a fresh thread pinned to it; the caller's affinity is never
    /// touched.
    #[cfg(target_arch = "x86_64")]
    fn probe_each(cpus: &CpuList) -> Result<Vec<CpuDescriptor>, CpuError> {
        let mut out = Vec::with_capacity(cpus.cpus().len());
        for &cpu in cpus.cpus() {
            let handle = std::thread::Builder::new()
                .name(std::format!("alt-probe-{cpu}"))
                .spawn(move || -> Result<CpuDescriptor, CpuError> {
                    let one = CpuList::from_cpus([cpu]);
                    set_affinity(&cpu_set(&one)).map_err(|errno| CpuError::Pin {
                        cpus: one.clone(),
                        errno,
                    })?;
                    let ran_on = current_cpu();
                    if ran_on >= 0 && ran_on as u32 != cpu {
                        return Err(CpuError::NotPinned { cpus: one, ran_on });
                    }
                    Ok(CpuDescriptor::probe_native(cpu))
                })
                .map_err(|_| CpuError::Thread { cpu })?;
            let desc = handle.join().map_err(|_| CpuError::Thread { cpu })??;
            out.push(desc);
        }
        Ok(out)
    }

    /// One descriptor per **online** CPU (`/sys/devices/system/cpu/online`), in CPU order,
    /// cheaply: the process's affinity mask does not matter (a program started under
    /// `taskset -c 0` decides for every CPU it may later run on).
    ///
    /// - Not a hybrid part (CPUID leaf 7 EDX bit 15 clear): one probe, on whichever CPU the
    ///   caller runs, stands for every online CPU. No thread, no pinning: the cost is the
    ///   probe's CPUID instructions and one small sysfs read.
    /// - A hybrid part: one probe per core type, with the calling thread pinned to that
    ///   type's online CPUs (`/sys/devices/cpu_core/cpus`, `/sys/devices/cpu_atom/cpus`) and
    ///   its affinity restored exactly afterwards; each probe's CPUID core type must match.
    ///   Without complete lists, [`probe_every_cpu`].
    ///
    /// This assumes that **CPUs of one core type are identical**: same CPUID, same
    /// family/model/stepping, hence the same features and errata. Linux x86 assumes more: it
    /// patches its alternatives from the boot CPU alone before bringing up the others. A
    /// system that mixes steppings of one core type (a multi-socket board with different
    /// steppings) is decided from the CPU the caller ran on; [`probe_every_cpu`] does not
    /// assume it.
    ///
    /// Without a readable `/sys/devices/system/cpu/online` (no sysfs mounted) this fails with
    /// [`CpuError::Sysfs`] rather than guess which CPUs exist; patching then keeps every
    /// default.
    #[cfg(target_arch = "x86_64")]
    pub fn probe_online_cpus() -> Result<Vec<CpuDescriptor>, CpuError> {
        let sysfs = Sysfs::system();
        let online = sysfs.online_cpus().map_err(CpuError::Sysfs)?;
        probe_online_from(&sysfs, &online, probe(&NativeCpuid))
    }

    /// One descriptor for each kind of online CPU: all the system's capabilities are decided
    /// from (features every CPU has and errata any has do not depend on how many CPUs share a
    /// kind). Not a hybrid part: the calling CPU's probe (as CPU [`libc::sched_getcpu`]),
    /// without reading sysfs at all; a hybrid part: [`probe_online_cpus`]. Same assumption as
    /// there: CPUs of one core type are identical. What load-time patching probes.
    #[cfg(target_arch = "x86_64")]
    pub fn probe_cpu_kinds() -> Result<Vec<CpuDescriptor>, CpuError> {
        let here = probe(&NativeCpuid);
        if !here.features.contains(Features::HYBRID) {
            // SAFETY: sched_getcpu has no preconditions (a vDSO call on Linux).
            let cpu = unsafe { libc::sched_getcpu() };
            return Ok(std::vec![CpuDescriptor::x86(cpu.max(0) as u32, here)]);
        }
        let sysfs = Sysfs::system();
        let online = sysfs.online_cpus().map_err(CpuError::Sysfs)?;
        probe_online_from(&sysfs, &online, here)
    }

    #[cfg(target_arch = "x86_64")]
    fn probe_online_from(
        sysfs: &Sysfs,
        online: &CpuList,
        here: X86Cpu,
    ) -> Result<Vec<CpuDescriptor>, CpuError> {
        let hybrid = here.features.contains(Features::HYBRID);
        let kinds = if hybrid {
            sysfs.core_types().map_err(CpuError::Sysfs)?
        } else {
            None
        };
        match x86_probe_plan(online, kinds.as_ref(), hybrid) {
            X86ProbePlan::One => Ok(online
                .cpus()
                .iter()
                .map(|&i| CpuDescriptor::x86(i, here))
                .collect()),
            X86ProbePlan::PerCoreType(groups) => {
                let probed = probe_pinned_groups(&groups)?;
                Ok(online
                    .cpus()
                    .iter()
                    .filter_map(|&i| {
                        let g = groups.iter().position(|(_, l)| l.contains(i))?;
                        Some(CpuDescriptor::x86(i, probed[g]))
                    })
                    .collect())
            }
            X86ProbePlan::EveryCpu => probe_each(online),
        }
    }

    /// One descriptor per online CPU, each probed on a thread pinned to that CPU: no
    /// assumption that CPUs are alike, at the cost of a thread per CPU. Fails with
    /// [`CpuError::Pin`] for an online CPU the process may not run on (outside its cpuset).
    #[cfg(target_arch = "x86_64")]
    pub fn probe_every_cpu() -> Result<Vec<CpuDescriptor>, CpuError> {
        let online = Sysfs::system().online_cpus().map_err(CpuError::Sysfs)?;
        probe_each(&online)
    }

    /// Probes the CPU the calling thread is running on now, without pinning (the thread may
    /// move right after). Its index is `sched_getcpu()`, or 0 if that fails.
    #[cfg(target_arch = "x86_64")]
    pub fn probe_this_cpu() -> CpuDescriptor {
        let index = u32::try_from(current_cpu()).unwrap_or(0);
        CpuDescriptor::probe_native(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Midr, ARM, CORTEX_A53};

    #[test]
    fn arm64_descriptor_gets_its_errata() {
        let d = CpuDescriptor::arm64(2, Midr::encode(ARM, CORTEX_A53, 0, 4), 0);
        assert!(d.errata.contains(Errata::ARM64_843419));
        assert_eq!(d.features, Features::empty());
        let mut s = crate::test_util::FmtBuf::default();
        fmt::write(&mut s, format_args!("{d}")).unwrap();
        assert_eq!(
            s.as_str(),
            "cpu2: MIDR 0x410fd034 (Cortex-A53 r0p4, implementer 0x41 part 0xd03) REVIDR 0x0; features: -; \
             errata: erratum_arm64_835769 erratum_arm64_843419 erratum_arm64_845719"
        );
    }

    #[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
    mod hosted {
        use super::super::*;
        use std::string::String;
        use std::vec::Vec;

        fn affinity_now() -> Vec<u32> {
            allowed_cpus().unwrap()
        }

        fn cpuinfo_flags() -> Vec<(u32, Vec<String>)> {
            let text = std::fs::read_to_string("/proc/cpuinfo").unwrap();
            let mut out = Vec::new();
            let mut cpu = None;
            for line in text.lines() {
                let (k, v) = match line.split_once(':') {
                    Some((k, v)) => (k.trim(), v.trim()),
                    None => continue,
                };
                if k == "processor" {
                    cpu = v.parse().ok();
                } else if k == "flags" {
                    if let Some(c) = cpu {
                        out.push((c, v.split_whitespace().map(String::from).collect()));
                    }
                }
            }
            out
        }

        fn online() -> Vec<u32> {
            crate::sysfs::Sysfs::system()
                .online_cpus()
                .unwrap()
                .cpus()
                .to_vec()
        }

        fn set_affinity(cpus: &[u32]) {
            // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for &c in cpus {
                // SAFETY: the CPUs come from this machine's lists, far below CPU_SETSIZE.
                unsafe { libc::CPU_SET(c as usize, &mut set) };
            }
            // SAFETY: `set` is valid for its size; pid 0 is this test thread.
            let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
            assert_eq!(rc, 0);
        }

        /// Runs `f` with this test thread pinned to CPU 0, as `taskset -c 0` starts a
        /// program, then restores the affinity.
        fn pinned_to_cpu0<T>(f: impl FnOnce() -> T) -> T {
            let before = affinity_now();
            set_affinity(&[0]);
            assert_eq!(affinity_now(), [0]);
            let out = f();
            assert_eq!(
                affinity_now(),
                [0],
                "the probe restores the caller's affinity"
            );
            set_affinity(&before);
            out
        }

        #[test]
        fn one_descriptor_per_online_cpu_whatever_the_affinity() {
            // Regression (issue 14 item 5): probing followed sched_getaffinity, so a thread
            // pinned to CPU 0 got one descriptor although CPU 1 is online too.
            let online = online();
            let cpus = pinned_to_cpu0(probe_online_cpus).unwrap();
            let indices: Vec<u32> = cpus.iter().map(|d| d.index).collect();
            assert_eq!(indices, online);
            assert_eq!(affinity_now().len(), allowed_cpus().unwrap().len());
            let this = probe_this_cpu();
            assert!(online.contains(&this.index));
        }

        #[test]
        fn the_cheap_probe_agrees_with_a_probe_on_every_cpu() {
            // The assumption the cheap probe makes (CPUs of one core type are identical) holds
            // here; probe_every_cpu reaches CPUs outside the caller's affinity too.
            let before = affinity_now();
            let cheap = probe_online_cpus().unwrap();
            let every = pinned_to_cpu0(probe_every_cpu).unwrap();
            assert_eq!(cheap, every);
            assert_eq!(
                affinity_now(),
                before,
                "the caller's affinity is never changed"
            );
        }

        #[test]
        fn pinned_groups_run_in_their_group_and_restore_the_affinity_exactly() {
            use crate::sysfs::CpuList;
            use crate::x86_64::cpuid::CoreType;
            let before = affinity_now();
            let groups: Vec<(CoreType, CpuList)> = online()
                .into_iter()
                .map(|c| (CoreType::Unknown, CpuList::from_cpus([c])))
                .collect();
            let probed = super::super::hosted::probe_pinned_groups(&groups).unwrap();
            assert_eq!(probed.len(), groups.len());
            assert!(
                probed.iter().all(|c| *c == probed[0]),
                "identical CPUs here"
            );
            assert_eq!(affinity_now(), before);
            // A CPU that does not exist: refused, and the affinity is restored anyway.
            let e = super::super::hosted::probe_pinned_groups(&[(
                CoreType::Unknown,
                CpuList::from_cpus([1000]),
            )])
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    CpuError::Pin {
                        errno: libc::EINVAL,
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(
                std::format!("{e}"),
                "cannot pin a thread to CPUs 1000: Invalid argument (os error 22)"
            );
            assert_eq!(affinity_now(), before);
            // A core type CPUID does not report: refused, affinity restored.
            let e = super::super::hosted::probe_pinned_groups(&[(
                CoreType::Atom,
                CpuList::from_cpus([0]),
            )])
            .unwrap_err();
            assert!(matches!(e, CpuError::CoreType { .. }), "{e}");
            assert_eq!(affinity_now(), before);
        }

        #[test]
        fn features_agree_with_proc_cpuinfo() {
            let cpus = probe_online_cpus().unwrap();
            let info = cpuinfo_flags();
            let checks = [
                ("popcnt", Features::POPCNT),
                ("avx2", Features::AVX2),
                ("bmi2", Features::BMI2),
                ("erms", Features::ERMS),
                ("sse4_2", Features::SSE4_2),
                ("hypervisor", Features::HYPERVISOR),
                // Linux lists fsgsbase only when it enabled it (not with `nofsgsbase`).
                ("fsgsbase", Features::FSGSBASE),
            ];
            for d in &cpus {
                let (_, flags) = info
                    .iter()
                    .find(|(c, _)| *c == d.index)
                    .expect("cpu in /proc/cpuinfo");
                for (flag, feature) in checks {
                    assert_eq!(
                        flags.iter().any(|f| f == flag),
                        d.features.contains(feature),
                        "cpu{} {flag}",
                        d.index
                    );
                }
            }
        }
    }
}
