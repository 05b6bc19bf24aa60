//! Capabilities the build guarantees: `tests/target-features` built with
//! `-C target-feature=+popcnt,+lzcnt,+bmi1` has no site and no table entry for the entries those
//! features make certain (the variant is the code: `popcnt`, `lzcnt`, the `#[target_feature]`
//! function called), drops the entries after a guaranteed one, answers `has!(popcnt)` with the
//! constant `true`, and keeps every site no target feature can guarantee (a negated key, an
//! erratum, `fsrm`). The same program built without the flags has every site. Both run under
//! `qemu-x86_64 -cpu Haswell` (which has the three features) with the same results.
//!
//! The flagged build goes to its own directory (`--target <host>`), so the rest of the workspace
//! is not rebuilt with those flags.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use alt_tablegen::inspect::{verify, Tables};
use alt_tablegen::Input;
use common::{json, run_on_model};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::LittleEndian as LE;
use serde_json::Value;

const FLAGS: &str = "-Ctarget-feature=+popcnt,+lzcnt,+bmi1";

fn host() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// Builds the fixture, with the flags (`--target <host>`, whose artifacts live apart) or
/// without; returns the binary.
fn build(flagged: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root)
        .args(["build", "--locked", "-p", "alt-test-target-features"])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let host = host();
    if flagged {
        cmd.args(["--target", &host])
            .env("CARGO_ENCODED_RUSTFLAGS", FLAGS);
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building tests/target-features (flagged: {flagged}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = if flagged {
        target.join(&host).join("debug")
    } else {
        target.join("debug")
    };
    dir.join("alt-test-target-features")
}

/// Both builds, once per test process.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| (build(false), build(true)))
}

/// What the tests read from one binary.
struct Built {
    tables: Tables,
    /// `t_*` function: its address range and its bytes.
    functions: Vec<(String, Range<u64>, Vec<u8>)>,
    run: Value,
}

fn inspect(bin: &PathBuf) -> Built {
    let input = Input::open(bin).expect("open the fixture");
    let objects = input.objects().expect("objects");
    let obj = &objects[0];
    let tables = Tables::read(obj).expect("tables");
    assert!(
        verify(obj, &tables).is_empty(),
        "{}: valid tables",
        bin.display()
    );
    let mut functions = Vec::new();
    for sym in obj.symbols() {
        let Some(name) = obj.symbol_name(sym) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).to_string();
        if !name.starts_with("t_") {
            continue;
        }
        let (addr, size) = (sym.st_value.get(LE), sym.st_size.get(LE));
        let section = usize::from(sym.st_shndx.get(LE));
        let header = obj.section_header(section).expect("the symbol's section");
        let data = obj.section_data(section).expect("its bytes");
        let off = (addr - header.sh_addr.get(LE)) as usize;
        functions.push((
            name,
            addr..addr + size,
            data[off..off + size as usize].to_vec(),
        ));
    }
    let run = json(
        &run_on_model("Haswell", bin, &["--blocking-threads-run-no-sites"], &[]),
        &format!("{} under Haswell", bin.display()),
    );
    Built {
        tables,
        functions,
        run,
    }
}

fn built() -> &'static (Built, Built) {
    static BUILT: OnceLock<(Built, Built)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let (plain, flagged) = binaries();
        (inspect(plain), inspect(flagged))
    })
}

impl Built {
    fn function(&self, name: &str) -> &(String, Range<u64>, Vec<u8>) {
        self.functions
            .iter()
            .find(|f| f.0 == name)
            .unwrap_or_else(|| panic!("no function {name}"))
    }

    /// The table entries whose site lies in function `name`.
    fn entries_in(&self, name: &str) -> usize {
        let range = &self.function(name).1;
        self.tables
            .alt
            .iter()
            .filter(|a| range.contains(&a.site))
            .count()
    }

    /// The mnemonics of function `name`.
    fn mnemonics(&self, name: &str) -> Vec<Mnemonic> {
        let (_, range, bytes) = self.function(name);
        let mut d = Decoder::with_ip(64, bytes, range.start, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            out.push(d.decode().mnemonic());
        }
        out
    }

    /// The candidates of the bare `alternative!` sites (named `crate:LINE`).
    fn bare_sites(&self) -> Vec<Vec<String>> {
        self.candidates_where(|f| {
            f.strip_prefix("alt_test_target_features:")
                .is_some_and(|line| line.chars().all(|c| c.is_ascii_digit()))
        })
    }

    /// The sites of the run's report whose function ends with `suffix`: their candidates.
    fn sites(&self, suffix: &str) -> Vec<Vec<String>> {
        self.candidates_where(|f| f.ends_with(suffix))
    }

    /// The candidates of each site of the run's report whose function `named` accepts.
    fn candidates_where(&self, named: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
        self.run["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| named(s["function"].as_str().unwrap()))
            .map(|s| {
                s["candidates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }
}

#[test]
fn guaranteed_entries_leave_no_site_and_no_table_entry() {
    let (plain, flagged) = built();
    for (function, insn) in [
        ("t_popcount", Mnemonic::Popcnt),
        ("t_leading_zeros", Mnemonic::Lzcnt),
        ("t_lowest_bit", Mnemonic::Tzcnt),
    ] {
        assert_eq!(plain.entries_in(function), 1, "{function} without flags");
        assert_eq!(flagged.entries_in(function), 0, "{function} with {FLAGS}");
        assert!(
            flagged.mnemonics(function).contains(&insn),
            "{function} with {FLAGS} runs {insn:?} itself: {:?}",
            flagged.mnemonics(function)
        );
        assert!(
            !plain.mnemonics(function).contains(&insn),
            "{function} without flags holds {insn:?} only in its replacement"
        );
    }
    // The direct call: the #[target_feature] function itself (inlined: its tzcnt), not a call
    // of the default and not a site.
    assert_eq!(plain.entries_in("t_trailing_zeros"), 1);
    assert_eq!(flagged.entries_in("t_trailing_zeros"), 0);
    assert!(flagged
        .mnemonics("t_trailing_zeros")
        .contains(&Mnemonic::Tzcnt));
    // has!(popcnt) is the constant true.
    assert_eq!(plain.entries_in("t_has_popcnt"), 1);
    assert_eq!(flagged.entries_in("t_has_popcnt"), 0);
    assert!(
        !flagged
            .mnemonics("t_has_popcnt")
            .iter()
            .any(|m| matches!(m, Mnemonic::Jmp | Mnemonic::Nop)),
        "{:?}",
        flagged.mnemonics("t_has_popcnt")
    );

    // The report lists none of them either.
    for suffix in [
        "::popcount",
        "::leading_zeros",
        "::trailing_zeros",
        ":has!(popcnt)",
    ] {
        assert!(!plain.sites(suffix).is_empty(), "{suffix} without flags");
        assert_eq!(
            flagged.sites(suffix),
            Vec::<Vec<String>>::new(),
            "{suffix} with {FLAGS}"
        );
    }
    assert!(flagged.tables.alt.len() < plain.tables.alt.len());
}

#[test]
fn entries_after_a_guaranteed_one_are_dropped_and_earlier_ones_kept() {
    let (plain, flagged) = built();
    let three = |b: &Built, s: &str| -> Vec<Vec<String>> {
        let mut v = b.sites(s);
        v.dedup();
        v
    };
    assert_eq!(
        three(plain, "::popcount_three"),
        [["avx512f", "popcnt", "sse4.2"]]
    );
    assert_eq!(three(flagged, "::popcount_three"), [["avx512f", "popcnt"]]);
    // The bare alternative! with three entries (named by its line).
    let bare = |b: &Built| -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = b
            .bare_sites()
            .into_iter()
            .filter(|c| c[0] == "avx512f")
            .collect();
        v.dedup();
        v
    };
    assert_eq!(bare(plain), [["avx512f", "bmi1", "sse4.2"]]);
    assert_eq!(bare(flagged), [["avx512f", "bmi1"]]);
}

#[test]
fn keys_no_target_feature_can_guarantee_keep_their_sites() {
    let (plain, flagged) = built();
    for b in [plain, flagged] {
        let mut v = b.sites("::popcount_never_guaranteed");
        v.dedup();
        assert_eq!(v, [["!popcnt", "erratum_amd_div0", "fsrm"]]);
        assert_eq!(b.sites(":has!(avx2)"), [["avx2"]]);
        assert_eq!(b.sites(":has!(erratum_amd_div0)"), [["!erratum_amd_div0"]]);
    }
}

#[test]
fn both_builds_compute_the_same_results_and_answers() {
    let (plain, flagged) = built();
    assert_eq!(plain.run["results"], flagged.run["results"]);
    assert_eq!(plain.run["has"], flagged.run["has"]);
    // Haswell: POPCNT and AVX2, not the AMD erratum.
    assert_eq!(
        plain.run["has"],
        serde_json::json!({"popcnt": true, "avx2": true, "erratum_amd_div0": false})
    );
}
