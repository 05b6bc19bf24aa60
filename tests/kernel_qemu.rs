//! The test kernel (`kernel/`) booted under `qemu-system-x86_64 -cpu MODEL`: boot-time patching
//! of real kernel text, through a W^X alias mapping, judged per CPU model.
//!
//! The kernel is built once (release, into `target/tmp/kernel`), then booted on several models.
//! Each boot must exit through `isa-debug-exit` with the success status, each site's decision
//! must match what the model's CPUID offers (expectations from QEMU's model definitions, not
//! from our probe), and the result checksum must be the same on every model (the kernel also
//! checks that patching did not change it). `alt.clearcpuid=` on the kernel command line must
//! keep the cleared feature's sites at their default, and a direct write to the text must fault.
//! With `-smp 3` a third CPU starts after patching and the registry accepts it (it then computes
//! the same checksum) or, with a test knob that removes a patched-in feature from its descriptor,
//! refuses it with the exact `LateCpuError` text and parks it. The paravirt table's sites must
//! take the exact decisions of the backend named by `alt.pv=`, with equal checksums.
//!
//! `qemu-system-x86_64` comes from Debian's `qemu-system-x86`; `scripts/test.sh` installs it.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kernel;

/// qemu exits with `(v << 1) | 1` for a value `v` written to isa-debug-exit.
const EXIT_SUCCESS: i32 = (0x10 << 1) | 1;
const EXIT_FAILURE: i32 = (0x11 << 1) | 1;
const EXIT_EXCEPTION: i32 = (0x12 << 1) | 1;
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn qemu_system() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("qemu-system-x86_64");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "qemu-system-x86_64 not found: install Debian's qemu-system-x86 (scripts/test.sh does) \
         to boot the test kernel"
    );
}

struct Boot {
    status: Option<i32>,
    serial: String,
    what: String,
}

impl Boot {
    fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.status,
            Some(code),
            "{}: unexpected exit status (33: ok, 35: a check failed, 37: CPU exception, \
             None: killed after {BOOT_TIMEOUT:?})\nserial output:\n{}",
            self.what,
            self.serial
        );
    }

    /// `(function, decision, capability)` of every `alt-site` line.
    fn sites(&self) -> Vec<(String, String, String)> {
        self.serial
            .lines()
            .filter_map(|l| l.strip_prefix("alt-site "))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(w.len(), 3, "{}: bad site line {l:?}", self.what);
                (w[0].to_string(), w[1].to_string(), w[2].to_string())
            })
            .collect()
    }

    fn checksum(&self) -> u64 {
        let line = self
            .serial
            .lines()
            .find_map(|l| l.strip_prefix("checksum: 0x"))
            .unwrap_or_else(|| panic!("{}: no checksum line\n{}", self.what, self.serial));
        u64::from_str_radix(line.trim(), 16).expect("hex checksum")
    }
}

/// Boots the kernel on one CPU of `model` with a command line.
fn boot(model: &str, append: &str) -> Boot {
    boot_smp(model, 1, append)
}

/// Boots the kernel on `cpus` CPUs of `model`; kills qemu after [`BOOT_TIMEOUT`].
fn boot_smp(model: &str, cpus: u32, append: &str) -> Boot {
    let what = format!("-cpu {model} -smp {cpus} -append {append:?}");
    let mut child = Command::new(qemu_system())
        .args(["-machine", "pc", "-cpu", model, "-m", "64M", "-smp"])
        .arg(cpus.to_string())
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        .arg("-kernel")
        .arg(kernel())
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for qemu") {
            break st.code();
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let serial = reader.join().expect("serial reader").replace('\r', "");
    Boot {
        status,
        serial,
        what,
    }
}

/// What a model offers, for the kernel's sites.
struct Model {
    name: &'static str,
    popcnt: bool,
    lzcnt: bool,
    bmi1: bool,
    erms: bool,
    avx2: bool,
    /// `lfence` serialises dispatch (Intel models; qemu64 reports an AMD vendor).
    lfence: bool,
}

const MODELS: [Model; 3] = [
    Model {
        name: "qemu64",
        popcnt: false,
        lzcnt: false,
        bmi1: false,
        erms: false,
        avx2: false,
        lfence: false,
    },
    Model {
        name: "Nehalem",
        popcnt: true,
        lzcnt: false,
        bmi1: false,
        erms: false,
        avx2: false,
        lfence: true,
    },
    Model {
        name: "Haswell",
        popcnt: true,
        lzcnt: true,
        bmi1: true,
        erms: true,
        avx2: true,
        lfence: true,
    },
];

/// The `(decision, capability)` expected for a site of `function` on `m`.
fn expected(function: &str, m: &Model) -> (&'static str, &'static str) {
    let on = |b: bool, decision: &'static str, cap: &'static str| {
        if b {
            (decision, cap)
        } else {
            ("default", "-")
        }
    };
    // The demo crate's functions and fence (`alt_demo::NAME`, `alt_demo:LINE`), the kernel's
    // own `has!` branches (`alt_test_kernel::work:LINE:has!(cap)`).
    let name = function
        .strip_prefix("alt_demo")
        .or_else(|| function.strip_prefix("alt_test_kernel::work"))
        .unwrap_or_else(|| panic!("unexpected site function {function}"));
    match name {
        "::popcount" => on(m.popcnt, "inline", "popcnt"),
        "::leading_zeros" => on(m.lzcnt, "inline", "lzcnt"),
        "::trailing_zeros" => on(m.bmi1, "inline", "bmi1"),
        "::copy_bytes" => on(m.erms, "inline", "erms"),
        "::sum_bytes" => on(m.avx2, "direct_call", "avx2"),
        // `alt::has!` branches, named `:LINE:has!(cap)`: a feature's entry holds where the
        // model has it; an erratum's (`!erratum_amd_div0`) wherever the model lacks it, which
        // is every model (the AMD DIV0 erratum is Zen 1's).
        f if f.contains(":has!(") => match f.rsplit(":has!(").next().unwrap() {
            "popcnt)" => on(m.popcnt, "inline", "popcnt"),
            "lzcnt)" => on(m.lzcnt, "inline", "lzcnt"),
            "erratum_amd_div0)" => ("inline", "erratum_amd_div0"),
            other => panic!("unexpected has! site {other}"),
        },
        // The bare `alt::asm::alternative!` fence, named by its line.
        f if f.starts_with(':') => on(m.lfence, "inline", "lfence_serializing"),
        other => panic!("unexpected site function {other}"),
    }
}

/// Checks a successful boot's decisions against the model; returns its checksum.
fn check_model(b: &Boot, m: &Model) -> u64 {
    b.assert_exit(EXIT_SUCCESS);
    assert!(b.serial.contains("alt test kernel: ok"), "{}", b.serial);
    assert!(
        b.serial
            .contains("w^x: text stayed read-only, alias window empty"),
        "{}: {}",
        b.what,
        b.serial
    );
    let sites = b.sites();
    for f in [
        "::popcount",
        "::leading_zeros",
        "::trailing_zeros",
        "::copy_bytes",
        "::sum_bytes",
    ] {
        assert!(
            sites.iter().any(|(name, ..)| name.ends_with(f)),
            "{}: no site of {f}",
            b.what
        );
    }
    assert!(
        sites.iter().any(|(_, _, c)| c == "lfence_serializing") || !m.lfence,
        "{}: no fence site patched",
        b.what
    );
    for (function, decision, cap) in &sites {
        assert_eq!(
            (decision.as_str(), cap.as_str()),
            expected(function, m),
            "{function} on {}\n{}",
            m.name,
            b.serial
        );
    }
    for branch in [":has!(popcnt)", ":has!(lzcnt)", ":has!(erratum_amd_div0)"] {
        assert!(
            sites.iter().any(|(name, ..)| name.ends_with(branch)),
            "{}: no site of {branch}",
            b.what
        );
    }
    assert_eq!(lines_with(b, "has before patching: "), [UNPATCHED_BRANCHES]);
    assert_eq!(
        lines_with(b, "has: "),
        [format!(
            "has: popcnt={} lzcnt={} erratum_amd_div0=false count={} divide=plain",
            m.popcnt,
            m.lzcnt,
            if m.popcnt { "popcnt" } else { "portable" }
        )],
        "{}",
        b.what
    );
    b.checksum()
}

/// The kernel's `alt::has!` branches before patching: every feature false, the erratum true
/// (its workaround applied until the system is known not to need it).
const UNPATCHED_BRANCHES: &str = "has before patching: popcnt=false lzcnt=false \
     erratum_amd_div0=true count=portable divide=workaround";

#[test]
fn every_model_patches_what_its_cpuid_offers_with_the_same_results() {
    let mut checksums = Vec::new();
    for m in &MODELS {
        let b = boot(m.name, "");
        checksums.push((m.name, check_model(&b, m)));
    }
    let first = checksums[0].1;
    assert!(
        checksums.iter().all(|&(_, c)| c == first),
        "checksums differ between models: {checksums:x?}"
    );
}

#[test]
fn clearcpuid_on_the_command_line_keeps_the_default() {
    let b = boot("Haswell", "alt.clearcpuid=popcnt");
    b.assert_exit(EXIT_SUCCESS);
    let sites = b.sites();
    let of = |suffix: &str| -> Vec<(String, String)> {
        sites
            .iter()
            .filter(|(f, ..)| f.ends_with(suffix))
            .map(|(_, d, c)| (d.clone(), c.clone()))
            .collect()
    };
    let popcount = of("::popcount");
    assert!(!popcount.is_empty(), "no popcount site\n{}", b.serial);
    for s in &popcount {
        assert_eq!(s, &("default".into(), "-".into()), "{}", b.serial);
    }
    // Only the cleared feature is affected.
    for s in of("::leading_zeros") {
        assert_eq!(s, ("inline".into(), "lzcnt".into()), "{}", b.serial);
    }
    let caps = b
        .serial
        .lines()
        .find_map(|l| l.strip_prefix("capabilities: "))
        .expect("capabilities line");
    assert!(
        !caps.split_whitespace().any(|c| c == "popcnt"),
        "popcnt still listed: {caps}"
    );
    let reference = boot("qemu64", "");
    reference.assert_exit(EXIT_SUCCESS);
    assert_eq!(b.checksum(), reference.checksum());
    // The has!(popcnt) branches stay false; lzcnt's is patched.
    assert_eq!(
        lines_with(&b, "has: "),
        ["has: popcnt=false lzcnt=true erratum_amd_div0=false count=portable divide=plain"]
    );
}

#[test]
fn an_erratum_a_cpu_has_keeps_its_workaround_branch() {
    // No qemu model has the AMD DIV0 erratum; the knob patches as if a CPU had it.
    let haswell = &MODELS[2];
    let b = boot(haswell.name, "alt.test=erratum=erratum_amd_div0");
    b.assert_exit(EXIT_SUCCESS);
    let mut seen = 0;
    for (function, decision, cap) in b.sites() {
        let want = if function.ends_with(":has!(erratum_amd_div0)") {
            seen += 1;
            ("default", "-")
        } else {
            expected(&function, haswell)
        };
        assert_eq!(
            (decision.as_str(), cap.as_str()),
            want,
            "{function}\n{}",
            b.serial
        );
    }
    assert!(seen >= 1, "no erratum branch\n{}", b.serial);
    assert_eq!(
        lines_with(&b, "has before patching: "),
        [UNPATCHED_BRANCHES]
    );
    assert_eq!(
        lines_with(&b, "has: "),
        ["has: popcnt=true lzcnt=true erratum_amd_div0=true count=popcnt divide=workaround"]
    );
    let reference = boot("qemu64", "");
    assert_eq!(b.checksum(), reference.checksum());
    // A feature is refused by the knob: the CPUs lack it, and using it would fault.
    let bad = boot(haswell.name, "alt.test=erratum=avx512f");
    bad.assert_exit(EXIT_FAILURE);
    assert!(
        bad.serial
            .contains("error: alt.test=erratum=: \"avx512f\" is not an erratum"),
        "{}",
        bad.serial
    );
}

#[test]
fn a_direct_write_to_the_text_faults() {
    let b = boot("Haswell", "alt.test=write-text");
    b.assert_exit(EXIT_EXCEPTION);
    let target = b
        .serial
        .lines()
        .find_map(|l| l.strip_prefix("writing to the text at "))
        .and_then(|l| l.split_whitespace().next())
        .map(|a| a.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("no write announced\n{}", b.serial));
    // Error code 0x3: the page was present and the access a write (a protection violation).
    let fault = "exception 14 (page fault) error 0x3 ";
    let line = b
        .serial
        .lines()
        .find(|l| l.starts_with(fault))
        .unwrap_or_else(|| panic!("no write-protection page fault\n{}", b.serial));
    assert!(
        line.ends_with(&format!("cr2 {target}")),
        "fault at another address: {line} (expected cr2 {target})"
    );
}

#[test]
fn two_cpus_report_then_one_writes_while_the_other_waits_and_serialises() {
    let haswell = &MODELS[2];
    let b = boot_smp(haswell.name, 2, "");
    let checksum = check_model(&b, haswell);
    assert!(b.serial.contains("cpus: 2 "), "{}", b.serial);
    for cpu in ["cpu0: GenuineIntel", "cpu1: GenuineIntel"] {
        assert!(
            b.serial.lines().any(|l| l.starts_with(cpu)),
            "no descriptor {cpu}\n{}",
            b.serial
        );
    }
    assert!(
        b.serial.contains(
            "rendezvous: 1 other CPU(s) waited while the text was written, then serialised"
        ),
        "{}",
        b.serial
    );
    let sum = format!("{checksum:#018x}");
    assert!(
        b.serial.contains(&format!(
            "cpu1: checksum {sum} before patching, {sum} after"
        )),
        "the second CPU's results differ\n{}",
        b.serial
    );
}

/// The serial lines that start with `prefix`.
fn lines_with<'a>(b: &'a Boot, prefix: &str) -> Vec<&'a str> {
    b.serial.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn a_cpu_started_after_patching_is_checked_then_runs_the_patched_text() {
    let haswell = &MODELS[2];
    let b = boot_smp(haswell.name, 3, "");
    let checksum = check_model(&b, haswell);
    assert!(
        b.serial
            .contains("cpus: 3 (from qemu's fw_cfg), 2 before patching, 1 after"),
        "{}",
        b.serial
    );
    // Only CPU 1 waited at the rendezvous: CPU 2 was not started yet.
    assert!(
        b.serial.contains(
            "rendezvous: 1 other CPU(s) waited while the text was written, then serialised"
        ),
        "{}",
        b.serial
    );
    assert_eq!(
        lines_with(&b, "late cpu2: ")[1..],
        [
            "late cpu2: accepted (must-match policy)",
            &*format!(
                "late cpu2: checksum {checksum:#018x} on the patched text (workload runs: 1)"
            ),
        ],
        "{}",
        b.serial
    );
    assert_eq!(lines_with(&b, "registry: "), ["registry: cpus 0 1 2"]);
}

#[test]
fn a_late_cpu_lacking_a_patched_in_feature_is_refused_and_parked() {
    let haswell = &MODELS[2];
    let b = boot_smp(haswell.name, 3, "alt.test=late-cpu-lacks=popcnt");
    // The boot goes on without the refused CPU: every other check still holds.
    let checksum = check_model(&b, haswell);
    let late = lines_with(&b, "late cpu2: ");
    assert!(
        late[0].starts_with("late cpu2: GenuineIntel") && !late[0].contains(" popcnt "),
        "the late CPU's descriptor should lack popcnt: {}",
        late[0]
    );
    assert_eq!(
        late[1..],
        [
            "late cpu2: refused: CPU 2 refused: it lacks feature popcnt, which the system uses",
            "late cpu2: parked, ran no patched code (workload runs: 0)",
        ],
        "{}",
        b.serial
    );
    assert_eq!(lines_with(&b, "registry: "), ["registry: cpus 0 1"]);
    assert!(b.serial.contains(&format!("checksum: {checksum:#018x}")));
}

#[test]
fn a_late_cpu_needing_an_unapplied_erratum_workaround_is_refused_unless_optional_and_unused() {
    let haswell = &MODELS[2];
    let knob = "alt.test=late-cpu-needs=erratum_amd_div0";
    let b = boot_smp(haswell.name, 3, knob);
    b.assert_exit(EXIT_SUCCESS);
    assert_eq!(
        lines_with(&b, "late cpu2: ")[1..],
        [
            "late cpu2: refused: CPU 2 refused: it needs the workaround for erratum_amd_div0, \
             which was not applied",
            "late cpu2: parked, ran no patched code (workload runs: 0)",
        ],
        "{}",
        b.serial
    );
    // The kernel's `has!(erratum_amd_div0)` branches are keyed by it (and patched to skip the
    // workaround): the optional policy refuses the CPU too.
    let b = boot_smp(
        haswell.name,
        3,
        &format!("{knob} alt.late-cpu-policy=optional"),
    );
    b.assert_exit(EXIT_SUCCESS);
    assert_eq!(
        lines_with(&b, "late cpu2: ")[1..],
        [
            "late cpu2: refused: CPU 2 refused: it needs the workaround for erratum_amd_div0, \
             which was not applied",
            "late cpu2: parked, ran no patched code (workload runs: 0)",
        ],
        "{}",
        b.serial
    );
    // No site is keyed by Zenbleed: under the optional policy it does not matter.
    let b = boot_smp(
        haswell.name,
        3,
        "alt.test=late-cpu-needs=erratum_zenbleed alt.late-cpu-policy=optional",
    );
    let checksum = check_model(&b, haswell);
    assert_eq!(
        lines_with(&b, "late cpu2: ")[1..],
        [
            "late cpu2: accepted (optional policy)",
            &*format!(
                "late cpu2: checksum {checksum:#018x} on the patched text (workload runs: 1)"
            ),
        ],
        "{}",
        b.serial
    );
}

/// `(op, decision)` of every `pv-site PV_OPS <op> <decision>` line, sorted (so that the
/// comparison does not depend on where the compiler placed each site).
fn pv_sites(b: &Boot) -> Vec<(String, String)> {
    let mut sites: Vec<(String, String)> = b
        .serial
        .lines()
        .filter_map(|l| l.strip_prefix("pv-site "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 3, "{}: bad pv-site line {l:?}", b.what);
            assert_eq!(w[0], "PV_OPS", "{}: {l:?}", b.what);
            (w[1].to_string(), w[2].to_string())
        })
        .collect();
    sites.sort();
    sites
}

/// The `after:` bytes the report prints for every site of `PV_OPS.<op>`.
fn pv_after(b: &Boot, op: &str) -> Vec<String> {
    let label = format!(" PV_OPS.{op} ");
    let lines: Vec<&str> = b.serial.lines().collect();
    let found: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("site 0x") && l.contains(&label))
        .map(|(i, _)| {
            lines[i + 2]
                .trim()
                .strip_prefix("after:")
                .unwrap_or_else(|| panic!("no after: line for {op}\n{}", b.serial))
                .trim()
                .to_string()
        })
        .collect();
    assert!(!found.is_empty(), "no report line for {op}\n{}", b.serial);
    found
}

#[test]
fn paravirt_sites_are_patched_at_boot_for_the_backend_on_the_command_line() {
    let haswell = &MODELS[2];
    let native = boot_smp(haswell.name, 3, "alt.pv=native");
    let alt = boot_smp(haswell.name, 3, "alt.pv=alt");
    let alt_qemu64 = boot("qemu64", "alt.pv=alt");
    let sum = check_model(&native, haswell);
    assert_eq!(
        check_model(&alt, haswell),
        sum,
        "checksum differs by backend"
    );
    assert_eq!(check_model(&alt_qemu64, &MODELS[0]), sum);
    for b in [&native, &alt] {
        // Unpatched, patched, on the other CPU and on the late CPU: the same results.
        assert!(
            b.serial
                .contains(&format!("checksum before patching: {sum:#018x}")),
            "{}",
            b.serial
        );
        assert!(
            b.serial.contains(&format!(
                "late cpu2: checksum {sum:#018x} on the patched text"
            )),
            "{}",
            b.serial
        );
    }

    let expect = |decisions: [&str; 5]| -> Vec<(String, String)> {
        // The workload's sites: one per call of each operation.
        let ops = [
            "irq_save",
            "cycles",
            "io_delay",
            "cycles",
            "irq_restore",
            "irq_save",
            "halt",
        ];
        let index = |op: &str| match op {
            "irq_save" => 0,
            "irq_restore" => 1,
            "cycles" => 2,
            "io_delay" => 3,
            _ => 4,
        };
        let mut sites: Vec<(String, String)> = ops
            .iter()
            .map(|op| (op.to_string(), decisions[index(op)].to_string()))
            .collect();
        sites.sort();
        sites
    };
    // irq_save, irq_restore, cycles, io_delay, halt
    assert_eq!(
        pv_sites(&native),
        expect(["inline", "inline", "inline", "inline", "direct_call"]),
        "{}",
        native.serial
    );
    let alt_decisions = expect(["direct_call", "direct_call", "direct_call", "nop", "trap"]);
    assert_eq!(pv_sites(&alt), alt_decisions, "{}", alt.serial);
    assert_eq!(
        pv_sites(&alt_qemu64),
        alt_decisions,
        "{}",
        alt_qemu64.serial
    );

    // What the sites hold: pushfq; pop rax / push rdi; popfq / rdtsc... inline natively; a nop
    // and a trap for the alt backend's io_delay and halt.
    assert_eq!(pv_after(&native, "irq_save"), ["9c 58 0f 1f 40 00"; 2]);
    assert_eq!(pv_after(&native, "irq_restore"), ["57 9d 0f 1f 40 00"]);
    assert_eq!(
        pv_after(&native, "cycles"),
        ["0f 31 48 c1 e2 20 48 09 d0"; 2]
    );
    assert_eq!(pv_after(&native, "io_delay"), ["e6 80 0f 1f 40 00"]);
    assert_eq!(pv_after(&alt, "io_delay"), ["66 0f 1f 44 00 00"]);
    assert_eq!(pv_after(&alt, "halt"), ["0f 0b 0f 1f 40 00"]);
    // A direct call ends where the indirect call ended (offset 6): a one-byte NOP first, so
    // a CPU inside the operation while the site changes returns to a whole instruction.
    for s in pv_after(&alt, "irq_save") {
        assert!(s.starts_with("90 e8 "), "{s}");
    }

    // The alt backend's functions ran after patching, on three CPUs, 16 rounds each: 3 flag
    // operations and 2 cycle reads per round; and once in the module loaded after boot: 2 flag
    // operations and 2 cycle reads. The native backend never calls them.
    assert!(
        native
            .serial
            .contains("pv counts: 0 flag operations, 0 cycle reads through the alt backend"),
        "{}",
        native.serial
    );
    assert!(
        alt.serial
            .contains("pv counts: 146 flag operations, 98 cycle reads through the alt backend"),
        "{}",
        alt.serial
    );
}

/// The `module alt-site` lines: `(offset, decision, capability, keyed by)`.
fn module_sites(b: &Boot) -> Vec<(String, String, String, String)> {
    b.serial
        .lines()
        .filter_map(|l| l.strip_prefix("module alt-site "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 6, "{}: bad module site line {l:?}", b.what);
            let key = w[5].trim_end_matches(')');
            (w[0].into(), w[1].into(), w[2].into(), key.into())
        })
        .collect()
}

/// `module: loaded at A, variants V, called C, pv P`: `(variants, called, pv)`.
fn module_results(b: &Boot) -> (u64, u64, u64) {
    let line = b
        .serial
        .lines()
        .find(|l| l.starts_with("module: loaded at "))
        .unwrap_or_else(|| panic!("{}: no module line\n{}", b.what, b.serial));
    let field = |name: &str| -> u64 {
        let v = line
            .split(", ")
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
            .trim();
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => v.parse().unwrap(),
        }
    };
    (field("variants "), field("called "), field("pv "))
}

#[test]
fn a_module_loaded_after_boot_is_patched_with_the_boot_decisions() {
    // (model, command line, POPCNT decided at boot)
    for (model, append, popcnt) in [
        ("qemu64", "", false),
        ("Nehalem", "", true),
        ("Haswell", "", true),
        ("Haswell", "alt.clearcpuid=popcnt", false),
        ("Haswell", "alt.pv=alt", true),
    ] {
        let b = boot(model, append);
        b.assert_exit(EXIT_SUCCESS);
        let sites = module_sites(&b);
        let got: Vec<(&str, &str, &str)> = sites
            .iter()
            .map(|(_, d, c, k)| (d.as_str(), c.as_str(), k.as_str()))
            .collect();
        // The module's four sites: POPCNT inline, AVX-512F (no tested model has it: the
        // default stays, as for any capability the system lacks), !POPCNT, and a direct call
        // where POPCNT holds.
        let want: Vec<(&str, &str, &str)> = if popcnt {
            vec![
                ("inline", "popcnt", "popcnt"),
                ("default", "-", "avx512f"),
                ("default", "-", "popcnt"),
                ("direct_call", "popcnt", "popcnt"),
            ]
        } else {
            vec![
                ("default", "-", "popcnt"),
                ("default", "-", "avx512f"),
                ("inline", "popcnt", "popcnt"),
                ("default", "-", "popcnt"),
            ]
        };
        assert_eq!(got, want, "{}\n{}", b.what, b.serial);
        // What the module's code computed on the patched text: which variants ran, the direct
        // call, and the paravirt operations (IF clear, bit 1 set, the counter going forward).
        let (variants, called, pv) = module_results(&b);
        assert_eq!(variants, if popcnt { 0b001 } else { 0b100 }, "{}", b.what);
        assert_eq!(called, if popcnt { 7 } else { 0 }, "{}", b.what);
        assert_eq!(pv, 0x1_0002, "{}", b.what);
        // Its calls through the kernel's PV_OPS, for the boot backend.
        let pv_sites: Vec<&str> = b
            .serial
            .lines()
            .filter_map(|l| l.strip_prefix("module pv-site PV_OPS "))
            .collect();
        let want_pv: &[&str] = if append.contains("alt.pv=alt") {
            &[
                "irq_save direct_call",
                "cycles direct_call",
                "cycles direct_call",
                "irq_restore direct_call",
            ]
        } else {
            &[
                "irq_save inline",
                "cycles direct_call",
                "cycles direct_call",
                "irq_restore inline",
            ]
        };
        assert_eq!(pv_sites, want_pv, "{}\n{}", b.what, b.serial);
    }
}
