//! The alt test kernel: boots under `qemu-system-x86_64` (multiboot), maps its text read-only,
//! probes the CPU, patches its own alternatives and paravirt call sites through a W^X alias
//! mapping, checks that the results did not change, starts a late CPU and has the registry check
//! it, reports over the serial port and exits through `isa-debug-exit`.
//!
//! Output lines the tests read:
//!
//! - `alt-site <function> <decision> <capability>` per site (`-` when the default stays);
//! - `pv-site <table> <op> <decision>` per paravirt site;
//! - `late cpuN: accepted (...)` and `late cpuN: checksum ...`, or `late cpuN: refused: <error>`
//!   and `late cpuN: parked, ...`, per CPU started after patching; `registry: cpus ...`;
//! - `has before patching: ...` and `has: ...`: the kernel's `alt::has!` branches
//!   ([`work::Branches`]) before and after patching;
//! - `checksum: 0x...`, equal before and after patching (the kernel checks), on every model, on
//!   every CPU and under either paravirt backend;
//! - `alt test kernel: ok` before exiting with [`ExitCode::Success`] (qemu exit status 33).
//!
//! Command-line options (qemu `-append`): `alt.clearcpuid=LIST` as the runtime defines it;
//! `alt.pv=native|alt` (the paravirt backend); `alt.late-cpus=N` (CPUs started after patching;
//! default 1 when there are 3 or more); `alt.late-cpu-policy=must-match|optional`; test knobs
//! `alt.test=erratum=CAP[,CAP]` (patch as if a CPU had these errata),
//! `alt.test=late-cpu-lacks=CAP[,CAP]` and `alt.test=late-cpu-needs=CAP[,CAP]` (change the late
//! CPU's descriptor before it reports), and `alt.test=write-text`, which writes to the text
//! directly and must die of a page fault.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod boot;
mod idt;
mod io;
mod mem;
mod module;
mod paging;
mod pv;
mod smp;
mod work;

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use alt::cpu::{CapabilityList, CpuDescriptor};
use alt::driver::Patcher;
use alt::linker::sections;
use alt::overrides::Overrides;
use alt::paravirt::Backend;
use alt::plan::Layout;
use alt::policy::{CpuRegistry, LateCpuPolicy};
use alt::{Capability, CapabilitySet};

use io::{exit, ExitCode};

#[global_allocator]
static ALLOCATOR: mem::Bump = mem::Bump::new();

/// What a multiboot loader leaves in `eax`.
const MULTIBOOT_LOADER_MAGIC: u32 = 0x2BAD_B002;

/// The kernel command line from the multiboot information (flags bit 2: `cmdline` valid).
fn multiboot_cmdline(magic: u32, info: u32) -> String {
    if magic != MULTIBOOT_LOADER_MAGIC || info == 0 {
        return String::new();
    }
    let info = info as usize as *const u32;
    // SAFETY: the loader passed the address of its multiboot information structure, which lies
    // in identity-mapped low memory and begins with `flags`, with `cmdline` at offset 16.
    let (flags, cmdline) = unsafe { (info.read_volatile(), info.add(4).read_volatile()) };
    if flags & (1 << 2) == 0 || cmdline == 0 {
        return String::new();
    }
    let mut out = String::new();
    let p = cmdline as usize as *const u8;
    for i in 0..4096 {
        // SAFETY: `cmdline` is the address of a NUL-terminated string the loader placed in
        // identity-mapped memory; reading stops at the NUL (or after 4 KiB).
        let b = unsafe { p.add(i).read_volatile() };
        if b == 0 {
            break;
        }
        out.push(char::from(b));
    }
    out
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc is available on every x86-64 CPU and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn fail(what: core::fmt::Arguments<'_>) -> ! {
    println!("error: {what}");
    exit(ExitCode::Failure)
}

#[no_mangle]
extern "C" fn kmain(magic: u32, info: u32) -> ! {
    io::serial_init();
    println!("alt test kernel: booted (multiboot magic {magic:#x})");
    let cmdline = multiboot_cmdline(magic, info);
    println!("cmdline: {cmdline}");
    idt::install();

    let prot = paging::protect_kernel();
    println!(
        "paging: text {:#x}..{:#x} read-only+executable, rodata {:#x}..{:#x} read-only, nx {}",
        prot.text.start, prot.text.end, prot.rodata.start, prot.rodata.end, prot.nx
    );
    if paging::text_writable() {
        fail(format_args!("a text page is mapped writable"));
    }

    if cmdline
        .split_ascii_whitespace()
        .any(|w| w == "alt.test=write-text")
    {
        let target = prot.text.start;
        println!("writing to the text at {target:#x} directly: a page fault must follow");
        // SAFETY: a deliberate test that the text is read-only: the write faults and the
        // exception handler ends the run. Were it to succeed, the kernel exits at once without
        // running the damaged code.
        unsafe { core::ptr::write_volatile(target as *mut u8, 0xcc) };
        fail(format_args!("the direct write to the text did not fault"));
    }

    let late = match LateOptions::from_cmdline(&cmdline) {
        Ok(o) => o,
        Err(e) => fail(format_args!("{e}")),
    };

    // Capabilities: every CPU reports to the registry, the registry decides.
    let cpus = smp::qemu_cpu_count();
    // By default the last CPU of three or more starts late (after patching).
    let late_cpus = late
        .cpus
        .unwrap_or(if cpus >= 3 { 1 } else { 0 })
        .min(cpus - 1);
    let early = cpus - late_cpus;
    println!("cpus: {cpus} (from qemu's fw_cfg), {early} before patching, {late_cpus} after");
    smp::REGISTRY.with(|r| *r = CpuRegistry::new(late.policy));
    smp::LATE_TEST.with(|t| *t = late.test);
    if let Err(e) = smp::REGISTRY.with(|r| r.report(CpuDescriptor::probe_native(0))) {
        fail(format_args!("{e}"));
    }
    let aps = match smp::start_aps(early - 1) {
        Ok(n) if n == early - 1 => n,
        Ok(n) => fail(format_args!(
            "only {n} of {} other CPU(s) came up",
            early - 1
        )),
        Err(e) => fail(format_args!("starting the other CPUs: {e}")),
    };
    let mut caps = smp::REGISTRY.with(|r| {
        for d in r.cpus() {
            println!("{d}");
        }
        r.finalize()
    });
    match Overrides::from_cmdline(&cmdline) {
        Ok(o) => o.apply(&mut caps),
        Err(e) => fail(format_args!("{e}")),
    }
    if let Err(e) = test_errata(&cmdline, &mut caps) {
        fail(format_args!("{e}"));
    }
    println!("capabilities: {}", CapabilityList(caps));

    let unpatched = work::run();
    println!("checksum before patching: {unpatched:#018x}");
    println!("has before patching: {}", work::Branches::now());

    // Patching: the driver plans every table, then writes through the alias writer while the
    // other CPUs wait at the rendezvous.
    let pv_backend = match pv::backend_from_cmdline(&cmdline) {
        Ok(b) => b,
        Err(w) => fail(format_args!(
            "bad {w:?}: the paravirt backends are native and alt"
        )),
    };
    let pv_ops = pv::PV_OPS.op_descs();
    let pv_choices = pv_backend.choices();
    let s = sections();
    let text = [paging::text()];
    let layout = Layout {
        text: &text,
        replacements: s.replacements(),
    };
    // SAFETY: the layout is the kernel's own text and replacement section, and the tables are
    // its own sections; PV_OPS's descriptor is generated for the live table, and the backend's
    // functions have the operations' signatures and are sound wherever they are called.
    let patcher = unsafe {
        Patcher::new(caps, layout).sections(&s).paravirt(
            pv::PV_OPS.descriptor(&pv_ops),
            Backend {
                name: pv_backend.name,
                ops: &pv_choices,
            },
        )
    };
    // SAFETY: the text is identity-mapped and readable; while `apply` writes, the other CPUs
    // wait at the rendezvous.
    let mut writer = unsafe { paging::AliasWriter::new(text[0].clone()) };
    let prepared = match patcher.plan(&writer) {
        Ok(p) => p,
        Err(e) => fail(format_args!("{e}")),
    };
    let mut rendezvous = smp::Rendezvous::new(aps);
    let started = rdtsc();
    let patched = match prepared.apply(&mut writer, &mut rendezvous) {
        Ok(p) => p,
        Err(e) => fail(format_args!("patching failed: {e}")),
    };
    let cycles = rdtsc() - started;
    smp::REGISTRY.with(|r| r.set_used(patched.used()));

    let report = patched.report();
    println!("{report}");
    println!(
        "patched in {cycles} TSC cycles through {} alias mapping(s)",
        writer.mappings
    );
    for site in &report.sites {
        let cap = site.chosen().map_or("-", |c| c.capability.name());
        println!("alt-site {} {} {}", site.label(), site.decision(), cap);
    }
    println!("has: {}", work::Branches::now());
    for site in &report.paravirt {
        println!(
            "pv-site {} {} {}",
            site.table,
            site.op_name,
            site.decision.name()
        );
    }
    let ap_results = rendezvous.results;

    if paging::text_writable() {
        fail(format_args!("a text page is writable after patching"));
    }
    if paging::alias_slots_mapped() != 0 {
        fail(format_args!("an alias mapping was left behind"));
    }
    println!("w^x: text stayed read-only, alias window empty");

    for (cpu, before, after) in ap_results {
        println!("cpu{cpu}: checksum {before:#018x} before patching, {after:#018x} after");
        if before != unpatched || after != unpatched {
            fail(format_args!("cpu{cpu} computed other results"));
        }
    }
    if aps > 0 {
        println!(
            "rendezvous: {aps} other CPU(s) waited while the text was written, then serialised"
        );
    }

    // CPUs that come up now are checked against what was patched.
    let policy = match late.policy {
        LateCpuPolicy::MustMatch => "must-match",
        LateCpuPolicy::Optional => "optional",
    };
    for apic_id in early..cpus {
        let runs = work::RUNS.load(Ordering::Acquire);
        let outcome = smp::start_late_cpu(apic_id);
        let late_runs = work::RUNS.load(Ordering::Acquire) - runs;
        match outcome {
            Ok(smp::LateOutcome::Accepted { desc, checksum }) => {
                println!("late {desc}");
                println!("late cpu{}: accepted ({policy} policy)", desc.index);
                println!(
                    "late cpu{}: checksum {checksum:#018x} on the patched text (workload runs: {late_runs})",
                    desc.index
                );
                if checksum != unpatched || late_runs != 1 {
                    fail(format_args!(
                        "late cpu{} computed other results",
                        desc.index
                    ));
                }
            }
            Ok(smp::LateOutcome::Refused { desc, error }) => {
                println!("late {desc}");
                println!("late cpu{}: refused: {error}", desc.index);
                println!(
                    "late cpu{}: parked, ran no patched code (workload runs: {late_runs})",
                    desc.index
                );
                if late_runs != 0 {
                    fail(format_args!("the refused CPU ran the workload"));
                }
            }
            Err(e) => fail(format_args!("starting CPU {apic_id} after patching: {e}")),
        }
    }
    smp::REGISTRY.with(|r| {
        let ids: Vec<String> = r.cpus().map(|d| alloc::format!("{}", d.index)).collect();
        println!("registry: cpus {}", ids.join(" "));
    });

    // A module loaded now is patched with the decisions made at boot (caps, backend).
    let loaded = match module::load(
        caps,
        pv::PV_OPS.descriptor(&pv_ops),
        Backend {
            name: pv_backend.name,
            ops: &pv_choices,
        },
        s.replacements(),
    ) {
        Ok(m) => m,
        Err(e) => fail(format_args!("{e}")),
    };
    let mreport = loaded.patched.report();
    for site in &mreport.sites {
        let cap = site.chosen().map_or("-", |c| c.capability.name());
        let first = site.candidates.first().map_or("-", |c| c.capability.name());
        println!(
            "module alt-site +{:#x} {} {} (keyed by {first})",
            site.addr - loaded.text.start,
            site.decision(),
            cap
        );
    }
    for site in &mreport.paravirt {
        println!(
            "module pv-site {} {} {}",
            site.table,
            site.op_name,
            site.decision.name()
        );
    }
    if paging::writable(loaded.text.clone()) {
        fail(format_args!("the module's text is writable"));
    }
    let call = |name: &str| -> u64 {
        let Some(addr) = loaded.symbol(name) else {
            fail(format_args!("module: no symbol {name}"))
        };
        // SAFETY: the module's function `name` takes no argument and returns in rax (its C
        // prototype), and its text is relocated, patched and mapped executable.
        let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(addr as usize) };
        f()
    };
    println!(
        "module: loaded at {:#x}, variants {:#x}, called {}, pv {:#x}",
        loaded.text.start,
        call("mod_variants"),
        call("mod_called"),
        call("mod_pv")
    );

    let result = work::run();
    if result != unpatched {
        fail(format_args!(
            "checksum changed by patching: {unpatched:#018x} -> {result:#018x}"
        ));
    }
    println!("checksum: {result:#018x}");
    println!(
        "pv counts: {} flag operations, {} cycle reads through the alt backend",
        pv::ALT_FLAG_OPS.load(Ordering::Relaxed),
        pv::ALT_CYCLE_READS.load(Ordering::Relaxed)
    );
    println!("heap used: {} bytes", ALLOCATOR.used());
    println!("alt test kernel: ok");
    exit(ExitCode::Success)
}

/// `alt.test=erratum=CAP[,CAP]`: patch as if a CPU had these errata (which no qemu model has),
/// so that their workarounds stay applied. Errata only: a feature the CPUs lack would fault.
fn test_errata(cmdline: &str, caps: &mut CapabilitySet) -> Result<(), String> {
    for w in cmdline.split_ascii_whitespace() {
        let Some(list) = w.strip_prefix("alt.test=erratum=") else {
            continue;
        };
        for name in list.split(',') {
            match Capability::from_name(name) {
                Some(c) if matches!(c.kind(), alt::CapabilityKind::Erratum(_)) => caps.set(c),
                _ => {
                    return Err(alloc::format!(
                        "alt.test=erratum=: {name:?} is not an erratum"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Command-line options about CPUs that come up after patching.
struct LateOptions {
    /// `alt.late-cpus=N`: how many of the CPUs start after patching (default: 1 of 3 or more).
    cpus: Option<u32>,
    /// `alt.late-cpu-policy=must-match|optional` (default must-match).
    policy: LateCpuPolicy,
    /// `alt.test=late-cpu-lacks=CAP[,CAP]` and `alt.test=late-cpu-needs=CAP[,CAP]`.
    test: smp::LateCpuTest,
}

impl LateOptions {
    fn from_cmdline(cmdline: &str) -> Result<Self, String> {
        let mut o = LateOptions {
            cpus: None,
            policy: LateCpuPolicy::MustMatch,
            test: smp::LateCpuTest::default(),
        };
        let caps = |list: &str, into: &mut CapabilitySet| -> Result<(), String> {
            for name in list.split(',') {
                let cap = Capability::from_name(name)
                    .ok_or_else(|| alloc::format!("unknown capability {name:?} in {list:?}"))?;
                into.set(cap);
            }
            Ok(())
        };
        for w in cmdline.split_ascii_whitespace() {
            if let Some(n) = w.strip_prefix("alt.late-cpus=") {
                o.cpus = Some(n.parse().map_err(|_| alloc::format!("bad {w:?}"))?);
            } else if let Some(p) = w.strip_prefix("alt.late-cpu-policy=") {
                o.policy = match p {
                    "must-match" => LateCpuPolicy::MustMatch,
                    "optional" => LateCpuPolicy::Optional,
                    _ => return Err(alloc::format!("bad {w:?}: must-match or optional")),
                };
            } else if let Some(l) = w.strip_prefix("alt.test=late-cpu-lacks=") {
                caps(l, &mut o.test.lacks)?;
            } else if let Some(l) = w.strip_prefix("alt.test=late-cpu-needs=") {
                caps(l, &mut o.test.needs)?;
            }
        }
        Ok(o)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {info}");
    exit(ExitCode::Failure)
}

// The precompiled `alloc` was built with unwinding, so its landing pads name the unwinder's
// entry points; with `panic = "abort"` no unwinding ever starts, so these are never called.

/// Never called: nothing unwinds in this kernel.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    fail(format_args!("_Unwind_Resume called"))
}

/// Never called: nothing unwinds in this kernel.
#[no_mangle]
extern "C" fn rust_eh_personality() -> ! {
    fail(format_args!("rust_eh_personality called"))
}
