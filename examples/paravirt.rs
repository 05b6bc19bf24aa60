//! Paravirt operations: one operations table, two backends, identical results.
//!
//! ```text
//! cargo run --release --example paravirt [-- --backend native|counting|auto] [--json]
//! qemu-x86_64 -cpu Haswell target/release/examples/paravirt --backend counting --blocking-threads-run-no-sites
//! ```
//!
//! The table holds interrupt-flag style operations emulated in user space (the "IF" bit lives
//! in a static), a cycle counter read (`rdtsc`), a "hypercall", an I/O delay and a halt. The
//! **native** backend uses the native implementations: inline sequences where the table has
//! one, direct calls otherwise. The **counting** backend counts every flag operation, cycle
//! read and hypercall in its own functions, makes the I/O delay a nop, and leaves `halt` unset
//! (its site becomes a trap; the program never calls it). The workload's checksum is the same
//! unpatched, under either backend, and after reverting.
//!
//! `--json` prints one object: `backend`, `checksum` (hex string), `checksum_unpatched`,
//! `checksum_reverted`, `counts`, then the keys of the patching report (including `sites`, each
//! with `table`, `op`, `decision`, `before` and `after`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use alt::paravirt::OpImpl;

/// The emulated interrupt flag: bit 9 (0x200) set means "interrupts enabled".
static EMU_FLAGS: AtomicU64 = AtomicU64::new(IF);
const IF: u64 = 0x200;

extern "C" fn native_save_flags() -> u64 {
    EMU_FLAGS.load(Ordering::Relaxed)
}
extern "C" fn native_restore_flags(flags: u64) {
    EMU_FLAGS.store(flags, Ordering::Relaxed)
}
extern "C" fn native_irq_disable() {
    EMU_FLAGS.store(0, Ordering::Relaxed)
}
extern "C" fn native_irq_enable() {
    EMU_FLAGS.store(IF, Ordering::Relaxed)
}
extern "C" fn native_cycles() -> u64 {
    // SAFETY: rdtsc exists on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}
pub extern "C" fn native_hypercall(nr: u64, arg: u64) -> u64 {
    nr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ arg
}
extern "C" fn native_io_delay() {}
extern "C" fn native_halt() {
    std::hint::spin_loop()
}

alt::paravirt_ops! {
    /// Interrupt-flag style operations, a cycle counter and a hypercall.
    pub table PV_OPS {
        /// The emulated flags word.
        fn save_flags() -> u64 {
            native: native_save_flags,
            // SAFETY: a plain load of the flags word (an AtomicU64: aligned, always valid), as
            // the native function's relaxed load; only the result register changes.
            unsafe inline: ["mov {ret}, qword ptr [rip + {if_word}]"],
            clobbers: [rax],
            symbols: { if_word = EMU_FLAGS },
        }
        /// Sets the emulated flags word.
        fn restore_flags(flags: u64) {
            native: native_restore_flags,
            // SAFETY: a plain store to the flags word, as the native function's relaxed store.
            unsafe inline: ["mov qword ptr [rip + {if_word}], {flags}"],
            clobbers: [rax],
            symbols: { if_word = EMU_FLAGS },
        }
        /// Clears the emulated interrupt flag.
        fn irq_disable() {
            native: native_irq_disable,
            // SAFETY: a plain store to the flags word, as the native function's relaxed store.
            unsafe inline: ["mov qword ptr [rip + {if_word}], 0"],
            clobbers: [rax],
            symbols: { if_word = EMU_FLAGS },
        }
        /// Sets the emulated interrupt flag.
        fn irq_enable() {
            native: native_irq_enable,
            // SAFETY: a plain store to the flags word, as the native function's relaxed store.
            unsafe inline: ["mov qword ptr [rip + {if_word}], 0x200"],
            clobbers: [rax],
            symbols: { if_word = EMU_FLAGS },
        }
        /// The time-stamp counter.
        fn cycles() -> u64 {
            native: native_cycles,
            // SAFETY: RDTSC writes rdx:rax only, both declared; the result is assembled in rax.
            unsafe inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
            clobbers: [rax, rdx],
        }
        /// A "hypercall": a pure function of its arguments.
        fn hypercall(nr: u64, arg: u64) -> u64 { native: native_hypercall, clobbers: C }
        /// Waits a little (nothing, natively).
        fn io_delay() { native: native_io_delay, clobbers: C }
        /// Halts until the next interrupt (a spin-loop hint, natively).
        fn halt() { native: native_halt, clobbers: [rax] }
    }
}

static COUNT_FLAGS: AtomicU64 = AtomicU64::new(0);
static COUNT_CYCLES: AtomicU64 = AtomicU64::new(0);
static COUNT_HYPERCALLS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn counting_save_flags() -> u64 {
    COUNT_FLAGS.fetch_add(1, Ordering::Relaxed);
    native_save_flags()
}
unsafe extern "C" fn counting_restore_flags(flags: u64) {
    COUNT_FLAGS.fetch_add(1, Ordering::Relaxed);
    native_restore_flags(flags)
}
unsafe extern "C" fn counting_cycles() -> u64 {
    COUNT_CYCLES.fetch_add(1, Ordering::Relaxed);
    native_cycles()
}
unsafe extern "C" fn counting_hypercall(nr: u64, arg: u64) -> u64 {
    COUNT_HYPERCALLS.fetch_add(1, Ordering::Relaxed);
    native_hypercall(nr, arg)
}

/// Counts flag operations, cycle reads and hypercalls; the I/O delay does nothing; `halt` is
/// left unset.
pub const COUNTING: PvOpsBackend = PvOpsBackend {
    name: "counting",
    save_flags: OpImpl::Function(counting_save_flags),
    restore_flags: OpImpl::Function(counting_restore_flags),
    irq_disable: OpImpl::Native,
    irq_enable: OpImpl::Native,
    cycles: OpImpl::Function(counting_cycles),
    hypercall: OpImpl::Function(counting_hypercall),
    io_delay: OpImpl::Nop,
    halt: OpImpl::Unset,
};

const ROUNDS: u64 = 100_000;

/// The workload: a checksum of everything observable except the cycle counts' values. Values
/// live in registers across the operations, so a site that changed a register it promised to
/// keep would change the checksum.
#[inline(never)]
pub fn workload(rounds: u64) -> u64 {
    let mut acc: u64 = 0xcbf2_9ce4_8422_2325;
    let mut monotonic = true;
    for i in 0..rounds {
        let saved = PV_OPS.save_flags();
        PV_OPS.irq_disable();
        let inside = PV_OPS.save_flags();
        let t0 = PV_OPS.cycles();
        let h = PV_OPS.hypercall(i, acc);
        let t1 = PV_OPS.cycles();
        monotonic &= t1 >= t0 || i == 0;
        PV_OPS.io_delay();
        PV_OPS.restore_flags(saved);
        PV_OPS.irq_enable();
        let after = PV_OPS.save_flags();
        acc = (acc ^ h ^ saved ^ (inside << 1) ^ (after << 2)).wrapping_mul(0x0100_0000_01b3);
        acc = black_box(acc);
    }
    acc ^ u64::from(monotonic)
}

/// Never called with `true`: its site shows what an unset operation becomes.
#[inline(never)]
fn maybe_halt(really: bool) {
    if really {
        PV_OPS.halt();
    }
}

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
    maybe_halt(black_box(false));

    let unpatched = workload(black_box(ROUNDS));
    // SAFETY: single-threaded; the counting functions are sound for any arguments.
    let patched = match unsafe { PV_OPS.install_with(&backend, &options) } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("paravirt: {e}");
            std::process::exit(1);
        }
    };
    COUNT_FLAGS.store(0, Ordering::Relaxed);
    COUNT_CYCLES.store(0, Ordering::Relaxed);
    COUNT_HYPERCALLS.store(0, Ordering::Relaxed);
    let checksum = workload(black_box(ROUNDS));
    let counts = (
        COUNT_FLAGS.load(Ordering::Relaxed),
        COUNT_CYCLES.load(Ordering::Relaxed),
        COUNT_HYPERCALLS.load(Ordering::Relaxed),
    );
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
