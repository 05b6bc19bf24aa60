//! Every example, test and bench binary of the workspace, and the test kernel, passes
//! `alt-tablegen verify`: valid tables, and every variant of every site keeps what its site
//! declares to the compiler. (`effects_mistakes` is the one binary built to fail it.)

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use alt_tablegen::effects::check;
use alt_tablegen::inspect::{verify, Tables};
use alt_tablegen::Input;
use common::kernel;

/// Binaries built to fail.
const EXPECTED_TO_FAIL: [&str; 1] = ["test:effects_mistakes"];

/// The workspace's executables, as cargo reports them (built now if missing).
fn workspace_binaries() -> Vec<(String, PathBuf)> {
    let exe = std::env::current_exe().expect("test binary");
    let release = exe
        .parent()
        .and_then(|d| d.parent())
        .is_some_and(|p| p.file_name().is_some_and(|n| n == "release"));
    let mut cmd = Command::new(env!("CARGO"));
    // `cargo build`, not `cargo test --no-run`: that would build the examples in test mode,
    // without their `main` (and so without their sites).
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--workspace",
        "--all-targets",
        "--locked",
        "--message-format=json",
    ]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build --all-targets");
    assert!(
        out.status.success(),
        "cargo build --all-targets failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(path) = v["executable"].as_str() else {
            continue;
        };
        let mut kind = v["target"]["kind"][0].as_str().unwrap_or("?").to_string();
        if v["profile"]["test"] == true && ["lib", "bin", "proc-macro"].contains(&kind.as_str()) {
            // A library's or a binary's unit tests.
            kind.push_str("-unittests");
        }
        let name = format!("{kind}:{}", v["target"]["name"].as_str().unwrap_or("?"));
        bins.push((name, PathBuf::from(path)));
    }
    bins.sort();
    bins.dedup();
    bins
}

/// Problems of one binary, as lines; and the number of sites whose variants were checked.
fn verify_binary(path: &Path) -> (Vec<String>, usize) {
    let input = Input::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = Vec::new();
    let mut checked = 0;
    for obj in input.objects().expect("objects") {
        let tables = Tables::read(&obj).expect("tables");
        for p in verify(&obj, &tables) {
            lines.push(format!("{}: {p}", path.display()));
        }
        let effects = check(&obj, &tables);
        checked += effects.sites_checked;
        for p in effects.problems {
            lines.push(format!("{}: {p}", path.display()));
        }
    }
    (lines, checked)
}

#[test]
fn every_workspace_binary_and_the_kernel_pass_verify() {
    let bins = workspace_binaries();
    let names: Vec<&str> = bins.iter().map(|(n, _)| n.as_str()).collect();
    for must in [
        "example:quickstart",
        "example:paravirt",
        "example:cpus",
        "bin:pv-c",
        "test:registers",
        "test:pv_c",
        "bench:alternative",
        "bench:paravirt",
        "bin:alt-tablegen",
    ] {
        assert!(names.contains(&must), "{must} not among {names:?}");
    }
    let mut problems = Vec::new();
    let mut sites = Vec::new();
    for (name, path) in &bins {
        if EXPECTED_TO_FAIL.contains(&name.as_str()) {
            continue;
        }
        let (p, n) = verify_binary(path);
        problems.extend(p);
        sites.push((name.clone(), n));
    }
    let kernel = kernel();
    let (p, n) = verify_binary(kernel);
    problems.extend(p);
    sites.push(("kernel:alt-test-kernel".into(), n));
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The check saw the sites it is about.
    let count = |name: &str| sites.iter().find(|(n, _)| n == name).map_or(0, |(_, n)| *n);
    assert!(count("example:quickstart") >= 7, "{sites:?}");
    assert!(count("example:paravirt") >= 10, "{sites:?}");
    assert!(count("bin:pv-c") >= 9, "{sites:?}");
    assert!(count("test:registers") >= 2, "{sites:?}");
    assert!(count("bench:alternative") >= 1, "{sites:?}");
    assert!(count("kernel:alt-test-kernel") >= 10, "{sites:?}");
}
