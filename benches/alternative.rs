//! What a patched `#[alternative]` site costs against what a user would otherwise write.
//!
//! `cargo bench --bench alternative` counts bits in a dependent chain of 20M values, seven runs
//! each, and prints the median ns/call and each variant's ratio to the patched site:
//!
//! - patched site: `#[alternative(popcnt => unsafe inline("popcnt {ret}, {x}"))]` after
//!   `patch_self()`;
//! - the same site before patching (a call to the portable default through the register-saving
//!   thunk);
//! - a run-time branch: `is_x86_feature_detected!("popcnt")` (a cached flag) then a
//!   `#[target_feature(enable = "popcnt")]` function;
//! - a function pointer chosen once at start-up;
//! - `u64::count_ones()` compiled for the baseline x86-64 target (no POPCNT);
//! - the ideal: the whole loop compiled with POPCNT enabled.
//!
//! Not a test: nothing is asserted. Numbers depend on the machine.

use std::hint::black_box;
use std::time::Instant;

use alt::alternative;

#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
fn popcount_site(x: u64) -> u64 {
    x.count_ones() as u64
}

#[target_feature(enable = "popcnt")]
fn popcount_tf(x: u64) -> u64 {
    x.count_ones() as u64
}

fn popcount_branch(x: u64) -> u64 {
    if std::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT.
        unsafe { popcount_tf(x) }
    } else {
        x.count_ones() as u64
    }
}

fn popcount_soft(x: u64) -> u64 {
    x.count_ones() as u64
}

fn popcount_tf_safe(x: u64) -> u64 {
    // SAFETY: only installed as the pointer when the CPU has POPCNT.
    unsafe { popcount_tf(x) }
}

const N: u64 = 20_000_000;

#[inline(always)]
fn chain(f: impl Fn(u64) -> u64) -> u64 {
    let mut acc = black_box(0x0123_4567_89ab_cdefu64);
    for i in 0..N {
        acc = acc.rotate_left(7) ^ f(acc ^ i);
    }
    acc
}

#[target_feature(enable = "popcnt")]
fn chain_ideal() -> u64 {
    chain(|x| x.count_ones() as u64)
}

fn measure(name: &str, run: &mut dyn FnMut() -> u64) -> (String, f64, u64) {
    let mut times = Vec::new();
    let mut result = 0;
    for _ in 0..7 {
        let t = Instant::now();
        result = black_box(run());
        times.push(t.elapsed().as_secs_f64() * 1e9 / N as f64);
    }
    times.sort_by(f64::total_cmp);
    (name.to_string(), times[3], result)
}

fn main() {
    let has_popcnt = std::is_x86_feature_detected!("popcnt");
    let pointer: fn(u64) -> u64 = if has_popcnt {
        popcount_tf_safe
    } else {
        popcount_soft
    };
    let pointer = black_box(pointer);

    let mut rows = vec![measure(
        "site, not yet patched (thunk + default)",
        &mut || chain(popcount_site),
    )];
    let report = alt::process::patch_self().expect("patch");
    let decision = report
        .sites
        .iter()
        .find(|s| s.function.is_some_and(|f| f.ends_with("popcount_site")))
        .map(|s| s.decision())
        .unwrap_or("?");
    rows.push(measure("site, patched", &mut || chain(popcount_site)));
    rows.push(measure(
        "cached-flag branch + target_feature fn",
        &mut || chain(popcount_branch),
    ));
    rows.push(measure("function pointer chosen at start-up", &mut || {
        chain(pointer)
    }));
    rows.push(measure("count_ones() for baseline x86-64", &mut || {
        chain(popcount_soft)
    }));
    if has_popcnt {
        rows.push(measure("ideal: loop compiled with POPCNT", &mut || {
            // SAFETY: the CPU has POPCNT.
            unsafe { chain_ideal() }
        }));
    }

    let results: Vec<u64> = rows.iter().map(|r| r.2).collect();
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "variants disagree"
    );
    let patched = rows[1].1;
    println!("popcount, {N} dependent calls, median of 7 (patched site decision: {decision})");
    for (name, ns, _) in &rows {
        println!(
            "{name:<42} {ns:>7.3} ns/call  {:>6.2}x the patched site",
            ns / patched
        );
    }
}
