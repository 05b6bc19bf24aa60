//! `alt::has!` judged by emulated CPU models (`qemu-x86_64 -cpu MODEL`): the `has` example's
//! answers and the arms it ran must match what each model's CPUID offers (expectations from
//! QEMU's model definitions, not from our probe; an AVX2 arm on a model without AVX2 is SIGILL),
//! before patching every feature answers false and every erratum true, a revert restores that,
//! patching as if the CPU had an erratum it lacks keeps its workaround, `alt-tablegen plan`
//! decides every `has!` site as the run does, and every site decodes into whole instructions
//! before and after.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::collections::BTreeMap;

use alt_tablegen::inspect::{plan, verify, CpuSpec, Tables};
use alt_tablegen::Input;
use common::{decode_whole, example, json, run_on_model, unhex};
use serde_json::Value;

/// What a model offers, for the example's keys.
struct Model {
    name: &'static str,
    popcnt: bool,
    lzcnt: bool,
    bmi1: bool,
    sse4_1: bool,
    sse4_2: bool,
    avx2: bool,
    /// An AMD vendor: Linux's (and our) `erratum_sysret_ss_attrs` holds on every AMD CPU.
    amd: bool,
}

const MODELS: [Model; 4] = [
    Model {
        name: "qemu64",
        popcnt: false,
        lzcnt: false,
        bmi1: false,
        sse4_1: false,
        sse4_2: false,
        avx2: false,
        amd: true,
    },
    Model {
        name: "Nehalem",
        popcnt: true,
        lzcnt: false,
        bmi1: false,
        sse4_1: true,
        sse4_2: true,
        avx2: false,
        amd: false,
    },
    Model {
        name: "Haswell",
        popcnt: true,
        lzcnt: true,
        bmi1: true,
        sse4_1: true,
        sse4_2: true,
        avx2: true,
        amd: false,
    },
    Model {
        name: "max",
        popcnt: true,
        lzcnt: true,
        bmi1: true,
        sse4_1: true,
        sse4_2: true,
        avx2: true,
        amd: true,
    },
];

/// The answers a patched run must give on `m` (no model has AVX-512F or the AMD DIV0 erratum).
fn expected_answers(m: &Model) -> Value {
    serde_json::json!({
        "popcnt": m.popcnt,
        "lzcnt": m.lzcnt,
        "bmi1": m.bmi1,
        "sse4.2": m.sse4_2,
        "avx2": m.avx2,
        "avx512f": false,
        "!popcnt": !m.popcnt,
        "popcnt, unlikely": m.popcnt,
        "avx2, likely": m.avx2,
        "erratum_sysret_ss_attrs": m.amd,
        "erratum_amd_div0": false,
        "erratum_amd_div0, likely": false,
        "!erratum_amd_div0": true,
    })
}

fn expected_arms(m: &Model) -> Value {
    let sum = if m.avx2 {
        "avx2"
    } else if m.sse4_1 {
        "sse4.1"
    } else {
        "portable"
    };
    serde_json::json!({
        "popcnt": if m.popcnt { "popcnt" } else { "portable" },
        "avx2, sse4.1": sum,
        "erratum_amd_div0": "plain",
    })
}

/// Every answer before patching: features false, errata true (`!` inverts).
fn unpatched_answers() -> Value {
    serde_json::json!({
        "popcnt": false, "lzcnt": false, "bmi1": false, "sse4.2": false, "avx2": false,
        "avx512f": false, "!popcnt": true, "popcnt, unlikely": false, "avx2, likely": false,
        "erratum_sysret_ss_attrs": true, "erratum_amd_div0": true,
        "erratum_amd_div0, likely": true, "!erratum_amd_div0": false,
    })
}

fn unpatched_arms() -> Value {
    serde_json::json!({
        "popcnt": "portable", "avx2, sse4.1": "portable", "erratum_amd_div0": "workaround",
    })
}

fn run(model: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let bin = example("has");
    let mut all = vec!["--json", "--blocking-threads-run-no-sites"];
    all.extend_from_slice(args);
    json(
        &run_on_model(model, &bin, &all, env),
        &format!("has {args:?} {env:?} on {model}"),
    )
}

fn sites(v: &Value) -> &Vec<Value> {
    v["report"]["sites"].as_array().expect("report.sites")
}

/// Every has! site: 5 bytes, a jmp or a 5-byte NOP before and after, whole instructions.
fn check_sites(v: &Value, what: &str) {
    let mut n = 0;
    for s in sites(v) {
        if !s["function"].as_str().unwrap().contains(":has!(") {
            continue;
        }
        n += 1;
        let addr = s["address"].as_u64().unwrap();
        assert_eq!(s["length"], 5, "{what}: {s}");
        for state in ["before", "after"] {
            let bytes = unhex(s[state].as_str().unwrap());
            let text = decode_whole(&bytes, addr)
                .unwrap_or_else(|e| panic!("{what}: site {addr:#x} {state}: {e}"));
            assert_eq!(text.len(), 1, "{what}: {text:?}");
            assert!(
                text[0].starts_with("jmp ") || text[0].starts_with("nop "),
                "{what}: {text:?}"
            );
        }
    }
    assert!(n >= 13, "{what}: only {n} has! sites reported");
}

#[test]
fn every_model_answers_what_its_cpuid_offers_and_runs_those_arms() {
    let mut checksums = Vec::new();
    for m in &MODELS {
        let v = run(m.name, &[], &[]);
        assert_eq!(v["patched"], true, "{}", m.name);
        assert_eq!(v["answers"], expected_answers(m), "answers on {}", m.name);
        assert_eq!(v["arms"], expected_arms(m), "arms on {}", m.name);
        check_sites(&v, m.name);
        checksums.push(v["checksum"].as_u64().unwrap());
    }
    assert!(checksums.windows(2).all(|w| w[0] == w[1]), "{checksums:?}");
}

#[test]
fn unpatched_features_answer_false_and_errata_true() {
    for m in [&MODELS[0], &MODELS[2]] {
        let v = run(m.name, &[], &[("ALT_PATCH", "off")]);
        assert_eq!(v["patched"], false);
        assert_eq!(
            v["answers"],
            unpatched_answers(),
            "ALT_PATCH=off on {}",
            m.name
        );
        assert_eq!(v["arms"], unpatched_arms(), "ALT_PATCH=off on {}", m.name);
    }
}

#[test]
fn a_revert_restores_the_unpatched_answers() {
    let haswell = &MODELS[2];
    let v = run(haswell.name, &["--revert"], &[]);
    assert_eq!(v["answers"], expected_answers(haswell));
    assert_eq!(v["reverted"]["answers"], unpatched_answers());
    assert_eq!(v["reverted"]["arms"], unpatched_arms());
}

#[test]
fn an_erratum_the_system_has_keeps_its_workaround() {
    // Haswell lacks the AMD DIV0 erratum; patch as if a CPU had it.
    let haswell = &MODELS[2];
    let v = run(haswell.name, &["--add", "erratum_amd_div0"], &[]);
    let mut want = expected_answers(haswell);
    want["erratum_amd_div0"] = true.into();
    want["erratum_amd_div0, likely"] = true.into();
    want["!erratum_amd_div0"] = false.into();
    assert_eq!(v["answers"], want);
    assert_eq!(v["arms"]["erratum_amd_div0"], "workaround");
    check_sites(&v, "Haswell + erratum_amd_div0");
}

#[test]
fn alt_tablegen_plans_every_has_site_as_the_run_decides() {
    let bin = example("has");
    let input = Input::open(&bin).expect("open the has example");
    let objects = input.objects().expect("objects");
    let tables = Tables::read(&objects[0]).expect("tables");
    assert!(verify(&objects[0], &tables).is_empty());
    for m in ["qemu64", "Nehalem", "Haswell"] {
        let mut planned: BTreeMap<u64, Option<usize>> = BTreeMap::new();
        let base = tables.alt.iter().map(|a| a.site).min().unwrap();
        for d in plan(&objects[0], &tables, &CpuSpec::from_model(m).unwrap())
            .expect("the runtime's planner accepts the table")
        {
            planned.insert(d.site - base, d.chosen);
        }
        let v = run(m, &[], &[]);
        let run_base = sites(&v)
            .iter()
            .map(|s| s["address"].as_u64().unwrap())
            .min()
            .unwrap();
        let ran: BTreeMap<u64, Option<usize>> = sites(&v)
            .iter()
            .map(|s| {
                (
                    s["address"].as_u64().unwrap() - run_base,
                    s["entry"].as_u64().map(|e| e as usize),
                )
            })
            .collect();
        assert_eq!(planned, ran, "alt-tablegen plan --cpu {m} vs the run");
    }
}
