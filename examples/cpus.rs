//! Prints every online CPU, the system's capabilities and the errata that apply.
//!
//! ```text
//! cargo run --release --example cpus                    # one line per CPU, then the system set
//! cargo run --release --example cpus -- --json          # one JSON object
//! cargo run --release --example cpus -- --each          # x86: probe each CPU on a pinned thread
//! cargo run --release --example cpus -- --cpuid         # this CPU's CPUID dump (text format)
//! cargo run --release --example cpus -- --sysfs DIR     # a recorded AArch64 sysfs tree
//! cargo run --release --example cpus -- --bench [RUNS]  # x86: what probing costs, medians
//! ```
//!
//! The `--cpuid` output is the text format of `alt_runtime::x86_64::cpuid::CpuidDump`; run under
//! `qemu-x86_64 -cpu MODEL` it records what that emulated model reports.
//!
//! `--sysfs DIR` reads the CPUs from a copy of an AArch64 machine's sysfs (`DIR` stands for
//! `/sys`: `DIR/devices/system/cpu/online` and each online CPU's
//! `cpuN/regs/identification/{midr_el1,revidr_el1}`), so the same decision can be replayed
//! anywhere; `--json` may follow it.
//!
//! `--bench` times `probe_cpu_kinds` (what patching at load asks: one probe per core type, no
//! sysfs read unless hybrid), `probe_online_cpus` (one probe per core type, no thread) against
//! `probe_every_cpu` (a pinned thread per online CPU, what every probe used to do) in the same
//! run and prints the median of each and their ratio.

use alt::cpu::{CapabilityList, CpuDescriptor};
use alt::policy::SystemCaps;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let mode = match words[..] {
        [] => Mode::Probe { json: false },
        ["--json"] => Mode::Probe { json: true },
        ["--each"] => Mode::Each { json: false },
        ["--each", "--json"] | ["--json", "--each"] => Mode::Each { json: true },
        ["--cpuid"] => Mode::Cpuid,
        ["--sysfs", dir] => Mode::Sysfs { dir, json: false },
        ["--sysfs", dir, "--json"] | ["--json", "--sysfs", dir] => Mode::Sysfs { dir, json: true },
        ["--bench"] => Mode::Bench { runs: 101 },
        ["--bench", n] => match n.parse() {
            Ok(runs) if runs > 0 => Mode::Bench { runs },
            _ => usage(),
        },
        _ => usage(),
    };
    let (cpus, json) = match mode {
        Mode::Sysfs { dir, json } => {
            match alt::cpu::arm64_cpus(&alt_runtime::sysfs::Sysfs::at(dir)) {
                Ok(c) => (c, json),
                Err(e) => fail(&format!("{e}")),
            }
        }
        Mode::Probe { json } => (hosted::online().unwrap_or_else(|e| fail(&e)), json),
        Mode::Each { json } => (hosted::each().unwrap_or_else(|e| fail(&e)), json),
        Mode::Cpuid => {
            hosted::cpuid();
            return;
        }
        Mode::Bench { runs } => {
            hosted::bench(runs);
            return;
        }
    };
    let sys = SystemCaps::from_cpus(&cpus).capabilities();
    if json {
        println!("{}", to_json(&cpus, sys));
        return;
    }
    for d in &cpus {
        println!("{d}");
    }
    let features = alt::CapabilitySet::new(sys.features, alt::Errata::empty());
    println!(
        "system ({} CPUs) features: {}",
        cpus.len(),
        CapabilityList(features)
    );
    if sys.errata.is_empty() {
        println!("system errata: none");
    } else {
        println!("system errata:");
        for e in alt::errata::ERRATA
            .iter()
            .filter(|e| sys.errata.contains(e.erratum))
        {
            let name = e.capability().map_or("?", |c| c.name());
            println!("  {name}: {} -- {}", e.id, e.description);
        }
    }
}

enum Mode<'a> {
    Probe { json: bool },
    Each { json: bool },
    Cpuid,
    Sysfs { dir: &'a str, json: bool },
    Bench { runs: usize },
}

fn usage() -> ! {
    eprintln!(
        "usage: cpus [--json] | --each [--json] | --cpuid | --sysfs DIR [--json] | --bench [RUNS]"
    );
    std::process::exit(2);
}

fn fail(e: &str) -> ! {
    eprintln!("cpus: {e}");
    std::process::exit(1);
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod hosted {
    use alt::cpu::CpuDescriptor;
    use std::time::Instant;

    pub fn online() -> Result<Vec<CpuDescriptor>, String> {
        alt::cpu::probe_online_cpus().map_err(|e| e.to_string())
    }

    pub fn each() -> Result<Vec<CpuDescriptor>, String> {
        alt::cpu::probe_every_cpu().map_err(|e| e.to_string())
    }

    pub fn cpuid() {
        use alt_runtime::x86_64::cpuid::{CpuidDump, NativeCpuid};
        print!("{}", CpuidDump::capture(&NativeCpuid));
    }

    fn median_ns(runs: usize, mut f: impl FnMut()) -> f64 {
        f();
        let mut t: Vec<u128> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_nanos()
            })
            .collect();
        t.sort_unstable();
        t[t.len() / 2] as f64
    }

    pub fn bench(runs: usize) {
        let cpus = online().unwrap_or_else(|e| super::fail(&e));
        let kinds = median_ns(runs, || {
            std::hint::black_box(alt::cpu::probe_cpu_kinds().unwrap());
        });
        let cheap = median_ns(runs, || {
            std::hint::black_box(alt::cpu::probe_online_cpus().unwrap());
        });
        let every = median_ns(runs, || {
            std::hint::black_box(alt::cpu::probe_every_cpu().unwrap());
        });
        let one = median_ns(runs, || {
            std::hint::black_box(alt_runtime::x86_64::cpuid::probe(
                &alt_runtime::x86_64::cpuid::NativeCpuid,
            ));
        });
        println!(
            "probing {} online CPUs, median of {runs} runs each:",
            cpus.len()
        );
        println!(
            "  probe_cpu_kinds (what patching at load asks): {:8.1} us",
            kinds / 1e3
        );
        println!(
            "  probe_online_cpus (one probe per core type): {:9.1} us",
            cheap / 1e3
        );
        println!(
            "  probe_every_cpu (a pinned thread per CPU):   {:9.1} us  ({:.1}x)",
            every / 1e3,
            every / cheap
        );
        println!(
            "  of which one CPUID probe:                    {:9.1} us",
            one / 1e3
        );
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod hosted {
    use alt::cpu::CpuDescriptor;

    const ONLY: &str = "probing this machine is implemented here for x86-64 Linux only; --sysfs DIR works anywhere";

    pub fn online() -> Result<Vec<CpuDescriptor>, String> {
        Err(ONLY.into())
    }
    pub fn each() -> Result<Vec<CpuDescriptor>, String> {
        Err(ONLY.into())
    }
    pub fn cpuid() {
        super::fail(ONLY)
    }
    pub fn bench(_: usize) {
        super::fail(ONLY)
    }
}

fn to_json(cpus: &[CpuDescriptor], sys: alt::CapabilitySet) -> String {
    use alt::cpu::CpuId;
    use alt::report::json_str;
    use std::fmt::Write;

    fn names(set: alt::CapabilitySet) -> String {
        let items: Vec<String> = set.iter().map(|c| json_str(c.name())).collect();
        format!("[{}]", items.join(","))
    }
    let f = |x| alt::CapabilitySet::new(x, alt::Errata::empty());
    let e = |x| alt::CapabilitySet::new(alt::Features::empty(), x);

    let mut out = String::from("{\"cpus\":[");
    for (i, d) in cpus.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"index\":{}", d.index);
        match d.id {
            CpuId::X86(x) => {
                let _ = write!(
                    out,
                    ",\"arch\":\"x86_64\",\"vendor\":{},\"family\":{},\"model\":{},\"stepping\":{},\"core_type\":{}",
                    json_str(x.vendor_str()),
                    x.family,
                    x.model,
                    x.stepping,
                    json_str(&x.core_type.to_string())
                );
            }
            CpuId::Arm64 { midr, revidr } => {
                let core = alt::errata::aarch64_core_name(midr).map_or("null".into(), json_str);
                let _ = write!(
                    out,
                    ",\"arch\":\"aarch64\",\"midr\":{midr},\"revidr\":{revidr},\"core\":{core}"
                );
            }
        }
        let _ = write!(
            out,
            ",\"features\":{},\"errata\":{}}}",
            names(f(d.features)),
            names(e(d.errata))
        );
    }
    let _ = write!(
        out,
        "],\"features\":{},\"errata\":{}}}",
        names(f(sys.features)),
        names(e(sys.errata))
    );
    out
}
