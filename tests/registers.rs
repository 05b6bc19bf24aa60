//! Register discipline: values live in caller-saved general-purpose and XMM registers across a
//! site survive it, in the default state (the call goes through the register-saving thunk) and
//! in each patched state (inline replacement, direct call through a thunk, default kept).
//!
//! The default and the function replacement deliberately overwrite every caller-saved register
//! they may (they are `extern "C"` functions underneath), so a thunk that forgets one shows up as
//! a wrong value here. The test is one `#[test]` so that no other test thread runs sites while
//! this one patches. The workspace's dev profile optimises (opt-level 1) so that the compiler
//! really keeps values in registers across the site.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::hint::black_box;

use alt::process::{patch_self_with, revert_self_with, PatchOptions};
use alt::{alternative, CapabilitySet, Features};

// This test patches for capability sets of its own, starting from the defaults.
alt::no_patch_at_load!();

/// Overwrites every caller-saved register an `extern "C"` function may change.
#[inline(always)]
fn trash_caller_saved() {
    // SAFETY: only writes registers declared as clobbered.
    unsafe {
        core::arch::asm!(
            "mov rcx, -1", "mov rdx, -1", "mov rsi, -1", "mov rdi, -1",
            "mov r8, -1", "mov r9, -1", "mov r10, -1", "mov r11, -1",
            "pcmpeqd xmm0, xmm0", "pcmpeqd xmm1, xmm1", "pcmpeqd xmm2, xmm2",
            "pcmpeqd xmm3, xmm3", "pcmpeqd xmm4, xmm4", "pcmpeqd xmm5, xmm5",
            "pcmpeqd xmm6, xmm6", "pcmpeqd xmm7, xmm7", "pcmpeqd xmm8, xmm8",
            "pcmpeqd xmm9, xmm9", "pcmpeqd xmm10, xmm10", "pcmpeqd xmm11, xmm11",
            "pcmpeqd xmm12, xmm12", "pcmpeqd xmm13, xmm13", "pcmpeqd xmm14, xmm14",
            "pcmpeqd xmm15, xmm15",
            out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack, nomem)
        );
    }
}

fn soft_popcount(x: u64) -> u64 {
    let mut n = 0;
    let mut v = x;
    while v != 0 {
        v &= v - 1;
        n += 1;
    }
    n
}

/// The site under test: popcnt inline (priority), or a direct call keyed by AVX2 to a function
/// that trashes registers; the default trashes them too.
#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}"),
    avx2 => popcount_trashing
)]
fn popcount(x: u64) -> u64 {
    trash_caller_saved();
    soft_popcount(x)
}

/// The same site with `preserve_vectors`: its thunks save the vector registers instead of the
/// site declaring them clobbered.
#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}"),
    avx2 => popcount_trashing,
    preserve_vectors
)]
fn popcount_preserving(x: u64) -> u64 {
    trash_caller_saved();
    soft_popcount(x)
}

fn popcount_trashing(x: u64) -> u64 {
    trash_caller_saved();
    soft_popcount(x)
}

/// Keeps many integer and floating-point values live across two sites.
#[inline(never)]
fn torture(seed: u64) -> (u64, [u64; 12], [f64; 10]) {
    let s = black_box(seed);
    let a: [u64; 12] = core::array::from_fn(|i| s.rotate_left(i as u32 * 5) ^ (i as u64 * 0x9e37));
    let f: [f64; 10] = core::array::from_fn(|i| (s >> 20) as f64 * (i as f64 + 1.5));
    let r1 = popcount(a[0] ^ a[5]);
    let b: [u64; 12] = core::array::from_fn(|i| a[i].wrapping_mul(r1 | 1));
    let g: [f64; 10] = core::array::from_fn(|i| f[i] * 2.0 + r1 as f64);
    let r2 = popcount(b[3]);
    let c: [u64; 12] = core::array::from_fn(|i| b[i] ^ a[i] ^ r2);
    let h: [f64; 10] = core::array::from_fn(|i| g[i] - f[i] + r2 as f64);
    (r1 + r2, c, h)
}

/// Keeps floating-point values live across a site: they are materialised in XMM registers
/// before it (an empty `asm!` takes them as `xmm_reg` inputs) and used after it. Where the
/// site preserves vector registers the compiler leaves them there; where it declares them
/// clobbered the compiler spills them.
#[inline(always)]
fn torture_xmm_with(x: f64, y: f64, site: impl Fn(u64) -> u64) -> f64 {
    let (x, y) = (black_box(x), black_box(y));
    let (a, b, c, d) = (x * 1.25, y * 3.5, x / y, x + y);
    let (e, f, g, h) = (a * b, c - d, a + c, b - d);
    // SAFETY: an empty template; it only pins the values into registers.
    unsafe {
        core::arch::asm!(
            "/* {0} {1} {2} {3} {4} {5} {6} {7} */",
            in(xmm_reg) a, in(xmm_reg) b, in(xmm_reg) c, in(xmm_reg) d,
            in(xmm_reg) e, in(xmm_reg) f, in(xmm_reg) g, in(xmm_reg) h,
            options(nomem, nostack, preserves_flags)
        )
    };
    let r = site(black_box(0xf0f0)) as f64;
    ((a + b * r) * (c - d) + e * f - g * h) / (r + 0.5)
}

#[inline(never)]
fn torture_xmm(x: f64, y: f64) -> f64 {
    torture_xmm_with(x, y, popcount)
}

#[inline(never)]
fn torture_xmm_preserved(x: f64, y: f64) -> f64 {
    torture_xmm_with(x, y, popcount_preserving)
}

fn reference_xmm(x: f64, y: f64) -> f64 {
    let (a, b, c, d) = (x * 1.25, y * 3.5, x / y, x + y);
    let (e, f, g, h) = (a * b, c - d, a + c, b - d);
    let r = 8.0;
    ((a + b * r) * (c - d) + e * f - g * h) / (r + 0.5)
}

/// The same computation with no site in it.
fn reference(seed: u64) -> (u64, [u64; 12], [f64; 10]) {
    let s = seed;
    let a: [u64; 12] = core::array::from_fn(|i| s.rotate_left(i as u32 * 5) ^ (i as u64 * 0x9e37));
    let f: [f64; 10] = core::array::from_fn(|i| (s >> 20) as f64 * (i as f64 + 1.5));
    let r1 = soft_popcount(a[0] ^ a[5]);
    let b: [u64; 12] = core::array::from_fn(|i| a[i].wrapping_mul(r1 | 1));
    let g: [f64; 10] = core::array::from_fn(|i| f[i] * 2.0 + r1 as f64);
    let r2 = soft_popcount(b[3]);
    let c: [u64; 12] = core::array::from_fn(|i| b[i] ^ a[i] ^ r2);
    let h: [f64; 10] = core::array::from_fn(|i| g[i] - f[i] + r2 as f64);
    (r1 + r2, c, h)
}

fn check(state: &str) {
    for seed in [1u64, 0xdead_beef_cafe_f00d, u64::MAX, 0x0123_4567_89ab_cdef] {
        assert_eq!(
            torture(seed),
            reference(seed),
            "state {state}, seed {seed:#x}"
        );
    }
    for (x, y) in [(1.5, 2.25), (-3.0, 7.125), (1e10, 3.0)] {
        assert_eq!(
            torture_xmm(x, y),
            reference_xmm(x, y),
            "state {state}, xmm values"
        );
        assert_eq!(
            torture_xmm_preserved(x, y),
            reference_xmm(x, y),
            "state {state}, xmm values across a preserve_vectors site"
        );
    }
}

fn options(features: Features) -> PatchOptions {
    // The harness's main thread, which waits for this test, is stopped while sites are written.
    PatchOptions::new().capabilities(CapabilitySet::new(features, Default::default()))
}

fn decision_of_popcount_sites(report: &alt::report::Report) -> Vec<&'static str> {
    report
        .sites
        .iter()
        .filter(|s| {
            s.function
                .is_some_and(|f| f.ends_with("::popcount") || f.ends_with("::popcount_preserving"))
        })
        .map(|s| s.decision())
        .collect()
}

#[test]
fn live_registers_survive_every_state_of_a_site() {
    std::env::remove_var("ALT_CLEARCPUID");
    check("unpatched (default through the thunk)");

    let host = alt::process::system_capabilities().unwrap().features;
    let states: [(&str, Features, &str); 3] = [
        ("patched, default kept", Features::empty(), "default"),
        ("patched, direct call", Features::AVX2, "direct_call"),
        ("patched, inline popcnt", Features::POPCNT, "inline"),
    ];
    for (state, features, decision) in states {
        if !host.contains(features) {
            eprintln!("skipping state '{state}': this CPU lacks {features:?}");
            continue;
        }
        let report = patch_self_with(&options(features)).expect("patch");
        let decisions = decision_of_popcount_sites(&report);
        assert!(!decisions.is_empty(), "popcount sites are in the report");
        assert!(
            decisions.iter().all(|d| *d == decision),
            "{state}: {decisions:?}"
        );
        check(state);
        revert_self_with(&options(features)).expect("revert");
    }
    check("reverted");
}
