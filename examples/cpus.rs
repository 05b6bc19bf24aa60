//! Prints every CPU this process may run on, the system's capabilities and the errata that
//! apply.
//!
//! ```text
//! cargo run --release --example cpus            # one line per CPU, then the system set
//! cargo run --release --example cpus -- --json  # one JSON object
//! cargo run --release --example cpus -- --cpuid # this CPU's CPUID dump (text format)
//! ```
//!
//! The `--cpuid` output is the text format of `alt::x86_64::cpuid::CpuidDump`; run under
//! `qemu-x86_64 -cpu MODEL` it records what that emulated model reports.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use alt::cpu::{probe_online_cpus, CapabilityList};
    use alt::policy::SystemCaps;
    use alt::x86_64::cpuid::{CpuidDump, NativeCpuid};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Mode::Text,
        ["--json"] => Mode::Json,
        ["--cpuid"] => Mode::Cpuid,
        _ => {
            eprintln!("usage: cpus [--json | --cpuid]");
            std::process::exit(2);
        }
    };
    if mode == Mode::Cpuid {
        print!("{}", CpuidDump::capture(&NativeCpuid));
        return;
    }
    let cpus = match probe_online_cpus() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cpus: {e}");
            std::process::exit(1);
        }
    };
    let sys = SystemCaps::from_cpus(&cpus).capabilities();
    match mode {
        Mode::Json => println!("{}", json(&cpus, sys)),
        _ => {
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
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Text,
    Json,
    Cpuid,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn json(cpus: &[alt::cpu::CpuDescriptor], sys: alt::CapabilitySet) -> String {
    use alt::cpu::CpuId;
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
                let _ = write!(
                    out,
                    ",\"arch\":\"aarch64\",\"midr\":{midr},\"revidr\":{revidr}"
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

/// A JSON string literal (the runtime's report uses the same escaping).
use alt::report::json_str;

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    let _ = (Mode::Text, Mode::Json, Mode::Cpuid, json_str(""));
    eprintln!("cpus: probing every CPU is implemented for x86-64 Linux only");
}
