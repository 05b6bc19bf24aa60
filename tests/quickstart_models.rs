//! The quickstart demo judged by emulated CPU models (`qemu-x86_64 -cpu MODEL`) and an
//! independent decoder (iced-x86).
//!
//! For each model: the program must not crash (a wrong choice is SIGILL), each site's decision
//! must match what that model's CPUID offers (expectations from QEMU's model definitions, not
//! from our probe), the result checksum must equal the unpatched run's, and every site must
//! decode into whole instructions ending exactly at its end, before and after patching.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::{decode_whole, example, json, run_native, run_on_model, unhex};
use serde_json::Value;

/// What a model offers, for the quickstart's sites.
struct Model {
    name: &'static str,
    popcnt: bool,
    lzcnt: bool,
    bmi1: bool,
    /// Capability the copy site is expected to choose, if any.
    copy: Option<&'static [&'static str]>,
    avx2: bool,
    clflushopt: bool,
    /// `lfence` serialises dispatch (every Intel CPU); None: not asserted.
    lfence: Option<bool>,
}

const MODELS: [Model; 4] = [
    Model {
        name: "qemu64",
        popcnt: false,
        lzcnt: false,
        bmi1: false,
        copy: None,
        avx2: false,
        clflushopt: false,
        lfence: Some(false),
    },
    Model {
        name: "Nehalem",
        popcnt: true,
        lzcnt: false,
        bmi1: false,
        copy: None,
        avx2: false,
        clflushopt: false,
        lfence: Some(true),
    },
    Model {
        name: "Haswell",
        popcnt: true,
        lzcnt: true,
        bmi1: true,
        copy: Some(&["erms"]),
        avx2: true,
        clflushopt: false,
        lfence: Some(true),
    },
    Model {
        name: "max",
        popcnt: true,
        lzcnt: true,
        bmi1: true,
        copy: Some(&["fsrm", "erms"]),
        avx2: true,
        clflushopt: true,
        lfence: None,
    },
];

fn sites(v: &Value) -> &Vec<Value> {
    v["report"]["sites"].as_array().expect("report.sites")
}

fn checksum(v: &Value) -> u64 {
    v["checksum"].as_u64().expect("checksum")
}

/// Checks every site's before and after bytes with iced-x86.
fn check_decodes(v: &Value, what: &str) {
    for s in sites(v) {
        let addr = s["address"].as_u64().unwrap();
        for state in ["before", "after"] {
            let bytes = unhex(s[state].as_str().unwrap());
            assert_eq!(bytes.len() as u64, s["length"].as_u64().unwrap());
            if let Err(e) = decode_whole(&bytes, addr) {
                panic!("{what}: site {addr:#x} ({}) {state}: {e}", s["function"]);
            }
        }
    }
}

/// The decision expected for a site, from the site's function and the model.
fn expected(function: &str, m: &Model) -> Option<(&'static str, Vec<&'static str>)> {
    let on = |b: bool, d: &'static str, cap: &'static str| {
        if b {
            (d, vec![cap])
        } else {
            ("default", vec![])
        }
    };
    Some(match function {
        "alt_demo::popcount" => on(m.popcnt, "inline", "popcnt"),
        "alt_demo::leading_zeros" => on(m.lzcnt, "inline", "lzcnt"),
        "alt_demo::trailing_zeros" => on(m.bmi1, "inline", "bmi1"),
        "alt_demo::sum_bytes" => on(m.avx2, "direct_call", "avx2"),
        "alt_demo::copy_bytes" => match m.copy {
            Some(caps) => ("inline", caps.to_vec()),
            None => ("default", vec![]),
        },
        // The two bare sites, named by their line in the demo crate: the fence (lfence) and
        // the flush (clflushopt); neither is judged where the fence is not asserted.
        f if f.starts_with("alt_demo:") && m.lfence.is_none() => return None,
        f if f.starts_with("alt_demo:") => return Some(("?", vec![])),
        other => panic!("unexpected site function {other}"),
    })
}

fn unpatched_checksum() -> u64 {
    let bin = example("quickstart");
    let v = json(
        &run_native(&bin, &["--json", "--no-patch"], &[]),
        "quickstart --no-patch",
    );
    assert_eq!(v["patched"], Value::Bool(false));
    checksum(&v)
}

#[test]
fn every_model_gets_the_code_its_cpuid_offers_and_the_same_results() {
    let bin = example("quickstart");
    let reference = unpatched_checksum();
    for m in &MODELS {
        let out = run_on_model(
            m.name,
            &bin,
            &["--json", "--blocking-threads-run-no-sites"],
            &[],
        );
        let v = json(&out, &format!("quickstart on {}", m.name));
        assert_eq!(checksum(&v), reference, "checksum on {}", m.name);
        check_decodes(&v, m.name);
        let mut seen_fence = false;
        for s in sites(&v) {
            let function = s["function"].as_str().unwrap();
            let decision = s["decision"].as_str().unwrap();
            let capability = s["capability"].as_str().unwrap_or("");
            match expected(function, m) {
                None => {}
                Some(("?", _)) => match capability {
                    "lfence_serializing" => {
                        seen_fence = true;
                        if let Some(l) = m.lfence {
                            assert_eq!(decision == "inline", l, "fence on {}", m.name);
                        }
                    }
                    "clflushopt" => {
                        assert_eq!(decision == "inline", m.clflushopt, "flush on {}", m.name)
                    }
                    other => panic!("unexpected bare site capability {other}"),
                },
                Some((want, caps)) => {
                    assert_eq!(decision, want, "{function} on {}", m.name);
                    if want != "default" {
                        assert!(
                            caps.contains(&capability),
                            "{function} on {} chose {capability}, expected one of {caps:?}",
                            m.name
                        );
                    }
                }
            }
        }
        assert!(
            seen_fence || m.lfence.is_none(),
            "no fence site reported on {}",
            m.name
        );
    }
}

#[test]
fn a_masked_feature_is_never_used() {
    let bin = example("quickstart");
    let reference = unpatched_checksum();
    let env = [("ALT_CLEARCPUID", "popcnt,avx2,erms")];
    let v = json(
        &run_on_model(
            "Haswell",
            &bin,
            &["--json", "--blocking-threads-run-no-sites"],
            &env,
        ),
        "quickstart on Haswell with ALT_CLEARCPUID",
    );
    assert_eq!(checksum(&v), reference);
    check_decodes(&v, "Haswell masked");
    let features = v["report"]["capabilities"]["features"].as_array().unwrap();
    for masked in ["popcnt", "avx2", "erms"] {
        assert!(
            !features.iter().any(|f| f == masked),
            "{masked} still listed"
        );
    }
    for s in sites(&v) {
        let function = s["function"].as_str().unwrap();
        let after = unhex(s["after"].as_str().unwrap());
        let text = decode_whole(&after, s["address"].as_u64().unwrap()).unwrap();
        assert!(
            !text
                .iter()
                .any(|i| i.starts_with("popcnt") || i.starts_with("rep movsb")),
            "{function} uses a masked feature: {text:?}"
        );
        match function {
            "alt_demo::popcount" | "alt_demo::sum_bytes" | "alt_demo::copy_bytes" => {
                assert_eq!(s["decision"], "default", "{function}")
            }
            "alt_demo::leading_zeros" => assert_eq!(s["decision"], "inline"),
            _ => {}
        }
    }
}

#[test]
fn an_unknown_mask_name_is_refused() {
    let bin = example("quickstart");
    let out = run_native(&bin, &["--json"], &[("ALT_CLEARCPUID", "popcnt,avx3")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown capability name `avx3`"), "{err}");
}

#[test]
fn native_patching_keeps_results_and_whole_instructions() {
    let bin = example("quickstart");
    let reference = unpatched_checksum();
    let v = json(&run_native(&bin, &["--json"], &[]), "quickstart natively");
    assert_eq!(checksum(&v), reference);
    check_decodes(&v, "native");
    // The default sites start as a call; those that stay default keep it.
    for s in sites(&v) {
        let before = unhex(s["before"].as_str().unwrap());
        let function = s["function"].as_str().unwrap();
        if function.contains("::") {
            assert_eq!(before[0], 0xe8, "{function} starts as call rel32");
        }
    }
}

#[test]
fn strict_wx_patches_the_same_sites_without_making_text_writable() {
    let bin = example("quickstart");
    let reference = unpatched_checksum();
    let normal = json(&run_native(&bin, &["--json"], &[]), "quickstart");
    let strict = json(
        &run_native(&bin, &["--json", "--strict-wx"], &[]),
        "quickstart --strict-wx",
    );
    assert_eq!(checksum(&strict), reference);
    check_decodes(&strict, "strict W^X");
    let key = |v: &Value| -> Vec<(u64, String)> {
        sites(v)
            .iter()
            .map(|s| {
                (
                    s["address"].as_u64().unwrap(),
                    s["after"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    // Same binary, same CPU: the same bytes at the same (PIE-relative) places.
    let base = |v: &Value| sites(v)[0]["address"].as_u64().unwrap();
    let rel = |v: &Value| -> Vec<(u64, String)> {
        key(v).into_iter().map(|(a, b)| (a - base(v), b)).collect()
    };
    assert_eq!(rel(&strict), rel(&normal));
    assert!(
        sites(&strict).iter().any(|s| s["before"] != s["after"]),
        "something was patched"
    );
}

#[test]
fn alt_patch_off_keeps_every_default_from_the_start() {
    let bin = example("quickstart");
    let v = json(
        &run_native(&bin, &["--json"], &[("ALT_PATCH", "off")]),
        "ALT_PATCH=off quickstart",
    );
    assert_eq!(v["patched"], Value::Bool(false), "{v}");
    assert_eq!(v["report"], Value::Null, "{v}");
    assert_eq!(checksum(&v), unpatched_checksum());
    // Even when asked to patch again: off is off.
    let v = json(
        &run_native(&bin, &["--json", "--strict-wx"], &[("ALT_PATCH", "off")]),
        "ALT_PATCH=off quickstart --strict-wx",
    );
    assert_eq!(v["patched"], Value::Bool(false), "{v}");
}

#[test]
fn under_qemu_a_program_with_one_thread_is_patched_at_load_without_the_flag() {
    // qemu-user's helper thread blocks every signal, and a rendezvous would have to refuse it;
    // but it runs no guest code, and a program that never made a thread is alone by its C
    // library's word (glibc's `__libc_single_threaded`): nothing is signalled, and the sites
    // are patched at load as the flagged run patches them.
    let bin = example("quickstart");
    let plain = json(
        &run_on_model("Haswell", &bin, &["--json"], &[]),
        "quickstart on Haswell without the flag",
    );
    let flagged = json(
        &run_on_model(
            "Haswell",
            &bin,
            &["--json", "--blocking-threads-run-no-sites"],
            &[],
        ),
        "quickstart on Haswell with the flag",
    );
    assert_eq!(plain["patched"], Value::Bool(true), "{plain}");
    assert_eq!(checksum(&plain), unpatched_checksum());
    check_decodes(&plain, "Haswell without the flag");
    let decisions = |v: &Value| -> Vec<(Value, Value, Value)> {
        sites(v)
            .iter()
            .map(|s| {
                (
                    s["function"].clone(),
                    s["decision"].clone(),
                    s["after"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(decisions(&plain), decisions(&flagged));
    assert!(
        sites(&plain).iter().any(|s| s["decision"] != "default"),
        "Haswell takes some replacement: {plain}"
    );
}
