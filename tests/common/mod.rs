//! Helpers shared by the end-to-end tests: finding the examples cargo built, running them under
//! `qemu-x86_64 -cpu MODEL`, and checking sites with an independent decoder (iced-x86).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use iced_x86::{Decoder, DecoderOptions};

/// The example binary `name`, as `cargo test` built it beside this test binary
/// (`target/<profile>/examples/<name>`). Builds it if it is missing.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--example", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// The test kernel (`kernel/`, its own workspace), built once per test process into
/// `target/tmp/kernel`, which every test that needs it shares.
pub fn kernel() -> &'static std::path::Path {
    static KERNEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel");
        let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel");
        // Run inside kernel/ so that kernel/.cargo/config.toml (host target, static relocation
        // model) applies; flags from the outer build must not leak in.
        let out = Command::new(env!("CARGO"))
            .current_dir(&dir)
            .args(["build", "--release", "--locked", "--target-dir"])
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo build for kernel/");
        assert!(
            out.status.success(),
            "building kernel/ failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join("x86_64-unknown-linux-gnu/release/alt-test-kernel")
    })
}

/// The qemu-user binary. The README's test command installs Debian's `qemu-user` when it is
/// missing; running the tests without it fails here with that advice.
pub fn qemu() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("qemu-x86_64");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "qemu-x86_64 not found: install Debian's qemu-user (scripts/test.sh does) to run the \
         emulated CPU model tests"
    );
}

/// Runs `bin args` under `qemu-x86_64 -cpu model` with extra environment.
pub fn run_on_model(model: &str, bin: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(qemu());
    cmd.arg("-cpu").arg(model).arg(bin).args(args);
    cmd.env_remove("ALT_CLEARCPUID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run qemu-x86_64")
}

/// Runs `bin args` natively.
pub fn run_native(bin: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    cmd.env_remove("ALT_CLEARCPUID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run example")
}

/// Parses a program's standard output as one JSON object, or panics showing what it printed.
pub fn json(out: &Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({:?}); a wrong instruction choice shows as SIGILL (signal 4).\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: output is not JSON ({e}): {stdout}"))
}

/// Hex string to bytes.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Decodes `bytes` at `ip` with iced-x86 and checks they are whole, valid instructions that end
/// exactly at the end. Returns the instructions' text.
pub fn decode_whole(bytes: &[u8], ip: u64) -> Result<Vec<String>, String> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut end = ip;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Err(format!(
                "invalid instruction at {:#x} in {:02x?}",
                insn.ip(),
                bytes
            ));
        }
        end = insn.next_ip();
        out.push(format!("{insn}"));
    }
    if end != ip + bytes.len() as u64 {
        return Err(format!(
            "instructions end at {end:#x}, site ends at {:#x}",
            ip + bytes.len() as u64
        ));
    }
    Ok(out)
}
