//! C code calling paravirt operations through a Rust operations table, patched at start-up.
//!
//! ```text
//! cargo run --release -p alt-example-pv-c -- [--backend native|counting] [--rounds N] [--json]
//! qemu-x86_64 -cpu qemu64 target/release/pv-c --backend counting --blocking-threads-run-no-sites
//! ```
//!
//! `csrc/ops_user.c` calls the operations of `PV_OPS` as plain C function pointers
//! (`PV_OPS.save_flags()`), with no annotation. `build.rs` compiles it with
//! `alt_tablegen::build::Build`, which finds each call `call *PV_OPS+8*op(%rip)` from its
//! relocation and writes a table object whose entries land in the same section as the Rust
//! sites' entries, `alt_pv_PV_OPS`. One `install` patches both: a 6-byte C site gets the native
//! inline sequence when it fits (`mix`: `lea rax, [rsi + rdi*2]`; `cpu_relax`: `pause`),
//! otherwise a direct `call rel32`; C sites allow the whole C ABI clobber set, so a direct call
//! never needs a register-saving thunk.
//!
//! The program runs the C workload unpatched, patched, and after reverting, and a Rust workload
//! that computes the same checksum from Rust sites; all four agree, under either backend.
//! `--json` prints one object: `backend`, `rounds`, the checksums (hex strings), `flags_probe`,
//! `save_flags`, per-phase `counts`, `table` (address of `PV_OPS`), `c_functions` (name ->
//! address), `call_targets` (op -> what a direct call from a C site calls, or null),
//! `c_sites` (each C site: `function`, `offset`, `address`, `op`), then the keys of the patching
//! report (`sites`, each with `address`, `op`, `decision`, `before`, `after`, ...).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use alt::paravirt::{OpChoice, OpImpl};
use alt::report::json_str;

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
extern "C" fn native_mix(a: u64, b: u64) -> u64 {
    b.wrapping_add(a.wrapping_mul(2))
}
extern "C" fn native_hypercall(nr: u64, arg: u64) -> u64 {
    nr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ arg
}
extern "C" fn native_cpu_relax() {
    std::hint::spin_loop()
}

alt::paravirt_ops! {
    /// The operations C and Rust call. `csrc/pv_ops.h` declares the same slots, in this order.
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
        /// `b + 2a`: short enough (4 bytes) to be inlined into a 6-byte C site.
        fn mix(a: u64, b: u64) -> u64 {
            native: native_mix,
            // SAFETY: LEA computes the native function's result into the result register only.
            unsafe inline: ["lea {ret}, [{b} + {a}*2]"],
            clobbers: [rax],
        }
        /// A "hypercall": a pure function of its arguments.
        fn hypercall(nr: u64, arg: u64) -> u64 { native: native_hypercall, clobbers: C }
        /// A spin-loop hint (`pause`, 2 bytes).
        fn cpu_relax() {
            native: native_cpu_relax,
            // SAFETY: PAUSE is a hint with no architectural effect.
            unsafe inline: ["pause"],
            clobbers: [rax],
        }
    }
}

/// `PV_OPS_COUNT` in `csrc/pv_ops.h`.
const C_PV_OPS_COUNT: usize = 7;
const _: () = assert!(PvOps::OPS == C_PV_OPS_COUNT, "update csrc/pv_ops.h");
const _: () = assert!(std::mem::size_of::<PvOps>() == 8 * C_PV_OPS_COUNT);

extern "C" {
    /// `csrc/ops_user.c`: the workload, through `PV_OPS`.
    fn c_workload(rounds: u64) -> u64;
    /// `csrc/ops_user.c`: the flags word before, inside and after a disable/enable pair.
    fn c_flags_probe() -> u64;
    /// `csrc/ops_user.c`: `return PV_OPS.save_flags();`.
    fn c_save_flags() -> u64;
    /// `csrc/ops_user.c`: tail calls (`jmp *PV_OPS+8*op(%rip)`) of mix, hypercall, cpu_relax.
    fn c_tail_mix(a: u64, b: u64) -> u64;
    fn c_tail_hypercall(nr: u64, arg: u64) -> u64;
    fn c_tail_relax();
}

/// The tail-calling C functions' results, folded.
fn run_tail_calls() -> u64 {
    // SAFETY: the C functions only call through PV_OPS, whose slots always hold valid
    // implementations.
    unsafe {
        c_tail_relax();
        c_tail_mix(black_box(3), black_box(4)) ^ c_tail_hypercall(black_box(5), 6).rotate_left(1)
    }
}

// `C_SITES`: (function, offset in it, op) of every C site, as build.rs found them.
include!(concat!(env!("OUT_DIR"), "/c_sites.rs"));

/// The address of a C function that holds sites.
fn c_function(name: &str) -> u64 {
    let f = match name {
        "c_workload" => c_workload as *const () as usize,
        "c_flags_probe" => c_flags_probe as *const () as usize,
        "c_save_flags" => c_save_flags as *const () as usize,
        "c_tail_mix" => c_tail_mix as *const () as usize,
        "c_tail_hypercall" => c_tail_hypercall as *const () as usize,
        "c_tail_relax" => c_tail_relax as *const () as usize,
        other => panic!("C function {other} holds paravirt sites: declare it in main.rs"),
    };
    f as u64
}

const C_FUNCTIONS: [&str; 6] = [
    "c_workload",
    "c_flags_probe",
    "c_save_flags",
    "c_tail_mix",
    "c_tail_hypercall",
    "c_tail_relax",
];

static COUNT_FLAGS: AtomicU64 = AtomicU64::new(0);
static COUNT_MIX: AtomicU64 = AtomicU64::new(0);
static COUNT_HYPERCALLS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn counting_save_flags() -> u64 {
    COUNT_FLAGS.fetch_add(1, Ordering::Relaxed);
    native_save_flags()
}
unsafe extern "C" fn counting_restore_flags(flags: u64) {
    COUNT_FLAGS.fetch_add(1, Ordering::Relaxed);
    native_restore_flags(flags)
}
unsafe extern "C" fn counting_mix(a: u64, b: u64) -> u64 {
    COUNT_MIX.fetch_add(1, Ordering::Relaxed);
    native_mix(a, b)
}
unsafe extern "C" fn counting_hypercall(nr: u64, arg: u64) -> u64 {
    COUNT_HYPERCALLS.fetch_add(1, Ordering::Relaxed);
    native_hypercall(nr, arg)
}

/// Counts flag saves and restores, mixes and hypercalls; `cpu_relax` does nothing; the
/// interrupt-flag operations stay native.
const COUNTING: PvOpsBackend = PvOpsBackend {
    name: "counting",
    save_flags: OpImpl::Function(counting_save_flags),
    restore_flags: OpImpl::Function(counting_restore_flags),
    mix: OpImpl::Function(counting_mix),
    hypercall: OpImpl::Function(counting_hypercall),
    cpu_relax: OpImpl::Nop,
    ..PvOpsBackend::NATIVE
};

/// The counters since the last call: (flags, mix, hypercalls).
fn take_counts() -> (u64, u64, u64) {
    (
        COUNT_FLAGS.swap(0, Ordering::Relaxed),
        COUNT_MIX.swap(0, Ordering::Relaxed),
        COUNT_HYPERCALLS.swap(0, Ordering::Relaxed),
    )
}

/// `c_workload`, from Rust call sites.
#[inline(never)]
fn rust_workload(rounds: u64) -> u64 {
    let mut acc: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..rounds {
        let saved = PV_OPS.save_flags();
        PV_OPS.irq_disable();
        let inside = PV_OPS.save_flags();
        let h = PV_OPS.hypercall(i, acc);
        let m = PV_OPS.mix(h, i);
        PV_OPS.cpu_relax();
        PV_OPS.restore_flags(saved);
        PV_OPS.irq_enable();
        let after = PV_OPS.save_flags();
        acc = (acc ^ m ^ saved ^ (inside << 1) ^ (after << 2)).wrapping_mul(0x0100_0000_01b3);
        acc = black_box(acc);
    }
    acc
}

fn run_c(rounds: u64) -> u64 {
    // SAFETY: c_workload only calls through PV_OPS, whose slots always hold functions of the
    // declared signatures.
    unsafe { c_workload(rounds) }
}

fn usage() -> ! {
    eprintln!("usage: pv-c [--backend native|counting] [--rounds N] [--json] [--blocking-threads-run-no-sites]");
    std::process::exit(2);
}

fn counts_json(c: (u64, u64, u64)) -> String {
    format!(
        "{{\"flags\":{},\"mix\":{},\"hypercalls\":{}}}",
        c.0, c.1, c.2
    )
}

fn main() {
    let mut backend = PvOpsBackend::NATIVE;
    let mut rounds: u64 = 100_000;
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
            "--backend" => {
                backend = match args.next().as_deref() {
                    Some("native") => PvOpsBackend::NATIVE,
                    Some("counting") => COUNTING,
                    _ => usage(),
                }
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }

    let unpatched = run_c(black_box(rounds));
    let rust_unpatched = rust_workload(black_box(rounds));
    let tail_unpatched = run_tail_calls();

    // SAFETY: single-threaded; the counting functions are sound for any arguments.
    let patched = match unsafe { PV_OPS.install_with(&backend, &options) } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pv-c: {e}");
            std::process::exit(1);
        }
    };
    take_counts();
    let checksum = run_c(black_box(rounds));
    let counts_c = take_counts();
    let rust = rust_workload(black_box(rounds));
    let counts_rust = take_counts();
    // SAFETY: as for c_workload.
    let (probe, saved) = unsafe { (c_flags_probe(), c_save_flags()) };
    let counts_probe = take_counts();
    let tail = run_tail_calls();
    take_counts();
    let report = patched.report().clone();

    // SAFETY: as for install.
    if let Err((_, e)) = alt::process::uninstall_paravirt(patched, &options) {
        eprintln!("pv-c: revert: {e}");
        std::process::exit(1);
    }
    let reverted = run_c(black_box(rounds));
    let tail_reverted = run_tail_calls();

    // Where each C site is, and what a direct call from it reaches for this backend.
    let c_sites: Vec<(&str, u64, u64, u8)> = C_SITES
        .iter()
        .map(|&(f, off, op)| (f, off, c_function(f) + off, op))
        .collect();
    let descs = PV_OPS.op_descs();
    let targets: Vec<Option<u64>> = backend
        .choices()
        .iter()
        .zip(&descs)
        .map(|(c, d)| match *c {
            OpChoice::Native => Some(d.native),
            OpChoice::Function(f) => Some(f),
            OpChoice::Nop | OpChoice::Unset => None,
        })
        .collect();

    if json {
        let mut out = format!(
            "{{\"backend\":{},\"rounds\":{rounds},\"checksum\":\"{checksum:#018x}\",\"checksum_unpatched\":\"{unpatched:#018x}\",\"checksum_rust\":\"{rust:#018x}\",\"checksum_rust_unpatched\":\"{rust_unpatched:#018x}\",\"checksum_reverted\":\"{reverted:#018x}\",\"flags_probe\":\"{probe:#018x}\",\"save_flags\":\"{saved:#x}\",\"tail\":\"{tail:#x}\",\"tail_unpatched\":\"{tail_unpatched:#x}\",\"tail_reverted\":\"{tail_reverted:#x}\",\"counts\":{{\"c\":{},\"rust\":{},\"probe\":{}}},\"table\":{}",
            json_str(backend.name),
            counts_json(counts_c),
            counts_json(counts_rust),
            counts_json(counts_probe),
            PV_OPS.descriptor(&descs).table,
        );
        let fns: Vec<String> = C_FUNCTIONS
            .iter()
            .map(|f| format!("{}:{}", json_str(f), c_function(f)))
            .collect();
        out.push_str(&format!(",\"c_functions\":{{{}}}", fns.join(",")));
        let tg: Vec<String> = PvOps::OP_NAMES
            .iter()
            .zip(&targets)
            .map(|(n, t)| {
                format!(
                    "{}:{}",
                    json_str(n),
                    t.map_or("null".into(), |t| t.to_string())
                )
            })
            .collect();
        out.push_str(&format!(",\"call_targets\":{{{}}}", tg.join(",")));
        let cs: Vec<String> = c_sites
            .iter()
            .map(|&(f, off, addr, op)| {
                format!(
                    "{{\"function\":{},\"offset\":{off},\"address\":{addr},\"op\":{}}}",
                    json_str(f),
                    json_str(PvOps::OP_NAMES[usize::from(op)])
                )
            })
            .collect();
        out.push_str(&format!(",\"c_sites\":[{}],", cs.join(",")));
        let rest = report.to_json();
        out.push_str(&rest[1..]);
        println!("{out}");
        return;
    }

    println!("backend: {}", backend.name);
    println!("{report}");
    println!(
        "C call sites ({} of the {} sites; found by alt-tablegen from relocations against PV_OPS):",
        c_sites.len(),
        report.sites.len()
    );
    for &(f, off, addr, _) in &c_sites {
        match report.sites.iter().find(|s| s.addr == addr) {
            Some(s) => println!(
                "  {f}+{off:#x}  {:<22} {:<12} {:02x?} -> {:02x?}",
                s.label(),
                s.decision(),
                s.before,
                s.after
            ),
            None => println!("  {f}+{off:#x}  NOT IN THE REPORT"),
        }
    }
    println!(
        "counted (C workload): {} flag saves/restores, {} mixes, {} hypercalls",
        counts_c.0, counts_c.1, counts_c.2
    );
    println!("flags probe: {probe:#018x}, c_save_flags: {saved:#x}");
    println!("checksum C unpatched:    {unpatched:#018x}");
    println!("checksum C patched:      {checksum:#018x}");
    println!("checksum C reverted:     {reverted:#018x}");
    println!("checksum Rust unpatched: {rust_unpatched:#018x}");
    println!("checksum Rust patched:   {rust:#018x}");
    let all_in_report = c_sites
        .iter()
        .all(|&(_, _, addr, _)| report.sites.iter().any(|s| s.addr == addr));
    if [unpatched, reverted, rust_unpatched, rust]
        .iter()
        .any(|&c| c != checksum)
        || !all_in_report
    {
        println!("MISMATCH");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `struct pv_ops` in `csrc/pv_ops.h` names the operations in the table's slot order.
    #[test]
    fn c_header_matches_the_table() {
        let h = include_str!("../csrc/pv_ops.h");
        let count = h
            .lines()
            .find_map(|l| l.strip_prefix("#define PV_OPS_COUNT "))
            .expect("PV_OPS_COUNT");
        assert_eq!(count.trim().parse::<usize>().unwrap(), PvOps::OPS);
        let body = h
            .split_once("struct pv_ops {")
            .and_then(|(_, rest)| rest.split_once("};"))
            .expect("struct pv_ops { ... };")
            .0;
        let fields: Vec<&str> = body
            .lines()
            .filter_map(|l| {
                let name = l.split_once("(*")?.1.split_once(')')?.0;
                Some(name)
            })
            .collect();
        assert_eq!(fields, PvOps::OP_NAMES);
        for (i, l) in body.lines().filter(|l| l.contains("(*")).enumerate() {
            assert!(l.ends_with(&format!("/* op {i} */")), "{l}");
        }
    }
}
