//! Patching while threads run: worker threads call every site of the quickstart and of the
//! paravirt example in tight loops and check every result, while the main thread reverts and
//! re-patches the process thousands of times, for changing capabilities, and switches the
//! paravirt backend.
//!
//! ```text
//! cargo run --release --example threads                       # 2000 cycles, 4 workers
//! cargo run --release --example threads -- --cycles 500 --workers 8 --json
//! qemu-x86_64 -cpu Haswell target/release/examples/threads --cycles 100 --blocking-threads-run-no-sites
//! ```
//!
//! Each cycle reverts every site (`alt::process::revert_self`) and patches it again
//! (`patch_self_with`) for the next capability set in turn: everything this system has, the same
//! without POPCNT, AVX2, ERMS and FSRM, and nothing at all. Every tenth cycle the paravirt
//! table switches between no backend, the native one and the counting one. Meanwhile the workers
//! run the quickstart's functions (`run()`, whose checksum covers every result), the paravirt
//! workload (one worker: the emulated flags are one global) and the table's pure operations, and
//! compare every result with the one computed before any thread started. It prints what it did:
//! cycles, calls checked, wrong results (0), and the median cost of one stop and release of the
//! workers. The process exits 1 on any wrong result; a crash is a crash.

#[allow(dead_code)]
#[path = "quickstart.rs"]
mod quickstart;

#[allow(dead_code)]
#[path = "paravirt.rs"]
mod paravirt;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use alt::capability::{Capability, CapabilitySet};
use alt::process::{PatchOptions, StopRecord};
use paravirt::{PvOpsBackend, COUNTING, PV_OPS};

/// Rounds of the paravirt workload per check (10 operation calls each).
const PV_ROUNDS: u64 = 64;
/// Site calls whose results one `quickstart::run()` checks: popcount, leading and trailing
/// zeros of 8 values, 6 copies, 6 sums (its barriers and flush have no result).
const QUICKSTART_CALLS: u64 = 8 * 3 + 6 + 6;

struct Config {
    cycles: u64,
    workers: usize,
    json: bool,
    options: PatchOptions,
}

fn config() -> Config {
    let mut c = Config {
        cycles: 2000,
        workers: 4,
        json: false,
        options: PatchOptions::new(),
    };
    let mut args = std::env::args().skip(1);
    let number =
        |v: Option<String>| -> u64 { v.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()) };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycles" => c.cycles = number(args.next()),
            "--workers" => c.workers = number(args.next()).max(3) as usize,
            "--json" => c.json = true,
            "--blocking-threads-run-no-sites" => {
                // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal
                // and never runs guest code; this program's own threads block nothing.
                c.options = unsafe { c.options.assume_blocking_threads_run_no_sites() };
            }
            _ => usage(),
        }
    }
    c
}

fn usage() -> ! {
    eprintln!(
        "usage: threads [--cycles N] [--workers N (at least 3)] [--json] \
         [--blocking-threads-run-no-sites]"
    );
    std::process::exit(2);
}

/// What the workers check against, computed before any of them starts.
#[derive(Clone, Copy)]
struct Expected {
    quickstart: u64,
    paravirt: u64,
}

/// One worker's tallies.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    wrong: AtomicU64,
    /// Calls made while the main thread was cycling.
    during: AtomicU64,
}

#[derive(Clone, Copy)]
enum Work {
    Quickstart,
    Paravirt,
    PureOps,
}

fn worker(work: Work, expected: Expected, tally: &Tally, cycling: &AtomicBool, stop: &AtomicBool) {
    let mut last_cycles = 0u64;
    let mut i = 0u64;
    while !stop.load(Relaxed) {
        let (calls, ok) = match work {
            Work::Quickstart => (QUICKSTART_CALLS, quickstart::run().0 == expected.quickstart),
            Work::Paravirt => (
                10 * PV_ROUNDS,
                paravirt::workload(black_box(PV_ROUNDS)) == expected.paravirt,
            ),
            Work::PureOps => {
                let mut ok = true;
                for _ in 0..64 {
                    i = i.wrapping_add(0x9e37_79b9);
                    ok &= PV_OPS.hypercall(i, !i) == paravirt::native_hypercall(i, !i);
                    let now = PV_OPS.cycles();
                    ok &= now >= last_cycles;
                    last_cycles = now;
                }
                (128, ok)
            }
        };
        tally.calls.fetch_add(calls, Relaxed);
        if cycling.load(Relaxed) {
            tally.during.fetch_add(calls, Relaxed);
        }
        if !ok {
            tally.wrong.fetch_add(1, Relaxed);
        }
    }
}

/// The capability sets the cycles go through: everything, less four features, nothing.
fn capability_sets() -> Vec<(&'static str, CapabilitySet)> {
    let all = alt::process::system_capabilities().unwrap_or_else(|e| fail("probe", &e));
    let mut fewer = all;
    for name in ["popcnt", "avx2", "erms", "fsrm"] {
        fewer.clear(Capability::from_name(name).expect("a known capability"));
    }
    vec![
        ("all", all),
        ("fewer", fewer),
        ("none", CapabilitySet::default()),
    ]
}

fn fail(what: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("threads: {what}: {e}");
    std::process::exit(1);
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let c = config();
    let sets = capability_sets();
    // Results from the defaults, before any thread starts.
    if alt::process::report().and_then(|o| o.report()).is_some() {
        alt::process::revert_self_with(&c.options).unwrap_or_else(|e| fail("revert", &e));
    }
    let expected = Expected {
        quickstart: quickstart::run().0,
        paravirt: paravirt::workload(PV_ROUNDS),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let cycling = Arc::new(AtomicBool::new(false));
    let tallies: Arc<Vec<Tally>> = Arc::new((0..c.workers).map(|_| Tally::default()).collect());
    let handles: Vec<_> = (0..c.workers)
        .map(|n| {
            let (stop, cycling, tallies) = (stop.clone(), cycling.clone(), tallies.clone());
            let work = match n {
                0 => Work::Paravirt,
                1 => Work::PureOps,
                _ => Work::Quickstart,
            };
            std::thread::spawn(move || worker(work, expected, &tallies[n], &cycling, &stop))
        })
        .collect();
    // Let every worker start calling before the first write.
    while tallies.iter().any(|t| t.calls.load(Relaxed) == 0) {
        std::thread::yield_now();
    }

    let started = Instant::now();
    cycling.store(true, Relaxed);
    let mut stops: Vec<StopRecord> = Vec::with_capacity(c.cycles as usize * 3);
    let mut note = || {
        if let Some(r) = alt::process::last_stop() {
            stops.push(r);
        }
    };
    let mut patched = false;
    let mut pv: Option<alt::driver::Patched> = None;
    let backends: [Option<&PvOpsBackend>; 3] = [None, Some(&PvOpsBackend::NATIVE), Some(&COUNTING)];
    let (mut switches, mut reverts, mut patches) = (0u64, 0u64, 0u64);
    for cycle in 0..c.cycles {
        if patched {
            alt::process::revert_self_with(&c.options).unwrap_or_else(|e| fail("revert", &e));
            reverts += 1;
            note();
        }
        let (_, caps) = sets[cycle as usize % sets.len()];
        alt::process::patch_self_with(&c.options.clone().capabilities(caps))
            .unwrap_or_else(|e| fail("patch", &e));
        patched = true;
        patches += 1;
        note();
        if cycle % 10 == 9 {
            if let Some(p) = pv.take() {
                alt::process::uninstall_paravirt(p, &c.options)
                    .unwrap_or_else(|(_, e)| fail("uninstall the backend", &e));
                note();
            }
            if let Some(backend) = backends[(cycle / 10) as usize % backends.len()] {
                // SAFETY: the counting functions are sound for any arguments; the native
                // backend uses the table's own functions.
                let p = unsafe { PV_OPS.install_with(backend, &c.options) }
                    .unwrap_or_else(|e| fail("install a backend", &e));
                pv = Some(p);
                note();
            }
            switches += 1;
        }
    }
    cycling.store(false, Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    for h in handles {
        h.join().expect("a worker panicked");
    }

    let calls: Vec<u64> = tallies.iter().map(|t| t.calls.load(Relaxed)).collect();
    let during: Vec<u64> = tallies.iter().map(|t| t.during.load(Relaxed)).collect();
    let wrong: u64 = tallies.iter().map(|t| t.wrong.load(Relaxed)).sum();
    let total: u64 = calls.iter().sum();
    let mut stop_ns: Vec<u64> = stops.iter().map(|s| s.stop_ns).collect();
    let mut held_ns: Vec<u64> = stops.iter().map(|s| s.held_ns).collect();
    let mut release_ns: Vec<u64> = stops.iter().map(|s| s.release_ns).collect();
    let mut stopped: Vec<u64> = stops.iter().map(|s| s.threads as u64).collect();
    let alone = stops.iter().filter(|s| s.alone).count();
    let retried = stops.iter().filter(|s| s.tries > 1).count();
    let max_tries = stops.iter().map(|s| s.tries).max().unwrap_or(0);
    let skipped = stops.iter().map(|s| s.skipped).max().unwrap_or(0);
    let (m_stop, m_held, m_release, m_threads) = (
        median(&mut stop_ns),
        median(&mut held_ns),
        median(&mut release_ns),
        median(&mut stopped),
    );

    if c.json {
        let list = |v: &[u64]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{{\"cycles\":{},\"reverts\":{reverts},\"patches\":{patches},\"backend_switches\":{switches},\
             \"workers\":{},\"calls_checked\":{total},\"calls_per_worker\":[{}],\
             \"calls_while_cycling\":[{}],\"wrong\":{wrong},\"elapsed_ms\":{},\
             \"stops\":{{\"count\":{},\"alone\":{alone},\"retried\":{retried},\"max_tries\":{max_tries},\
             \"skipped\":{skipped},\"median_threads\":{m_threads},\"median_stop_ns\":{m_stop},\
             \"median_held_ns\":{m_held},\"median_release_ns\":{m_release}}}}}",
            c.cycles,
            c.workers,
            list(&calls),
            list(&during),
            elapsed.as_millis(),
            stops.len(),
        );
    } else {
        println!(
            "{} cycles in {:.2} s: {reverts} reverts and {patches} patches of every site (capabilities: {}), \
             {switches} paravirt backend switches",
            c.cycles,
            elapsed.as_secs_f64(),
            sets.iter().map(|s| s.0).collect::<Vec<_>>().join(" / ")
        );
        println!(
            "{} workers checked {total} site calls ({} while cycling): {wrong} wrong",
            c.workers,
            during.iter().sum::<u64>()
        );
        println!(
            "{} stops of {m_threads} threads (median): stop {:.1} us, held {:.1} us, release {:.1} us; \
             {retried} retried because a thread was inside a site (at most {max_tries} tries){}",
            stops.len(),
            m_stop as f64 / 1e3,
            m_held as f64 / 1e3,
            m_release as f64 / 1e3,
            if skipped > 0 {
                format!("; {skipped} blocking thread(s) left running")
            } else {
                String::new()
            }
        );
    }
    if wrong > 0 {
        std::process::exit(1);
    }
}
