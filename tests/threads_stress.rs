//! Patching while threads run, end to end: `examples/threads` (worker threads call every site of
//! the quickstart and of the paravirt example in tight loops and check every result, while the
//! main thread reverts and re-patches every site thousands of times, for changing capabilities,
//! and switches the paravirt backend), natively and under `qemu-x86_64 -cpu MODEL`.
//!
//! Passing means: no crash (a half-written site runs as garbage: SIGILL or SIGSEGV), no wrong
//! result, every cycle done, and every worker calling sites while the main thread cycled.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::{example, json, run_native, run_on_model};
use serde_json::Value;

const WORKERS: u64 = 4;

fn check(v: &Value, cycles: u64, what: &str) {
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{what}: no {k} in {v}"))
    };
    assert_eq!(n("wrong"), 0, "{what}: wrong results: {v}");
    assert_eq!(n("cycles"), cycles, "{what}: {v}");
    assert_eq!(n("patches"), cycles, "{what}: {v}");
    assert_eq!(n("reverts"), cycles - 1, "{what}: {v}");
    assert_eq!(n("backend_switches"), cycles / 10, "{what}: {v}");
    assert_eq!(n("workers"), WORKERS, "{what}: {v}");
    let during = v["calls_while_cycling"]
        .as_array()
        .expect("calls_while_cycling");
    assert_eq!(during.len() as u64, WORKERS, "{what}: {v}");
    assert!(
        during.iter().all(|c| c.as_u64().unwrap() > 0),
        "{what}: every worker called sites while the main thread cycled: {v}"
    );
    let stops = &v["stops"];
    let s = |k: &str| {
        stops[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no stops.{k}"))
    };
    // A revert and a patch per cycle, and the backend switches.
    assert!(s("count") >= 2 * cycles - 1, "{what}: {v}");
    assert_eq!(
        s("alone"),
        0,
        "{what}: the workers ran, so none was alone: {v}"
    );
    assert!(s("median_threads") >= WORKERS, "{what}: {v}");
}

#[test]
fn natively_thousands_of_cycles_with_threads_calling_every_site() {
    let cycles = 2000;
    let out = run_native(
        &example("threads"),
        &["--json", "--cycles", &cycles.to_string()],
        &[],
    );
    let v = json(&out, "threads natively");
    check(&v, cycles, "native");
    assert_eq!(
        v["stops"]["skipped"], 0,
        "nothing left running natively: {v}"
    );
}

#[test]
fn under_qemu_cpu_models() {
    let cycles = 100;
    for model in ["qemu64", "Nehalem", "Haswell", "max"] {
        let out = run_on_model(
            model,
            &example("threads"),
            &[
                "--json",
                "--cycles",
                &cycles.to_string(),
                "--blocking-threads-run-no-sites",
            ],
            &[],
        );
        let v = json(&out, &format!("threads under qemu -cpu {model}"));
        check(&v, cycles, model);
        // qemu's helper thread blocks every signal and is left running.
        assert!(v["stops"]["skipped"].as_u64().unwrap() >= 1, "{model}: {v}");
    }
}
