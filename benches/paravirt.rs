//! Paravirt call cost: a patched site (the native inline sequence) against the unpatched
//! indirect call through the operations table and against calling the native function
//! directly. Prints ns/call and ratios; asserts nothing about time.
//!
//! ```text
//! cargo bench --bench paravirt
//! ```

use std::hint::black_box;
use std::time::Instant;

/// The native implementation: the next value of a tiny recurrence.
#[inline(never)]
extern "C" fn native_step(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

alt::paravirt_ops! {
    /// Benchmark operations.
    pub table BENCH_OPS {
        /// One step, C clobbers: the unpatched site is a plain indirect call to the native
        /// function.
        fn step(x: u64) -> u64 {
            native: native_step,
            // SAFETY: LEA computes the native function's result into the result register only.
            unsafe inline: ["lea {ret}, [{x} + {x} * 2 + 1]"],
            clobbers: C,
        }
        /// One step, clobbering only rax: unpatched, the indirect call reaches a
        /// register-saving thunk.
        fn step_rax(x: u64) -> u64 {
            native: native_step,
            // SAFETY: LEA computes the native function's result into the result register only.
            unsafe inline: ["lea {ret}, [{x} + {x} * 2 + 1]"],
            clobbers: [rax],
        }
    }
}

const CALLS: u64 = 20_000_000;
const RUNS: usize = 7;

#[inline(never)]
fn via_site(n: u64) -> u64 {
    let mut x = black_box(1u64);
    for _ in 0..n {
        x = BENCH_OPS.step(x);
    }
    x
}

#[inline(never)]
fn via_site_rax(n: u64) -> u64 {
    let mut x = black_box(1u64);
    for _ in 0..n {
        x = BENCH_OPS.step_rax(x);
    }
    x
}

#[inline(never)]
fn direct(n: u64) -> u64 {
    let mut x = black_box(1u64);
    for _ in 0..n {
        x = native_step(x);
    }
    x
}

/// Median ns per call over `RUNS` runs of `CALLS` calls; also returns the result for checking.
fn measure(f: fn(u64) -> u64) -> (f64, u64) {
    let mut times = Vec::with_capacity(RUNS);
    let mut result = 0;
    f(CALLS / 10); // warm up
    for _ in 0..RUNS {
        let t = Instant::now();
        result = black_box(f(black_box(CALLS)));
        times.push(t.elapsed().as_nanos() as f64 / CALLS as f64);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[RUNS / 2], result)
}

fn main() {
    let options = if std::env::args().any(|a| a == "--blocking-threads-run-no-sites") {
        // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal and never
        // runs guest code; this benchmark starts no thread of its own.
        unsafe { alt::process::PatchOptions::new().assume_blocking_threads_run_no_sites() }
    } else {
        alt::process::PatchOptions::new()
    };
    let (direct_ns, r0) = measure(direct);
    let (indirect_ns, r1) = measure(via_site);
    let (thunk_ns, r2) = measure(via_site_rax);
    // SAFETY: single-threaded; the native backend only uses the table's own functions.
    let patched = unsafe { BENCH_OPS.install_with(&BenchOpsBackend::NATIVE, &options) }
        .expect("patching the benchmark's sites");
    let (patched_ns, r3) = measure(via_site);
    let (patched_rax_ns, r4) = measure(via_site_rax);
    assert!(
        [r1, r2, r3, r4].iter().all(|&r| r == r0),
        "results differ: {r0} {r1} {r2} {r3} {r4}"
    );
    let decisions: Vec<&str> = patched
        .report()
        .sites
        .iter()
        .map(|s| s.decision())
        .collect();
    println!("paravirt sites after patching: {decisions:?}");
    println!("{CALLS} dependent calls, median of {RUNS} runs");
    println!("  direct call of the native function      {direct_ns:7.3} ns/call");
    println!("  unpatched: indirect call through table  {indirect_ns:7.3} ns/call");
    println!("  unpatched: indirect call to a thunk     {thunk_ns:7.3} ns/call  (clobbers [rax])");
    println!("  patched site (inline, clobbers C)       {patched_ns:7.3} ns/call");
    println!("  patched site (inline, clobbers [rax])   {patched_rax_ns:7.3} ns/call");
    println!(
        "ratios: indirect/patched {:.2}x, direct/patched {:.2}x, indirect/direct {:.2}x, thunk/patched {:.2}x",
        indirect_ns / patched_ns,
        direct_ns / patched_ns,
        indirect_ns / direct_ns,
        thunk_ns / patched_rax_ns
    );
    // SAFETY: as for install.
    if let Err((_, e)) = alt::process::uninstall_paravirt(patched, &options) {
        eprintln!("revert: {e}");
    }
}
