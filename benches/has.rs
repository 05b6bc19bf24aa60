//! A whole loop chosen by `alt::has!` against what a user would otherwise write.
//!
//! `cargo bench --bench has` counts the set bits of 8,192 words (64 KiB: the loop measures the
//! code, not the memory), 100 passes per sample, 101 samples per variant taken in interleaved
//! rounds, each timed in the thread's own CPU time (time the thread spent descheduled by other
//! work on the machine does not count), and prints the median ns/element and each variant's
//! ratio to the loop compiled with POPCNT:
//!
//! - native: the loop in a `#[target_feature(enable = "popcnt")]` function, called directly;
//! - `has!(popcnt => loop_popcnt(xs), _ => loop_portable(xs))`: the same function, chosen by one
//!   patched site per call of the loop (target: within 2% of native);
//! - `is_x86_feature_detected!("popcnt")` checked once per loop, then the same function;
//! - `is_x86_feature_detected!` checked per element, then a `#[target_feature]` function per
//!   element (not inlined: its features differ from the loop's);
//! - a per-element `#[alternative(popcnt => unsafe inline("popcnt {ret}, {x}"))]` site, patched
//!   (the `asm!` block keeps the loop from unrolling and fixes its registers);
//! - the portable loop (baseline x86-64, no POPCNT).
//!
//! Not a test: nothing is asserted but that every variant computes the same sum. Numbers depend
//! on the machine; without POPCNT only the portable variants run.

use std::hint::black_box;

use alt::alternative;

mod common;

use common::Interleaved;

const WORDS: usize = 8192;
const PASSES: usize = 100;
const SAMPLES: usize = 101;

#[target_feature(enable = "popcnt")]
fn loop_popcnt(xs: &[u64]) -> u64 {
    xs.iter().map(|x| u64::from(x.count_ones())).sum()
}

fn loop_portable(xs: &[u64]) -> u64 {
    xs.iter().map(|x| u64::from(x.count_ones())).sum()
}

fn loop_has(xs: &[u64]) -> u64 {
    alt::has!(popcnt => loop_popcnt(xs), _ => loop_portable(xs))
}

fn loop_detected_once(xs: &[u64]) -> u64 {
    if std::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT.
        unsafe { loop_popcnt(xs) }
    } else {
        loop_portable(xs)
    }
}

#[target_feature(enable = "popcnt")]
fn popcount_tf(x: u64) -> u64 {
    u64::from(x.count_ones())
}

fn loop_detected_per_element(xs: &[u64]) -> u64 {
    xs.iter()
        .map(|&x| {
            if std::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU has POPCNT.
                unsafe { popcount_tf(x) }
            } else {
                u64::from(x.count_ones())
            }
        })
        .sum()
}

#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
fn popcount_site(x: u64) -> u64 {
    u64::from(x.count_ones())
}

fn loop_site(xs: &[u64]) -> u64 {
    xs.iter().map(|&x| popcount_site(x)).sum()
}

fn main() {
    let popcnt = std::is_x86_feature_detected!("popcnt");
    let xs: Vec<u64> = (0..WORDS as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7))
        .collect();
    let xs = &xs[..];

    let mut b = Interleaved::new(WORDS, PASSES);
    if popcnt {
        // SAFETY: the CPU has POPCNT.
        b.add("native: loop compiled with POPCNT", || unsafe {
            loop_popcnt(black_box(xs))
        });
    }
    b.add("has!(popcnt => loop) once per loop", || {
        loop_has(black_box(xs))
    });
    b.add("is_x86_feature_detected! once per loop", || {
        loop_detected_once(black_box(xs))
    });
    b.add("is_x86_feature_detected! per element", || {
        loop_detected_per_element(black_box(xs))
    });
    b.add("#[alternative] site per element", || {
        loop_site(black_box(xs))
    });
    b.add("portable loop (baseline x86-64)", || {
        loop_portable(black_box(xs))
    });
    b.run(SAMPLES);

    let decision = alt::process::patch_self()
        .ok()
        .and_then(|r| {
            r.sites
                .iter()
                .find(|s| s.function.is_some_and(|f| f.contains(":has!(popcnt)")))
                .map(|s| s.decision())
        })
        .unwrap_or("?");
    println!(
        "popcount of {WORDS} words, {PASSES} passes per sample, median of {SAMPLES} in thread \
         CPU time (has!(popcnt) site decision: {decision}); ratios to the first:"
    );
    b.print("element");
}
