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

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

struct Variant {
    name: &'static str,
    run: fn(&[u64]) -> u64,
    samples: Vec<f64>,
    result: u64,
}

fn main() {
    let popcnt = std::is_x86_feature_detected!("popcnt");
    let xs: Vec<u64> = (0..WORDS as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7))
        .collect();

    let native: fn(&[u64]) -> u64 = |xs| {
        // SAFETY: only run where the CPU has POPCNT (see below).
        unsafe { loop_popcnt(xs) }
    };
    let mut variants: Vec<Variant> = Vec::new();
    let mut add = |name, run| {
        variants.push(Variant {
            name,
            run,
            samples: Vec::new(),
            result: 0,
        })
    };
    if popcnt {
        add("native: loop compiled with POPCNT", native);
    }
    add("has!(popcnt => loop) once per loop", loop_has);
    add("is_x86_feature_detected! once per loop", loop_detected_once);
    add(
        "is_x86_feature_detected! per element",
        loop_detected_per_element,
    );
    add("#[alternative] site per element", loop_site);
    add("portable loop (baseline x86-64)", loop_portable);

    for _ in 0..SAMPLES {
        for v in &mut variants {
            let t = thread_cpu_ns();
            let mut r = 0;
            for _ in 0..PASSES {
                r = (v.run)(black_box(&xs));
                black_box(r);
            }
            v.samples
                .push((thread_cpu_ns() - t) / (WORDS * PASSES) as f64);
            v.result = r;
        }
    }
    let first = variants[0].result;
    assert!(
        variants.iter().all(|v| v.result == first),
        "variants disagree"
    );

    let decision = alt::process::patch_self()
        .ok()
        .and_then(|r| {
            r.sites
                .iter()
                .find(|s| s.function.is_some_and(|f| f.contains(":has!(popcnt)")))
                .map(|s| s.decision())
        })
        .unwrap_or("?");
    let median = |v: &Variant| {
        let mut s = v.samples.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let reference = median(&variants[0]);
    println!(
        "popcount of {WORDS} words, {PASSES} passes per sample, median of {SAMPLES} in thread \
         CPU time (has!(popcnt) site decision: {decision})"
    );
    for v in &variants {
        let ns = median(v);
        println!(
            "{:<42} {ns:>7.4} ns/element  {:>6.3}x {}",
            v.name,
            ns / reference,
            variants[0].name.split(':').next().unwrap_or("")
        );
    }
}
