//! The quickstart: a handful of hot functions whose call sites patch themselves at start-up.
//!
//! ```text
//! cargo run --release --example quickstart            # report, results, checksum
//! cargo run --release --example quickstart -- --json  # one JSON object
//! cargo run --release --example quickstart -- --no-patch
//! cargo run --release --example quickstart -- --strict-wx   # no page ever writable
//! qemu-x86_64 -cpu Nehalem target/release/examples/quickstart --blocking-threads-run-no-sites
//! ALT_CLEARCPUID=popcnt,avx2 cargo run --release --example quickstart
//! ALT_PATCH=off cargo run --release --example quickstart     # every default
//! ```
//!
//! The functions and the workload calling them are the demo crate's (`demo/`, `alt_demo`:
//! `popcount`, `copy_bytes`, `sum_bytes`, ..., `run`); each function's body is its portable
//! default. A library's sites are part of the binary that links it, so this binary patches them
//! as its own. The program calls nothing to patch: when it is loaded, before `main`, the runtime
//! probes every CPU and rewrites each call site once: the
//! POPCNT/LZCNT/TZCNT instruction inline, `rep movsb` inline where ERMS/FSRM say it is fast, a
//! direct call to the AVX2 sum, an `lfence` only where it serialises dispatch;
//! `alt::process::report()` says what it did. The results (and their checksum) are the same
//! whatever was chosen; what changes is the code that computes them.
//!
//! `--no-patch` reverts every site to its default; `--strict-wx` patches again without making a
//! page writable; `--blocking-threads-run-no-sites` patches again leaving running the threads
//! that block every signal (under qemu-user its helper thread, which keeps patching at load from
//! stopping it, and runs no guest code).

fn main() {
    use alt::process::{patch_self_with, revert_self_with, LoadOutcome, PatchOptions};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let json = has("--json");
    let mut options = PatchOptions::new();
    let mut again = false;
    if has("--strict-wx") {
        // Never make a page writable: write through /proc/self/mem.
        options = options.strict_wx();
        again = true;
    }
    if has("--blocking-threads-run-no-sites") {
        // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal and never
        // runs guest code; this program starts no thread of its own.
        options = unsafe { options.assume_blocking_threads_run_no_sites() };
        again = true;
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("quickstart: {what}: {e}");
        std::process::exit(1);
    };

    // Patched when loaded, before main: nothing to call.
    let load = alt::process::report();
    let mut report = load.and_then(LoadOutcome::report).cloned();
    if again && !matches!(load, Some(LoadOutcome::Skipped(_))) {
        // Patch again as the options say (ALT_PATCH=off still keeps every default).
        if report.is_some() {
            revert_self_with(&options).unwrap_or_else(|e| fail("revert", &e));
        }
        let repatched = patch_self_with(&options).unwrap_or_else(|e| fail("patch", &e));
        report = Some(alt::report::Report::clone(&repatched));
    }
    if has("--no-patch") && report.take().is_some() {
        revert_self_with(&options).unwrap_or_else(|e| fail("revert", &e));
    }
    if let (None, Some(LoadOutcome::Failed(e)), false) = (&report, load, has("--no-patch")) {
        // The process runs on with every default; the demo says why and fails.
        fail("not patched at load", e);
    }
    let patched = report.is_some();
    let mut sum = alt_demo::Checksum::new();
    let done = alt_demo::run(&mut sum);
    let line = std::hint::black_box([0u8; 64]);
    alt_demo::flush_line(&line[0]);
    let checksum = sum.value();

    if json {
        let report = report.map_or(String::from("null"), |r| r.to_json());
        println!("{{\"patched\":{patched},\"checksum\":{checksum},\"report\":{report}}}");
    } else {
        match &report {
            Some(r) => println!("{r}\n"),
            None => println!("(not patched: every site runs its default)\n"),
        }
        for (what, n) in [
            ("bits counted", done.bits),
            ("bytes copied", done.copied),
            ("byte sum", done.byte_sum),
        ] {
            println!("{what:>14}: {n}");
        }
        println!("{:>14}: {checksum:#018x}", "checksum");
    }
}
