//! Sites that a build with `-C target-feature=+popcnt,+lzcnt,+bmi1` guarantees, and sites it
//! cannot: `tests/target_features.rs` builds this program with and without those flags, reads
//! its tables with `alt-tablegen`, disassembles the `t_*` functions, and runs it under
//! `qemu-x86_64 -cpu Haswell` (which has the three features).
//!
//! It prints one JSON object: `{"results":[...],"has":{...},"sites":[{"function":...,
//! "candidates":[...]}]}` (the sites from the report of the patching done at start-up).

use alt::alternative;

/// POPCNT first: guaranteed by `+popcnt`, so no site, the `popcnt` instruction itself.
#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
fn popcount(x: u64) -> u64 {
    // The classic SWAR count: never the POPCNT instruction, whatever the target features.
    let x = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    x.wrapping_mul(0x0101_0101_0101_0101) >> 56
}

/// LZCNT inline, guaranteed by `+lzcnt`.
#[alternative(
    // SAFETY: LZCNT writes only its destination (the result) and the flags; 64 for 0, as the
    // default.
    lzcnt => unsafe inline("lzcnt {ret}, {x}")
)]
fn leading_zeros(x: u64) -> u64 {
    let mut n = 0;
    while n < 64 && x & (1 << (63 - n)) == 0 {
        n += 1;
    }
    n
}

/// A direct call, guaranteed by `+bmi1`: an ordinary call of `trailing_zeros_bmi1`.
#[alternative(bmi1 => trailing_zeros_bmi1)]
fn trailing_zeros(x: u64) -> u64 {
    let mut n = 0;
    while n < 64 && x & (1 << n) == 0 {
        n += 1;
    }
    n
}

#[target_feature(enable = "bmi1")]
fn trailing_zeros_bmi1(x: u64) -> u64 {
    // SAFETY: none needed: a safe intrinsic in a function with BMI1.
    core::arch::x86_64::_tzcnt_u64(x)
}

/// AVX-512F first (no build here guarantees it), then POPCNT (guaranteed), then SSE4.2, which
/// can never win after a guaranteed entry and is dropped.
#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    avx512f => unsafe inline("popcnt {ret}, {x}"),
    // SAFETY: as above.
    popcnt => unsafe inline("popcnt {ret}, {x}"),
    // SAFETY: as above.
    sse4.2 => unsafe inline("popcnt {ret}, {x}")
)]
fn popcount_three(x: u64) -> u64 {
    popcount(x)
}

/// Keys no target feature can guarantee: a negated feature, an erratum, a feature Rust has no
/// target feature for. The site stays in every build.
#[alternative(!popcnt => count_slowly, erratum_amd_div0 => count_slowly, fsrm => count_slowly)]
fn popcount_never_guaranteed(x: u64) -> u64 {
    popcount(x)
}

fn count_slowly(x: u64) -> u64 {
    (0..64).map(|i| (x >> i) & 1).sum()
}

/// The lowest set bit of a non-zero `x`: `bsf`, or `tzcnt` where BMI1 holds (the same for
/// non-zero values). `+bmi1` makes the `tzcnt` the whole block.
fn lowest_bit(x: u64) -> u64 {
    assert!(x != 0);
    let r: u64;
    // SAFETY: both instructions write only `r` and the flags.
    unsafe {
        alt::asm::alternative!("bsf {r}, {x}", bmi1 => "tzcnt {r}, {x}", x = in(reg) x, r = lateout(reg) r)
    };
    r
}

/// As `lowest_bit`, with an entry before (never guaranteed here) and one after (dropped).
fn lowest_bit_three(x: u64) -> u64 {
    assert!(x != 0);
    let r: u64;
    // SAFETY: every sequence writes only `r` and the flags.
    unsafe {
        alt::asm::alternative!(
            "bsf {r}, {x}",
            avx512f => "tzcnt {r}, {x}",
            bmi1 => "tzcnt {r}, {x}",
            sse4.2 => "bsf {r}, {x}",
            x = in(reg) x,
            r = lateout(reg) r
        )
    };
    r
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn t_popcount(x: u64) -> u64 {
    popcount(x)
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn t_leading_zeros(x: u64) -> u64 {
    leading_zeros(x)
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn t_trailing_zeros(x: u64) -> u64 {
    trailing_zeros(x)
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn t_lowest_bit(x: u64) -> u64 {
    lowest_bit(x)
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn t_has_popcnt() -> bool {
    alt::has!(popcnt)
}

/// Keeps every `t_*` function in the binary (the tests read their code), even where a call of
/// one is folded into a constant.
#[used]
static T_FUNCTIONS: [extern "C" fn(u64) -> u64; 4] =
    [t_popcount, t_leading_zeros, t_trailing_zeros, t_lowest_bit];
#[used]
static T_HAS: extern "C" fn() -> bool = t_has_popcnt;

fn main() {
    let mut options = alt::process::PatchOptions::new();
    if std::env::args().any(|a| a == "--blocking-threads-run-no-sites") {
        // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal and never
        // runs guest code; this program starts no thread of its own.
        options = unsafe { options.assume_blocking_threads_run_no_sites() };
    }
    let report = alt::process::patch_self_with(&options).expect("patching");
    let values = [
        1u64,
        0x10,
        0xff00,
        0x8000_0000_0000_0000,
        u64::MAX,
        0xdead_beef,
    ];
    let mut results = Vec::new();
    for v in values {
        let v = std::hint::black_box(v);
        results.push(vec![
            t_popcount(v),
            t_leading_zeros(v),
            t_trailing_zeros(v),
            popcount_three(v),
            popcount_never_guaranteed(v),
            t_lowest_bit(v),
            lowest_bit_three(v),
        ]);
    }
    let has = format!(
        "{{\"popcnt\":{},\"avx2\":{},\"erratum_amd_div0\":{}}}",
        t_has_popcnt(),
        alt::has!(avx2),
        alt::has!(erratum_amd_div0)
    );
    let sites: Vec<String> = report
        .sites
        .iter()
        .map(|s| {
            let caps: Vec<String> = s
                .candidates
                .iter()
                .map(|c| format!("\"{}{}\"", if c.negated { "!" } else { "" }, c.capability))
                .collect();
            format!(
                "{{\"function\":\"{}\",\"candidates\":[{}],\"decision\":\"{}\"}}",
                s.label(),
                caps.join(","),
                s.decision()
            )
        })
        .collect();
    println!(
        "{{\"results\":{results:?},\"has\":{has},\"sites\":[{}]}}",
        sites.join(",")
    );
}
