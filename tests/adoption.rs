//! Adoption as users do it, with nobody calling `patch_self`: the crates under
//! `tests/fixtures/adoption/` (their own workspace, path dependencies on this one) are built
//! with cargo, offline, and run.
//!
//! - `lib`: a library with `#[alternative]` functions and nothing else; its own `cargo test`
//!   (default harness, tests on threads) finds its sites patched, in the report and in the text.
//! - `app`: a binary whose thread starts before the runtime's constructor (so its sites are
//!   patched at load while that thread calls them) and which starts a pool of workers at the top
//!   of `main`, then reverts and re-patches every site (also for fewer capabilities) while they
//!   all call the sites and check every result.
//! - `cdylib`: loaded with `dlopen` by a C host that already runs a thread: patched before
//!   `dlopen` returns, by its own constructor, with the host's thread stopped meanwhile; loaded
//!   into this test process too, where two copies of the runtime (this binary's and the
//!   library's) each pick their own signal and each still stops the other threads.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adoption")
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("adoption")
}

/// `cargo SUBCOMMAND` on the fixtures' workspace, offline and locked, in its own target
/// directory (shared by every test here and kept between runs).
fn cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg(subcommand)
        .arg("--manifest-path")
        .arg(fixtures().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir())
        .args(["--offline", "--locked"]);
    // Only what a user's build would see: not this build's flags.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Builds every fixture crate once.
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = cargo("build")
            .args(["--workspace", "--all-targets"])
            .output()
            .expect("run cargo build on the fixtures");
        assert!(
            out.status.success(),
            "building tests/fixtures/adoption failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir().join("debug")
    })
}

fn parse(stdout: &[u8], what: &str) -> Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

fn popcnt() -> bool {
    std::is_x86_feature_detected!("popcnt")
}

#[test]
fn a_library_finds_its_sites_patched_in_its_own_cargo_test() {
    built();
    let out = cargo("test")
        .args(["-p", "alt-adoption-lib"])
        .output()
        .expect("run cargo test on the library");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the library's own cargo test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: u32 = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u32>().ok())
        .sum();
    // 3 unit tests, 2 integration tests (report, bytes, results; threads calling the sites).
    assert_eq!(passed, 5, "{stdout}");
}

#[test]
fn a_binary_that_starts_threads_first_is_patched_and_repatched_under_them() {
    let out = Command::new(built().join("alt-adoption-app"))
        .env_remove("ALT_PATCH")
        .env_remove("ALT_CLEARCPUID")
        .output()
        .expect("run the app");
    let v = parse(&out.stdout, "the app");
    assert!(
        out.status.success(),
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["patched"], true, "{v}");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    // At load, the thread from the earlier constructor was running: it was stopped.
    assert_eq!(v["load_stop"]["alone"], false, "{v}");
    assert!(v["load_stop"]["threads"].as_u64() >= Some(1), "{v}");
    assert!(v["early_calls"].as_u64() > Some(0), "{v}");
    assert!(
        v["last_stop"]["threads"].as_u64() >= Some(4),
        "the early thread and 3 workers: {v}"
    );
    let want = if popcnt() { "inline" } else { "default" };
    let decisions = v["popcount_decisions"].as_array().expect("decisions");
    assert!(
        !decisions.is_empty() && decisions.iter().all(|d| d == want),
        "{v}"
    );
    // Re-patched without POPCNT: the defaults.
    let fewer = v["fewer_decisions"].as_array().expect("fewer");
    assert!(
        !fewer.is_empty() && fewer.iter().all(|d| d == "default"),
        "{v}"
    );
}

fn cdylib() -> PathBuf {
    built().join("libalt_adoption_cdylib.so")
}

#[test]
fn a_cdylib_loaded_by_a_threaded_c_host_is_patched_before_dlopen_returns() {
    let lib = cdylib();
    let host = target_dir().join("host");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&host)
        .arg(fixtures().join("cdylib/host.c"))
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling host.c failed");
    let out = Command::new(&host)
        .arg(&lib)
        .env_remove("ALT_PATCH")
        .env_remove("ALT_CLEARCPUID")
        .output()
        .expect("run the C host");
    assert!(
        out.status.success(),
        "host: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v = parse(&out.stdout, "the C host");
    let l = &v["library"];
    assert_eq!(l["patched"], true, "{v}");
    assert_eq!(l["sites_hold_after"], true, "{v}");
    assert_eq!(l["results_ok"], true, "{v}");
    // The host's thread was running when dlopen ran the constructor: it was stopped.
    assert_eq!(l["load_stop"]["alone"], false, "{v}");
    assert!(l["load_stop"]["threads"].as_u64() >= Some(1), "{v}");
    let want = if popcnt() { "inline" } else { "default" };
    let decisions = l["decisions"].as_array().expect("decisions");
    assert!(
        !decisions.is_empty() && decisions.iter().all(|d| d == want),
        "{v}"
    );
    assert_eq!(v["popcount_0xff"], 8, "{v}");
}

#[test]
fn two_copies_of_the_runtime_in_one_process_each_pick_a_signal_and_work() {
    use alt::os::rendezvous::{chosen_signal, stop_other_threads, StopOptions};

    let stop = Arc::new(AtomicBool::new(false));
    let spins = Arc::new(AtomicU64::new(0));
    let spinner = {
        let (stop, spins) = (stop.clone(), spins.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                spins.fetch_add(1, Relaxed);
            }
        })
    };
    // This binary's copy stops the others first, taking its signal.
    let options = StopOptions::new().timeout(std::time::Duration::from_secs(5));
    stop_other_threads(&options, &[]).expect("stop").release();
    let ours = chosen_signal().expect("this copy chose a signal");

    // The library's copy patches at load while the spinner runs, on a signal of its own.
    let path = CString::new(cdylib().into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: loads the fixture library, whose constructor only patches its own sites.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!lib.is_null(), "dlopen {}", cdylib().display());
    let sym = |name: &str| {
        let name = CString::new(name).unwrap();
        // SAFETY: a symbol of the library just loaded.
        let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
        assert!(!p.is_null(), "{name:?}");
        p
    };
    // SAFETY: the fixture's exported functions, with these signatures.
    let describe: unsafe extern "C" fn(*mut u8, usize) -> usize =
        unsafe { std::mem::transmute(sym("alt_fixture_describe")) };
    // SAFETY: as above.
    let repatch: extern "C" fn(u32) -> u32 =
        unsafe { std::mem::transmute(sym("alt_fixture_repatch")) };
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { describe(buf.as_mut_ptr(), buf.len()) };
    let v = parse(&buf[..n], "the library in this process");
    assert_eq!(v["patched"], true, "{v}");
    assert_eq!(v["sites_hold_after"], true, "{v}");
    assert_eq!(v["load_stop"]["alone"], false, "{v}");
    let theirs = v["signal"]
        .as_i64()
        .expect("the library's copy chose a signal") as i32;
    assert_ne!(theirs, ours, "each copy has its own signal: {v}");

    // Both copies keep working, each with its own handler, while the spinner runs.
    assert_eq!(repatch(50), 0, "the library's copy reverts and re-patches");
    let before = spins.load(Relaxed);
    let stopped = stop_other_threads(&options, &[]).expect("this copy still stops the others");
    assert!(stopped.thread_count() >= 1);
    stopped.release();
    assert_eq!(chosen_signal(), Some(ours));
    while spins.load(Relaxed) == before {
        std::hint::spin_loop();
    }
    stop.store(true, Relaxed);
    spinner.join().unwrap();
}
