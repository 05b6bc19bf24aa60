//! Paravirt operations: one operations table, two backends, identical results.
//!
//! ```text
//! cargo run --release --example paravirt [-- --backend native|counting|auto] [--json]
//! qemu-x86_64 -cpu Haswell target/release/examples/paravirt --backend counting --blocking-threads-run-no-sites
//! ```
//!
//! The table is the demo crate's (`alt_demo::pv`, in `demo/src/pv.rs`): interrupt-flag style
//! operations emulated in user space (the "IF" bit lives in a static), a cycle counter read
//! (`rdtsc`), a "hypercall", an I/O delay and a halt. The **native** backend uses the native
//! implementations: inline sequences where the table has one, direct calls otherwise. The
//! **counting** backend counts every flag operation, cycle
//! read and hypercall in its own functions, makes the I/O delay a nop, and leaves `halt` unset
//! (its site becomes a trap; the program never calls it). The workload's checksum is the same
//! unpatched, under either backend, and after reverting.
//!
//! `--json` prints one object: `backend`, `checksum` (hex string), `checksum_unpatched`,
//! `checksum_reverted`, `counts`, then the keys of the patching report (including `sites`, each
//! with `table`, `op`, `decision`, `before` and `after`).

use std::hint::black_box;

use alt_demo::pv::{counts, halt_if, reset_counts, workload, PvOpsBackend, COUNTING, PV_OPS};

const ROUNDS: u64 = 100_000;

fn main() {
    let mut backend_arg = String::from("auto");
    let mut json = false;
    let mut options = alt::process::PatchOptions::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--blocking-threads-run-no-sites" => {
                // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal
                // and never runs guest code; this program starts no thread of its own.
                options = unsafe { options.assume_blocking_threads_run_no_sites() };
            }
            "--backend" => backend_arg = args.next().unwrap_or_default(),
            other => {
                eprintln!("usage: paravirt [--backend native|counting|auto] [--json] [--blocking-threads-run-no-sites] (got {other:?})");
                std::process::exit(2);
            }
        }
    }
    let hypervisor = alt::x86_64::hypervisor::detect_native();
    let backend = match backend_arg.as_str() {
        "native" => PvOpsBackend::NATIVE,
        "counting" => COUNTING,
        "auto" if hypervisor.is_some() => COUNTING,
        "auto" => PvOpsBackend::NATIVE,
        other => {
            eprintln!("unknown backend {other:?}: use native, counting or auto");
            std::process::exit(2);
        }
    };
    halt_if(black_box(false));

    let unpatched = workload(black_box(ROUNDS));
    // SAFETY: single-threaded; the counting functions are sound for any arguments.
    let patched = match unsafe { PV_OPS.install_with(&backend, &options) } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paravirt: {e}");
            std::process::exit(1);
        }
    };
    reset_counts();
    let checksum = workload(black_box(ROUNDS));
    let counted = counts();
    let counts = (counted.flags, counted.cycles, counted.hypercalls);
    let report = patched.report().clone();
    // SAFETY: as for install.
    if let Err((_, e)) = alt::process::uninstall_paravirt(patched, &options) {
        eprintln!("paravirt: revert: {e}");
        std::process::exit(1);
    }
    let reverted = workload(black_box(ROUNDS));

    if json {
        let rest = report.to_json();
        println!(
            "{{\"backend\":\"{}\",\"hypervisor\":{},\"checksum\":\"{checksum:#018x}\",\"checksum_unpatched\":\"{unpatched:#018x}\",\"checksum_reverted\":\"{reverted:#018x}\",\"counts\":{{\"flags\":{},\"cycles\":{},\"hypercalls\":{}}},{}",
            backend.name,
            hypervisor.map_or(String::from("null"), |h| alt::report::json_str(h.signature_str())),
            counts.0,
            counts.1,
            counts.2,
            &rest[1..]
        );
        return;
    }
    match hypervisor {
        Some(h) => println!("hypervisor: {} ({:?})", h.signature_str(), h.kind),
        None => println!("hypervisor: none"),
    }
    println!("backend: {}", backend.name);
    println!("{report}");
    println!(
        "counted: {} flag operations, {} cycle reads, {} hypercalls",
        counts.0, counts.1, counts.2
    );
    println!("checksum unpatched: {unpatched:#018x}");
    println!("checksum patched:   {checksum:#018x}");
    println!("checksum reverted:  {reverted:#018x}");
    if unpatched != checksum || reverted != checksum {
        println!("MISMATCH");
        std::process::exit(1);
    }
}
