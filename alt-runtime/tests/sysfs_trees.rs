//! Recorded sysfs trees of heterogeneous systems, written into a temporary directory the way
//! Linux lays them out, replayed through `alt_runtime::sysfs` and decided by the capability
//! policy: errata OR, features AND, late CPUs.
//!
//! MIDR values are the cores' documented `rXpY` encoded as Linux prints them
//! (`0x%016llx`): the Cortex-A53 r0p4 and Cortex-A72 r0p2 of a Rockchip RK3399, the Kryo 485
//! Gold and Silver cores of a Qualcomm Snapdragon 855 (Qualcomm's implementer code 0x51:
//! variant 0xd revision 0xe, which Linux's lists call `rdpe`), a phone SoC with Arm's own
//! Cortex-A55 r1p0 and Cortex-A76 r1p0 MIDRs, and an Ampere Altra with 80 Neoverse-N1 r3p1.
//! REVIDR is 0 (no fix bits) unless a test says otherwise.

use std::path::{Path, PathBuf};

use alt_runtime::cpu::{x86_probe_plan, CpuDescriptor, X86ProbePlan};
use alt_runtime::errata::{aarch64_core_name, lookup, ERRATA};
use alt_runtime::policy::{LateCpuError, LateCpuPolicy, SystemCaps};
use alt_runtime::sysfs::{CpuList, Sysfs, SysfsErrorKind};
use alt_runtime::x86_64::cpuid::CoreType;
use alt_runtime::{Capability, CapabilitySet, Errata, Features};

/// A temporary directory that stands for `/sys`, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "alt-sysfs-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("devices/system/cpu")).unwrap();
        Tree(dir)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// CPU `n` online with these registers (as Linux prints them).
    fn cpu(&self, n: u32, midr: u32, revidr: u32) {
        let d = format!("devices/system/cpu/cpu{n}/regs/identification");
        self.write(&format!("{d}/midr_el1"), &format!("0x{:016x}\n", midr));
        self.write(&format!("{d}/revidr_el1"), &format!("0x{:016x}\n", revidr));
    }

    /// CPU `n` present but offline: its directory exists, its registers do not.
    fn offline_cpu(&self, n: u32) {
        std::fs::create_dir_all(self.0.join(format!("devices/system/cpu/cpu{n}"))).unwrap();
    }

    fn online(&self, list: &str) {
        self.write("devices/system/cpu/online", &format!("{list}\n"));
    }

    fn offline(&self, list: &str) {
        self.write("devices/system/cpu/offline", &format!("{list}\n"));
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::at(self.path())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const A53_R0P4: u32 = 0x410f_d034;
const A72_R0P2: u32 = 0x410f_d082;
const A55_R1P0: u32 = 0x411f_d050;
const A76_R1P0: u32 = 0x411f_d0b0;
const KRYO485_GOLD: u32 = 0x51df_804e;
const KRYO485_SILVER: u32 = 0x51df_805e;
const N1_R3P1: u32 = 0x413f_d0c1;

fn rk3399(tree: &Tree) {
    for n in 0..4 {
        tree.cpu(n, A53_R0P4, 0);
    }
    for n in 4..6 {
        tree.cpu(n, A72_R0P2, 0);
    }
    tree.online("0-5");
}

fn errata(cpus: &[CpuDescriptor]) -> Errata {
    SystemCaps::from_cpus(cpus).capabilities().errata
}

/// The erratum names of a set, for readable failures.
fn names(e: Errata) -> Vec<&'static str> {
    CapabilitySet::new(Features::empty(), e)
        .iter()
        .map(|c| c.name())
        .collect()
}

/// Every erratum of `e` has a database entry whose source names the core.
fn sourced(e: Errata, core: &str) {
    for bit in e.iter() {
        let entry = lookup(bit).unwrap_or_else(|| panic!("{bit:?} has no database entry"));
        assert!(
            entry.source.contains(core),
            "{}: the source does not name {core}: {}",
            entry.id,
            entry.source
        );
    }
}

#[test]
fn rk3399_little_errata_are_worked_around_on_the_big_cores_too() {
    let tree = Tree::new("rk3399");
    rk3399(&tree);
    let cpus = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap();
    assert_eq!(
        cpus.iter().map(|d| d.index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    let little = Errata::ARM64_835769 | Errata::ARM64_843419 | Errata::ARM64_845719;
    let big = Errata::ARM64_1319367 | Errata::ARM64_1742098;
    for d in &cpus[..4] {
        assert_eq!(d.errata, little, "cpu{}: {:?}", d.index, names(d.errata));
        assert_eq!(d.to_string().split(';').next(), Some(
            format!("cpu{}: MIDR 0x410fd034 (Cortex-A53 r0p4, implementer 0x41 part 0xd03) REVIDR 0x0", d.index).as_str()
        ));
    }
    for d in &cpus[4..] {
        assert_eq!(d.errata, big, "cpu{}: {:?}", d.index, names(d.errata));
    }
    sourced(little, "Cortex-A53");
    sourced(big, "Cortex-A72");
    // Errata: OR over the CPUs. Features: AND (AArch64 CPUs have none of the x86 features).
    let sys = SystemCaps::from_cpus(&cpus).capabilities();
    assert_eq!(sys.errata, little | big);
    assert_eq!(sys.features, Features::empty());
}

#[test]
fn a_revidr_fix_bit_on_every_little_core_drops_843419() {
    let tree = Tree::new("rk3399-revidr");
    rk3399(&tree);
    for n in 0..4 {
        tree.cpu(n, A53_R0P4, 1 << 8);
    }
    let cpus = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap();
    assert!(!errata(&cpus).contains(Errata::ARM64_843419));
    assert!(errata(&cpus).contains(Errata::ARM64_845719));
    // One little core without the fix is enough to need the workaround everywhere.
    tree.cpu(2, A53_R0P4, 0);
    let cpus = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap();
    assert!(errata(&cpus).contains(Errata::ARM64_843419));
}

#[test]
fn snapdragon_855_kryo_cores_get_their_arm_designs_errata() {
    // 4x Kryo 485 Silver (Cortex-A55 based), 4x Kryo 485 Gold (Cortex-A76 based), all
    // under Qualcomm's implementer code: without the aliases, none of these would match.
    let tree = Tree::new("sd855");
    for n in 0..4 {
        tree.cpu(n, KRYO485_SILVER, 0);
    }
    for n in 4..8 {
        tree.cpu(n, KRYO485_GOLD, 0);
    }
    tree.online("0-7");
    let cpus = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap();
    let silver = Errata::ARM64_1530923;
    let gold = Errata::ARM64_1286807 | Errata::ARM64_1463225 | Errata::ARM64_1418040;
    assert_eq!(cpus[0].errata, silver, "{:?}", names(cpus[0].errata));
    assert_eq!(cpus[4].errata, gold, "{:?}", names(cpus[4].errata));
    sourced(silver, "Kryo 4xx Silver");
    sourced(gold, "Kryo 4xx Gold");
    assert_eq!(errata(&cpus), silver | gold);
    assert_eq!(aarch64_core_name(KRYO485_GOLD), Some("Kryo 4xx Gold"));
}

#[test]
fn phone_soc_with_arm_a55_and_a76() {
    let tree = Tree::new("a76-a55");
    for n in 0..4 {
        tree.cpu(n, A55_R1P0, 0);
    }
    for n in 4..8 {
        tree.cpu(n, A76_R1P0, 0);
    }
    tree.online("0-7");
    let cpus = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap();
    let a55 = Errata::ARM64_1530923 | Errata::ARM64_2441007;
    let a76 = Errata::ARM64_1165522
        | Errata::ARM64_1286807
        | Errata::ARM64_1463225
        | Errata::ARM64_1418040
        | Errata::ARM64_3194386;
    assert_eq!(cpus[0].errata, a55, "{:?}", names(cpus[0].errata));
    assert_eq!(cpus[7].errata, a76, "{:?}", names(cpus[7].errata));
    sourced(a55, "Cortex-A55");
    sourced(a76, "Cortex-A76");
    assert_eq!(errata(&cpus), a55 | a76);
}

#[test]
fn uniform_neoverse_n1_server() {
    let tree = Tree::new("altra");
    for n in 0..80 {
        tree.cpu(n, N1_R3P1, 0);
    }
    tree.online("0-79");
    let cpus = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap();
    assert_eq!(cpus.len(), 80);
    let n1 = Errata::ARM64_1418040 | Errata::ARM64_1542419 | Errata::ARM64_3194386;
    assert!(cpus.iter().all(|d| d.errata == n1));
    sourced(n1, "Neoverse-N1");
    assert_eq!(errata(&cpus), n1);
}

#[test]
fn offline_cpus_are_not_decided_from_and_are_checked_when_they_come_online() {
    // RK3399 booted with both Cortex-A72 cores offline (echo 0 > cpu4/online, cpu5/online).
    let tree = Tree::new("rk3399-offline");
    for n in 0..4 {
        tree.cpu(n, A53_R0P4, 0);
    }
    tree.offline_cpu(4);
    tree.offline_cpu(5);
    tree.online("0-3");
    tree.offline("4-5");
    let sysfs = tree.sysfs();
    assert_eq!(sysfs.offline_cpus().unwrap().cpus(), &[4, 5]);
    let cpus = alt_runtime::cpu::arm64_cpus(&sysfs).unwrap();
    assert_eq!(cpus.len(), 4);
    let sys = SystemCaps::from_cpus(&cpus);
    assert!(!sys.capabilities().errata.contains(Errata::ARM64_1319367));
    // An offline CPU has no registers to read.
    let e = alt_runtime::cpu::arm64_cpu(&sysfs, 4).unwrap_err();
    assert_eq!(e.kind, SysfsErrorKind::Io(std::io::ErrorKind::NotFound));
    assert!(e
        .path
        .ends_with("devices/system/cpu/cpu4/regs/identification/midr_el1"));

    // Patching used a site keyed by 1319367 (kept at its default: the system lacks it).
    let used = CapabilitySet::new(
        Features::empty(),
        Errata::ARM64_1319367 | Errata::ARM64_843419,
    );
    let sys = sys.with_used(used);
    // CPU 4 comes online: Linux creates its registers; it needs a workaround not applied.
    tree.cpu(4, A72_R0P2, 0);
    tree.online("0-4");
    let late = alt_runtime::cpu::arm64_cpu(&sysfs, 4).unwrap();
    let erratum = Capability::erratum(Errata::ARM64_1319367).unwrap();
    assert_eq!(
        sys.check_late_cpu(&late, LateCpuPolicy::Optional),
        Err(LateCpuError::UnhandledErratum { cpu: 4, erratum })
    );
    assert_eq!(
        sys.check_late_cpu(&late, LateCpuPolicy::Optional)
            .unwrap_err()
            .to_string(),
        "CPU 4 refused: it needs the workaround for erratum_arm64_1319367, which was not applied"
    );
    // A late Cortex-A53 like the others is accepted.
    tree.cpu(5, A53_R0P4, 0);
    let late = alt_runtime::cpu::arm64_cpu(&sysfs, 5).unwrap();
    assert_eq!(sys.check_late_cpu(&late, LateCpuPolicy::MustMatch), Ok(()));
    // Decided with the big cores online, the same table accepts the late A72.
    let all = alt_runtime::cpu::arm64_cpus(&sysfs).unwrap();
    assert_eq!(all.len(), 5);
    let sys = SystemCaps::from_cpus(&all).with_used(used);
    assert_eq!(
        sys.check_late_cpu(
            &alt_runtime::cpu::arm64_cpu(&sysfs, 4).unwrap(),
            LateCpuPolicy::MustMatch
        ),
        Ok(())
    );
}

#[test]
fn malformed_register_files_are_refused_naming_the_file() {
    let tree = Tree::new("bad");
    tree.online("0-1");
    tree.cpu(0, A53_R0P4, 0);
    tree.write(
        "devices/system/cpu/cpu1/regs/identification/midr_el1",
        "410fd034\n",
    );
    tree.write(
        "devices/system/cpu/cpu1/regs/identification/revidr_el1",
        "0x0\n",
    );
    let e = alt_runtime::cpu::arm64_cpus(&tree.sysfs()).unwrap_err();
    assert!(e.path.ends_with("cpu1/regs/identification/midr_el1"), "{e}");
    assert_eq!(
        e.kind,
        SysfsErrorKind::Parse("expected a 0x-prefixed hexadecimal number")
    );
    // Linux writes nothing for a CPU whose MIDR it has not recorded.
    tree.write("devices/system/cpu/cpu1/regs/identification/midr_el1", "");
    assert!(matches!(
        alt_runtime::cpu::arm64_cpus(&tree.sysfs())
            .unwrap_err()
            .kind,
        SysfsErrorKind::Parse(_)
    ));
    tree.write(
        "devices/system/cpu/cpu1/regs/identification/midr_el1",
        "0x0000001000000000\n",
    );
    assert!(
        alt_runtime::cpu::arm64_cpus(&tree.sysfs()).is_err(),
        "above 32 bits"
    );
    tree.online("0-x");
    assert!(tree.sysfs().online_cpus().is_err());
}

#[test]
fn x86_hybrid_probes_one_cpu_per_core_type() {
    // Alder Lake i9-12900K: P-cores with SMT are CPUs 0-15, E-cores 16-23 (the kernel's
    // cpu_core and cpu_atom PMU devices list them).
    let tree = Tree::new("adl");
    tree.online("0-23");
    tree.write("devices/cpu_core/cpus", "0-15\n");
    tree.write("devices/cpu_atom/cpus", "16-23\n");
    let sysfs = tree.sysfs();
    let online = sysfs.online_cpus().unwrap();
    let kinds = sysfs.core_types().unwrap();
    assert_eq!(
        x86_probe_plan(&online, kinds.as_ref(), true),
        X86ProbePlan::PerCoreType(vec![
            (CoreType::Core, CpuList::parse("0-15").unwrap()),
            (CoreType::Atom, CpuList::parse("16-23").unwrap()),
        ])
    );
    // Not hybrid (CPUID says so): one probe, whatever sysfs has.
    assert_eq!(
        x86_probe_plan(&online, kinds.as_ref(), false),
        X86ProbePlan::One
    );
    // E-cores 20-23 offline: only online CPUs are probed.
    tree.online("0-19");
    let online = sysfs.online_cpus().unwrap();
    assert_eq!(
        x86_probe_plan(&online, kinds.as_ref(), true),
        X86ProbePlan::PerCoreType(vec![
            (CoreType::Core, CpuList::parse("0-15").unwrap()),
            (CoreType::Atom, CpuList::parse("16-19").unwrap()),
        ])
    );
    // Every E-core offline: one kind left.
    tree.online("0-15");
    let online = sysfs.online_cpus().unwrap();
    assert_eq!(
        x86_probe_plan(&online, kinds.as_ref(), true),
        X86ProbePlan::PerCoreType(vec![(CoreType::Core, CpuList::parse("0-15").unwrap())])
    );
    // An online CPU in no list (a kernel without the E-core PMU): probe each CPU.
    std::fs::remove_file(tree.path().join("devices/cpu_atom/cpus")).unwrap();
    tree.online("0-23");
    let online = sysfs.online_cpus().unwrap();
    let kinds = sysfs.core_types().unwrap();
    assert_eq!(
        x86_probe_plan(&online, kinds.as_ref(), true),
        X86ProbePlan::EveryCpu
    );
    // Hybrid without any list (a VM without the hybrid PMU): probe each CPU.
    std::fs::remove_file(tree.path().join("devices/cpu_core/cpus")).unwrap();
    assert_eq!(sysfs.core_types().unwrap(), None);
    assert_eq!(x86_probe_plan(&online, None, true), X86ProbePlan::EveryCpu);
    // A CPU in both lists: do not guess.
    tree.write("devices/cpu_core/cpus", "0-16\n");
    tree.write("devices/cpu_atom/cpus", "16-23\n");
    let kinds = sysfs.core_types().unwrap();
    assert_eq!(
        x86_probe_plan(&online, kinds.as_ref(), true),
        X86ProbePlan::EveryCpu
    );
}

#[test]
fn every_aarch64_erratum_is_in_some_tree_or_named_here() {
    // The trees above cover most AArch64 errata; the others are covered by unit tests in
    // errata.rs. This keeps the list honest when the database grows.
    let trees = Errata::ARM64_835769
        | Errata::ARM64_843419
        | Errata::ARM64_845719
        | Errata::ARM64_1319367
        | Errata::ARM64_1742098
        | Errata::ARM64_1530923
        | Errata::ARM64_2441007
        | Errata::ARM64_1165522
        | Errata::ARM64_1286807
        | Errata::ARM64_1463225
        | Errata::ARM64_1418040
        | Errata::ARM64_3194386
        | Errata::ARM64_1542419;
    let unit_tested_only = Errata::ARM64_826319
        | Errata::ARM64_827319
        | Errata::ARM64_824069
        | Errata::ARM64_819472
        | Errata::ARM64_832075
        | Errata::ARM64_834220
        | Errata::QCOM_FALKOR_E1003
        | Errata::QCOM_FALKOR_E1009;
    let arm64: Errata = ERRATA
        .iter()
        .filter(|e| matches!(e.matches, alt_runtime::errata::Matches::Arm64(_)))
        .fold(Errata::empty(), |a, e| a | e.erratum);
    assert_eq!(
        arm64,
        trees | unit_tested_only,
        "{:?}",
        names(arm64 ^ (trees | unit_tested_only))
    );
}
