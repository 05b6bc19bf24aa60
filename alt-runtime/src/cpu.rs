//! Per-CPU descriptors: what one logical CPU is and what it can do.
//!
//! A [`CpuDescriptor`] holds a CPU's identity ([`CpuId`]: CPUID results on x86-64, MIDR and
//! REVIDR on AArch64), its usable [`Features`] and the [`Errata`] the
//! [errata database](crate::errata) says it has. [`crate::policy`] combines the descriptors of
//! all CPUs into the system's capabilities.
//!
//! - **Hosted Linux** (x86-64, `std`): [`probe_online_cpus`] runs the probe on a thread pinned to
//!   each CPU the process may run on; [`probe_this_cpu`] probes wherever the caller runs.
//! - **Bare metal**: each CPU builds its own descriptor as it comes up
//!   ([`CpuDescriptor::probe_native`] on x86-64, [`CpuDescriptor::arm64`] from MIDR_EL1 and
//!   REVIDR_EL1) and reports it to a [`CpuRegistry`](crate::policy::CpuRegistry).

use core::fmt;

use crate::capability::{CapabilitySet, Errata, Features};
use crate::errata::{aarch64_core_name, errata_for, Midr};
use crate::x86_64::cpuid::{probe, CpuidSource, X86Cpu};

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

#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub use hosted::{allowed_cpus, probe_online_cpus, probe_this_cpu, CpuError};

#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
mod hosted {
    use std::fmt;
    use std::vec::Vec;

    use super::CpuDescriptor;

    /// Why the CPUs could not all be probed.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum CpuError {
        /// `sched_getaffinity` failed with this errno.
        GetAffinity(i32),
        /// Pinning the probe thread to `cpu` failed with this errno.
        Pin {
            /// The CPU.
            cpu: u32,
            /// The errno.
            errno: i32,
        },
        /// The probe thread for `cpu` ran elsewhere (`ran_on`) despite being pinned.
        NotPinned {
            /// The CPU asked for.
            cpu: u32,
            /// Where the thread ran.
            ran_on: i32,
        },
        /// The probe thread for `cpu` could not be started or did not finish.
        Thread {
            /// The CPU.
            cpu: u32,
        },
    }

    impl fmt::Display for CpuError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                CpuError::GetAffinity(e) => write!(
                    f,
                    "sched_getaffinity failed: {}",
                    std::io::Error::from_raw_os_error(*e)
                ),
                CpuError::Pin { cpu, errno } => write!(
                    f,
                    "cannot pin a thread to CPU {cpu}: {}",
                    std::io::Error::from_raw_os_error(*errno)
                ),
                CpuError::NotPinned { cpu, ran_on } => {
                    write!(f, "probe thread pinned to CPU {cpu} ran on CPU {ran_on}")
                }
                CpuError::Thread { cpu } => write!(f, "probe thread for CPU {cpu} failed"),
            }
        }
    }

    impl std::error::Error for CpuError {}

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// The CPUs this process may run on (its `sched_getaffinity` mask), in increasing order.
    pub fn allowed_cpus() -> Result<Vec<u32>, CpuError> {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(CpuError::GetAffinity(errno()));
        }
        let max = u32::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
        Ok((0..max)
            // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_ISSET reads inside `set`.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu as usize, &set) })
            .collect())
    }

    fn pin_current_thread(cpu: u32) -> Result<(), CpuError> {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` came from `allowed_cpus`, so it is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread,
        // which is the probe thread created for this purpose, never the caller's thread.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            return Err(CpuError::Pin {
                cpu,
                errno: errno(),
            });
        }
        Ok(())
    }

    fn current_cpu() -> i32 {
        // SAFETY: sched_getcpu has no preconditions.
        unsafe { libc::sched_getcpu() }
    }

    /// Probes every CPU this process may run on, one descriptor per CPU in increasing CPU
    /// order. Each probe runs on a fresh thread pinned to its CPU, so the calling thread's
    /// affinity is never changed.
    ///
    /// Systems with more than `CPU_SETSIZE` (1024) CPUs are probed only up to CPU 1023.
    pub fn probe_online_cpus() -> Result<Vec<CpuDescriptor>, CpuError> {
        let cpus = allowed_cpus()?;
        let mut out = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let handle = std::thread::Builder::new()
                .name(std::format!("alt-probe-{cpu}"))
                .spawn(move || -> Result<CpuDescriptor, CpuError> {
                    pin_current_thread(cpu)?;
                    let ran_on = current_cpu();
                    if ran_on >= 0 && ran_on as u32 != cpu {
                        return Err(CpuError::NotPinned { cpu, ran_on });
                    }
                    Ok(CpuDescriptor::probe_native(cpu))
                })
                .map_err(|_| CpuError::Thread { cpu })?;
            let desc = handle.join().map_err(|_| CpuError::Thread { cpu })??;
            out.push(desc);
        }
        Ok(out)
    }

    /// Probes the CPU the calling thread is running on now, without pinning (the thread may
    /// move right after). Its index is `sched_getcpu()`, or 0 if that fails.
    pub fn probe_this_cpu() -> CpuDescriptor {
        let index = u32::try_from(current_cpu()).unwrap_or(0);
        CpuDescriptor::probe_native(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errata::{ARM, CORTEX_A53};

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

        #[test]
        fn one_descriptor_per_allowed_cpu_and_affinity_unchanged() {
            let before = affinity_now();
            let cpus = probe_online_cpus().unwrap();
            assert_eq!(affinity_now(), before, "caller's affinity changed");
            let indices: Vec<u32> = cpus.iter().map(|d| d.index).collect();
            assert_eq!(indices, before);
            let this = probe_this_cpu();
            assert!(before.contains(&this.index));
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
