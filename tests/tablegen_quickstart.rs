//! Static and dynamic agree: `alt-tablegen` verifies the quickstart binary's tables and plans
//! them for a CPU model without running it; the plan must match what the binary itself decides
//! when it runs under `qemu-x86_64 -cpu MODEL`.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::collections::BTreeMap;

use alt_tablegen::inspect::{plan, verify, CpuSpec, Tables};
use alt_tablegen::Input;
use common::{example, json, run_on_model};

/// Per capability (or "default"), how many sites chose it.
type Tally = BTreeMap<String, usize>;

#[test]
fn static_plan_matches_the_decisions_made_under_each_model() {
    let bin = example("quickstart");
    let input = Input::open(&bin).expect("open quickstart");
    let objects = input.objects().expect("objects");
    let tables = Tables::read(&objects[0]).expect("tables");
    let problems = verify(&objects[0], &tables);
    assert!(problems.is_empty(), "verify: {problems:?}");
    assert!(
        tables.alt.len() >= 8,
        "quickstart has its sites: {}",
        tables.alt.len()
    );

    for model in ["qemu64", "Nehalem", "Haswell"] {
        let mut planned = Tally::new();
        for d in plan(&objects[0], &tables, &CpuSpec::from_model(model).unwrap()).expect("plan") {
            let key = match d.chosen {
                Some(i) => {
                    let rec = tables.alt.iter().find(|a| a.index == i).unwrap();
                    rec.capability.unwrap().to_string()
                }
                None => "default".to_string(),
            };
            *planned.entry(key).or_default() += 1;
        }
        let v = json(
            &run_on_model(
                model,
                &bin,
                &["--json", "--blocking-threads-run-no-sites"],
                &[],
            ),
            model,
        );
        let mut ran = Tally::new();
        for s in v["report"]["sites"].as_array().unwrap() {
            let key = match s["decision"].as_str().unwrap() {
                "default" => "default".to_string(),
                _ => s["capability"].as_str().unwrap().to_string(),
            };
            *ran.entry(key).or_default() += 1;
        }
        assert_eq!(
            planned, ran,
            "alt-tablegen plan --cpu {model} vs the run under qemu"
        );
    }
}
