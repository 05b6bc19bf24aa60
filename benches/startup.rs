//! What patching at load costs a process (issue 11 item 3), measured in one run:
//!
//! 1. **Start-up ratio**: this binary re-runs itself as a child that runs the quickstart's
//!    functions once, with load-time patching on and with `ALT_PATCH=off`, alternately; each
//!    child reports its own CPU time (`CLOCK_PROCESS_CPUTIME_ID`, which counts from exec, the
//!    constructor included). Printed: the medians and their ratio (target: at most 1.10).
//! 2. **Per-site cost**: generated programs with N real `#[alternative]` sites (default 1,000,
//!    10,000 and 100,000; `ALT_BENCH_SITES=1000,10000` to choose) are built with cargo, run with
//!    patching on and off, and the difference of the medians divided by N is the cost per site
//!    of everything load-time patching does (probe, plan, write, the report with its names).
//!    Printed per N, to show it is linear (target: at most 50 ns per site).
//!
//! ```text
//! cargo bench --bench startup
//! ALT_BENCH_SITES=1000,10000 ALT_BENCH_RUNS=31 cargo bench --bench startup
//! ```
//!
//! The 100,000-site program takes a few minutes to compile.

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code, unused_imports)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

const CHILD: &str = "ALT_BENCH_CHILD";

fn cpu_time_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Runs `exe` (with `env`) `runs` times with patching on and off, alternately; each run prints
/// its CPU time in ns as its last line. Returns the medians (on, off).
fn on_off(exe: &Path, env: &[(&str, &str)], runs: usize) -> (u64, u64) {
    let once = |patch: &str| -> u64 {
        let out = Command::new(exe)
            .envs(env.iter().copied())
            .env("ALT_PATCH", patch)
            .output()
            .expect("run the child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no CPU time in {text:?}"))
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        on.push(once("on"));
        off.push(once("off"));
    }
    (median(on), median(off))
}

fn runs() -> usize {
    std::env::var("ALT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(61)
}

/// A program with `n` sites: `n / 100` functions, each called at 100 places.
fn generate(dir: &Path, n: usize) {
    let functions = (n / 100).max(1);
    let per = n / functions;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"alt-bench-sites-{n}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n[workspace]\n[dependencies]\n\
             alt = {{ package = \"alternatives\", path = {:?} }}\nlibc = \"0.2\"\n\
             [profile.release]\nopt-level = 1\ndebug = 0\n",
            workspace.display().to_string()
        ),
    )
    .unwrap();
    let mut src = String::from("use alt::alternative;\n");
    for i in 0..functions {
        src.push_str(&format!(
            "#[alternative(popcnt => unsafe inline(\"popcnt {{ret}}, {{x}}\"))]\n\
             pub fn f{i}(x: u64) -> u64 {{ x.count_ones() as u64 ^ {i} }}\n"
        ));
    }
    for i in 0..functions {
        let calls: Vec<String> = (0..per)
            .map(|k| format!("f{i}(x.wrapping_add({k}))"))
            .collect();
        src.push_str(&format!(
            "#[inline(never)] pub fn c{i}(x: u64) -> u64 {{ {} }}\n",
            calls.join(" ^ ")
        ));
    }
    src.push_str("fn call(i: usize, x: u64) -> u64 { match i {\n");
    for i in 0..functions {
        src.push_str(&format!("    {i} => c{i}(x),\n"));
    }
    src.push_str("    _ => 0 } }\n");
    src.push_str(&format!(
        "fn main() {{\n    let mut s = 0u64;\n    for i in 0..{functions} {{ s ^= call(i, std::hint::black_box(1)); }}\n\
         \x20   std::hint::black_box(s);\n\
         \x20   let mut t = libc::timespec {{ tv_sec: 0, tv_nsec: 0 }};\n\
         \x20   // SAFETY: clock_gettime writes the timespec it is given.\n\
         \x20   unsafe {{ libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) }};\n\
         \x20   println!(\"{{}}\", t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);\n}}\n"
    ));
    let path = dir.join("src/main.rs");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(&src) {
        std::fs::write(path, src).unwrap();
    }
}

fn build(dir: &Path, target: &Path) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo");
    assert!(status.success(), "building {}", dir.display());
    let name = dir.file_name().unwrap().to_string_lossy().replace('_', "-");
    target.join("release").join(name)
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        // The child: the quickstart's work once, then its own CPU time.
        std::hint::black_box(quickstart::run());
        println!("{}", cpu_time_ns());
        return;
    }
    let runs = runs();
    let me = std::env::current_exe().unwrap();
    let (on, off) = on_off(&me, &[(CHILD, "1")], runs);
    println!(
        "start-up (quickstart's sites, median of {runs}): {:.1} us patched at load, {:.1} us \
         with ALT_PATCH=off: ratio {:.3} (target <= 1.10)",
        on as f64 / 1e3,
        off as f64 / 1e3,
        on as f64 / off as f64
    );

    let sizes: Vec<usize> = std::env::var("ALT_BENCH_SITES")
        .unwrap_or_else(|_| String::from("1000,10000,100000"))
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-sites-target");
    println!(
        "per-site cost of load-time patching (median of {} runs each):",
        runs.min(21)
    );
    for n in sizes {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("alt_bench_sites_{n}"));
        generate(&dir, n);
        let exe = build(&dir, &target);
        let (on, off) = on_off(&exe, &[], runs.min(21));
        let per = (on.saturating_sub(off)) as f64 / n as f64;
        println!(
            "  {n:>7} sites: {:.2} ms patched, {:.2} ms off: {per:.0} ns per site (target <= 50)",
            on as f64 / 1e6,
            off as f64 / 1e6
        );
    }
}
