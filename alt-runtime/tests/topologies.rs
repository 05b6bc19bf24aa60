//! Simulated heterogeneous systems: big.LITTLE AArch64 and an Intel hybrid part, checked
//! against the capability policy.

use alt_runtime::cpu::CpuDescriptor;
use alt_runtime::errata::{Midr, ARM, CORTEX_A53, CORTEX_A72};
use alt_runtime::policy::{CpuRegistry, LateCpuError, LateCpuPolicy, RegistryError, SystemCaps};
use alt_runtime::x86_64::cpuid::{probe, CoreType, CpuidDump, OsEnabled};
use alt_runtime::{Capability, CapabilitySet, Errata, Features};

/// Cortex-A53 r0p4 (MIDR 0x410fd034, TRM) little cores 0-3, Cortex-A72 r0p2 (0x410fd082) big
/// cores 4-5, as on an RK3399.
fn big_little() -> Vec<CpuDescriptor> {
    let mut v = Vec::new();
    for i in 0..4 {
        v.push(CpuDescriptor::arm64(
            i,
            Midr::encode(ARM, CORTEX_A53, 0, 4),
            0,
        ));
    }
    for i in 4..6 {
        v.push(CpuDescriptor::arm64(
            i,
            Midr::encode(ARM, CORTEX_A72, 0, 2),
            0,
        ));
    }
    v
}

const INTEL: [u32; 4] = [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];

/// An Alder Lake-like hybrid (family 6 model 0x97). Both core types report the same leaf 1;
/// the P-cores (AVX-512 present, as early firmware exposed it) also report AVX-512 in leaf 7,
/// the E-cores do not; leaf 0x1A gives the core type.
fn hybrid_dump(p_core: bool) -> CpuidDump {
    let mut d = CpuidDump::new();
    d.set(0, 0, INTEL);
    d.set(1, 0, [0x0009_0672, 0x0080_0800, 0x7ffa_fbff, 0xbfeb_fbff]);
    // FSGSBASE BMI1 AVX2 BMI2 ERMS RDSEED ADX CLFLUSHOPT CLWB SHA (+ SMEP, INVPCID, ...).
    let common = 0x239c_27ab;
    let avx512 = (1 << 16) | (1 << 17) | (1 << 28) | (1 << 30) | (1 << 31);
    let ebx = if p_core { common | avx512 } else { common };
    // ECX: RDPID (22). EDX: FSRM (4), SERIALIZE (14), HYBRID (15).
    d.set(7, 0, [0, ebx, 1 << 22, (1 << 4) | (1 << 14) | (1 << 15)]);
    let core = if p_core { 0x4000_0001 } else { 0x2000_0001 };
    d.set(0x1a, 0, [core, 0, 0, 0]);
    d.set(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]);
    d.set(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]);
    d.set_xcr0(0xe7);
    d.set_os_enabled(OsEnabled::FSGSBASE);
    d
}

/// P-cores 0-3, E-cores 4-11.
fn hybrid() -> Vec<CpuDescriptor> {
    (0..12)
        .map(|i| CpuDescriptor::from_source(i, &hybrid_dump(i < 4)))
        .collect()
}

const AVX512: Features = Features::AVX512F
    .union(Features::AVX512DQ)
    .union(Features::AVX512CD)
    .union(Features::AVX512BW)
    .union(Features::AVX512VL);

#[test]
fn hybrid_probe_gives_exact_features_per_core_type() {
    let p = probe(&hybrid_dump(true));
    let e = probe(&hybrid_dump(false));
    assert_eq!(p.core_type, CoreType::Core);
    assert_eq!(e.core_type, CoreType::Atom);
    assert_eq!((p.family, p.model, p.stepping), (6, 0x97, 2));
    assert_eq!(p.features ^ e.features, AVX512, "only AVX-512 differs");
    let expect_e = Features::SSE3
        | Features::PCLMULQDQ
        | Features::SSSE3
        | Features::FMA
        | Features::CMPXCHG16B
        | Features::SSE4_1
        | Features::SSE4_2
        | Features::MOVBE
        | Features::POPCNT
        | Features::AES
        | Features::XSAVE
        | Features::OSXSAVE
        | Features::AVX
        | Features::F16C
        | Features::RDRAND
        | Features::CLFLUSH
        | Features::FSGSBASE
        | Features::BMI1
        | Features::AVX2
        | Features::BMI2
        | Features::ERMS
        | Features::RDSEED
        | Features::ADX
        | Features::CLFLUSHOPT
        | Features::CLWB
        | Features::SHA
        | Features::RDPID
        | Features::FSRM
        | Features::SERIALIZE
        | Features::HYBRID
        | Features::LZCNT
        | Features::RDTSCP
        | Features::LFENCE_SERIALIZING;
    assert_eq!(e.features, expect_e, "diff {:?}", e.features ^ expect_e);
}

#[test]
fn avx2_in_cpuid_without_os_state_is_not_usable() {
    let mut d = hybrid_dump(true);
    d.set_xcr0(0x3); // x87 + SSE only
    let f = probe(&d).features;
    assert!(!f.intersects(Features::AVX | Features::AVX2 | Features::FMA | AVX512));
    assert!(f.contains(Features::BMI2 | Features::POPCNT));
}

#[test]
fn feature_only_big_cores_have_is_not_used() {
    let sys = SystemCaps::from_cpus(&hybrid()).capabilities();
    assert!(!sys.features.intersects(AVX512));
    assert!(sys.features.contains(Features::AVX2 | Features::HYBRID));
    // The P-cores alone would use it.
    let p_only: Vec<_> = hybrid().into_iter().filter(|d| d.index < 4).collect();
    assert!(SystemCaps::from_cpus(&p_only)
        .capabilities()
        .features
        .contains(AVX512));
}

#[test]
fn erratum_only_little_cores_have_is_worked_around_everywhere() {
    let cpus = big_little();
    let little = cpus[0].errata;
    let big = cpus[4].errata;
    assert!(little.contains(Errata::ARM64_843419 | Errata::ARM64_835769));
    assert!(!big.contains(Errata::ARM64_843419));
    assert_eq!(big, Errata::ARM64_1319367 | Errata::ARM64_1742098);
    let sys = SystemCaps::from_cpus(&cpus).capabilities();
    assert_eq!(sys.errata, little | big);
}

/// Heap's algorithm: calls `f` with every permutation of `v`.
fn permutations<T>(v: &mut [T], k: usize, f: &mut impl FnMut(&[T])) {
    if k <= 1 {
        f(v);
        return;
    }
    for i in 0..k {
        permutations(v, k - 1, f);
        let j = if k.is_multiple_of(2) { i } else { 0 };
        v.swap(j, k - 1);
    }
}

#[test]
fn every_arrival_order_gives_the_same_decision() {
    // All 720 orders of the 6-CPU big.LITTLE system, through the bare-metal registry.
    let cpus = big_little();
    let want = SystemCaps::from_cpus(&cpus).capabilities();
    let mut n = 0;
    permutations(&mut cpus.clone(), 6, &mut |order| {
        let mut reg = CpuRegistry::<8>::new(LateCpuPolicy::MustMatch);
        for d in order {
            reg.report(*d).unwrap();
        }
        assert_eq!(reg.finalize(), want);
        n += 1;
    });
    assert_eq!(n, 720);
    // Many shuffles of the 12-CPU hybrid (a simple LCG; no extra dependencies).
    let hy = hybrid();
    let want = SystemCaps::from_cpus(&hy).capabilities();
    let mut order = hy.clone();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        for i in (1..order.len()).rev() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            order.swap(i, (seed >> 33) as usize % (i + 1));
        }
        assert_eq!(SystemCaps::from_cpus(&order).capabilities(), want);
    }
}

#[test]
fn late_little_core_needing_an_unapplied_workaround_is_refused() {
    // Boot with the big cores only; patching keyed sites by 843419 and did not apply it.
    let mut reg = CpuRegistry::<8>::new(LateCpuPolicy::Optional);
    for d in big_little().into_iter().filter(|d| d.index >= 4) {
        reg.report(d).unwrap();
    }
    let caps = reg.finalize();
    assert!(!caps.errata.contains(Errata::ARM64_843419));
    reg.set_used(CapabilitySet::new(Features::empty(), Errata::ARM64_843419));
    let late = big_little()[0];
    let err = reg.report(late).unwrap_err();
    let erratum = Capability::erratum(Errata::ARM64_843419).unwrap();
    assert_eq!(
        err,
        RegistryError::Late(LateCpuError::UnhandledErratum { cpu: 0, erratum })
    );
    assert_eq!(
        err.to_string(),
        "CPU 0 refused: it needs the workaround for erratum_arm64_843419, which was not applied"
    );
    // Another big core is fine, and is recorded.
    let big = CpuDescriptor::arm64(6, Midr::encode(ARM, CORTEX_A72, 0, 2), 0);
    reg.report(big).unwrap();
    assert_eq!(reg.cpus().count(), 3);
}

#[test]
fn late_e_core_lacking_a_patched_in_feature_is_refused() {
    // Boot on the P-cores only (E-cores offline), patch AVX-512 in, then an E-core comes up.
    let p_cores: Vec<_> = hybrid().into_iter().filter(|d| d.index < 4).collect();
    let avx512f = Capability::feature(Features::AVX512F).unwrap();
    let sys = SystemCaps::from_cpus(&p_cores).with_used(CapabilitySet::new(
        Features::AVX512F | Features::POPCNT,
        Errata::empty(),
    ));
    let e_core = hybrid()[7];
    let err = sys
        .check_late_cpu(&e_core, LateCpuPolicy::Optional)
        .unwrap_err();
    assert_eq!(
        err,
        LateCpuError::MissingFeature {
            cpu: 7,
            feature: avx512f
        }
    );
    assert_eq!(
        err.to_string(),
        "CPU 7 refused: it lacks feature avx512f, which the system uses"
    );
    // Had patching not used AVX-512, the E-core is acceptable as Optional but not MustMatch.
    let sys = sys.with_used(CapabilitySet::new(Features::POPCNT, Errata::empty()));
    assert!(sys.check_late_cpu(&e_core, LateCpuPolicy::Optional).is_ok());
    assert!(matches!(
        sys.check_late_cpu(&e_core, LateCpuPolicy::MustMatch),
        Err(LateCpuError::MissingFeature { cpu: 7, .. })
    ));
    // A late P-core matches under both policies.
    let p = hybrid()[1];
    assert!(sys.check_late_cpu(&p, LateCpuPolicy::MustMatch).is_ok());
}
