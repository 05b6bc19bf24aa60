//! Patched AArch64 code executed: a freestanding AArch64 program (`tests/aarch64/`, built here
//! with Debian's `aarch64-linux-gnu-gcc`, sites from `alt.h`) runs under
//! `qemu-aarch64 -cpu MODEL` for cortex-a53, cortex-a57, cortex-a72, cortex-a76, neoverse-n1 and
//! max. For each model:
//!
//! 1. the unpatched program prints the MIDR the emulated CPU answers, its results and which
//!    variant of each site ran (all defaults);
//! 2. the MIDR must be the one `alt-tablegen --cpu MODEL` assumes for that model;
//! 3. `alt_tablegen::apply` plans the image for that MIDR with the runtime's AArch64 planner
//!    (errata from the database: the CPU's own errata decide) and writes a patched copy;
//! 4. every site of the copy decodes with `aarch64-linux-gnu-objdump` into whole instructions:
//!    a replacement's instructions disassemble exactly as they did where they were assembled
//!    (so every re-targeted B, BL, B.cond, CBZ, TBZ/TBNZ, ADR and ADRP reaches the same
//!    absolute address), a direct call is `bl` to its target, the rest is `nop`;
//! 5. the copy runs with the same results, and the variants the errata call for;
//! 6. the unpatched program patches its own text at run time with the same bytes
//!    (`--patch`: mprotect, copy, `alt_sync_icache` running DC CVAU / DSB ISH / IC IVAU /
//!    DSB ISH / ISB over the range) and gives the same results and variants.
//!
//! The header's cache-maintenance sequence is also compared with
//! `alt_runtime::aarch64::cache::sync_sequence` on the emulated CPU, and the C example of
//! `alt.h` runs patched.
//!
//! `bash scripts/test.sh` installs gcc-aarch64-linux-gnu, binutils-aarch64-linux-gnu and
//! qemu-user when they are missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use alt::cpu::CpuId;
use alt::errata::errata_for;
use alt::Errata;
use alt_tablegen::apply::apply_file;
use alt_tablegen::cpuspec::{CpuSpec, QEMU_AARCH64_MODELS};
use alt_tablegen::inspect::Tables;
use alt_tablegen::{Input, Machine};

const GCC: &str = "aarch64-linux-gnu-gcc";
const OBJDUMP: &str = "aarch64-linux-gnu-objdump";
const QEMU: &str = "qemu-aarch64";

/// The program's sites: which entries each has, in priority order (erratum, negated).
/// Variant k (1-based) ran when entry k was applied; 0 is the default.
const SITES: [(u32, &[(Errata, bool)]); 10] = [
    (1, &[(Errata::ARM64_843419, false)]),
    (2, &[(Errata::ARM64_843419, true)]),
    (3, &[(Errata::ARM64_1319367, false)]),
    (4, &[(Errata::ARM64_3194386, false)]),
    (5, &[(Errata::ARM64_1542419, false)]),
    (6, &[(Errata::ARM64_832075, false)]),
    (7, &[(Errata::ARM64_3194386, true)]),
    (
        8,
        &[
            (Errata::ARM64_1742098, false),
            (Errata::ARM64_835769, false),
        ],
    ),
    (9, &[(Errata::ARM64_1319367, true)]),
    (10, &[(Errata::QCOM_FALKOR_E1003, false)]),
];

fn need(tool: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(tool).exists());
    assert!(
        found,
        "{tool} not found: install Debian's gcc-aarch64-linux-gnu, binutils-aarch64-linux-gnu \
         and qemu-user (bash scripts/test.sh does)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aarch64-qemu");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn include() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("alt-runtime/include")
}

/// The program, built once.
fn program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        need(GCC);
        need(OBJDUMP);
        need(QEMU);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aarch64");
        let exe = dir().join("sites");
        run(Command::new(GCC)
            .args([
                "-O1",
                "-Wall",
                "-Werror",
                "-nostdlib",
                "-static",
                "-no-pie",
                "-fno-pic",
                "-ffreestanding",
                "-fno-stack-protector",
                "-I",
            ])
            .arg(include())
            .arg(src.join("main.c"))
            .arg(src.join("sites.S"))
            .arg("-o")
            .arg(&exe));
        exe
    })
}

/// What a run printed.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    midr: u32,
    revidr: u32,
    ctr: u64,
    /// Per site: its results.
    results: BTreeMap<u32, Vec<i64>>,
    /// Per site: the variant that ran.
    variants: BTreeMap<u32, u32>,
    /// `synced ADDR LEN STEPS` lines.
    synced: Vec<(u64, u64, u32)>,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn qemu(model: &str, exe: &Path, args: &[String]) -> Run {
    let out = run(Command::new(QEMU).args(["-cpu", model]).arg(exe).args(args));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut r = Run {
        midr: 0,
        revidr: 0,
        ctr: 0,
        results: BTreeMap::new(),
        variants: BTreeMap::new(),
        synced: Vec::new(),
    };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            Some("midr") => {
                r.midr = hex(w[1]) as u32;
                r.revidr = hex(w[3]) as u32;
                r.ctr = hex(w[5]);
            }
            Some("synced") => {
                r.synced
                    .push((hex(w[1]), w[2].parse().unwrap(), w[3].parse().unwrap()))
            }
            Some(s) if s.starts_with('s') => {
                let n: u32 = s[1..].parse().unwrap();
                let k = w.len();
                assert_eq!(w[k - 2], "variant", "{line}");
                r.results
                    .insert(n, w[1..k - 2].iter().map(|v| v.parse().unwrap()).collect());
                r.variants.insert(n, w[k - 1].parse().unwrap());
            }
            _ => panic!("unexpected output line {line:?}"),
        }
    }
    assert_eq!(r.results.len(), SITES.len(), "{text}");
    r
}

/// The variant of each site that the errata of this CPU call for.
fn expected_variants(midr: u32, revidr: u32) -> BTreeMap<u32, u32> {
    let errata = errata_for(&CpuId::Arm64 { midr, revidr });
    SITES
        .iter()
        .map(|(n, entries)| {
            let v = entries
                .iter()
                .position(|(e, not)| errata.contains(*e) != *not)
                .map_or(0, |p| p as u32 + 1);
            (*n, v)
        })
        .collect()
}

/// `objdump -d` of a file: address -> instruction text (mnemonic and operands, no comment).
fn disassemble(file: &Path) -> BTreeMap<u64, String> {
    let out = run(Command::new(OBJDUMP)
        .args(["-d", "--no-show-raw-insn"])
        .arg(file));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some((addr, insn)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        let insn = insn.split("//").next().unwrap().trim();
        m.insert(addr, insn.replace('\t', " "));
    }
    m
}

fn check_model(model: &str) {
    let exe = program();
    // 1-2. The emulated CPU's identity, and the model table of alt-tablegen.
    let plain = qemu(model, exe, &[]);
    let assumed = QEMU_AARCH64_MODELS
        .iter()
        .find(|(n, _)| *n == model)
        .map(|(_, m)| *m)
        .unwrap();
    assert_eq!(plain.midr, assumed, "{model}: MIDR {:#x}", plain.midr);
    assert!(plain.variants.values().all(|v| *v == 0), "{plain:?}");
    let expected = expected_variants(plain.midr, plain.revidr);

    // 3. Plan for the CPU's own MIDR and REVIDR.
    let spec = CpuSpec::from_model(&format!("{:#x}/{:#x}", plain.midr, plain.revidr)).unwrap();
    assert_eq!(spec.machine(), Some(Machine::Aarch64));
    let patched = dir().join(format!("sites.{model}"));
    let applied = apply_file(exe, &patched, &spec).unwrap();
    assert_eq!(applied.machine, Machine::Aarch64);
    assert_eq!(applied.sites.len(), SITES.len());

    // Which test site each table site is, by its entries.
    let input = Input::open(exe).unwrap();
    let objects = input.objects_for(&[Machine::Aarch64]).unwrap();
    let tables = Tables::read(&objects[0]).unwrap();
    let site_of = |addr: u64| -> u32 {
        let mut entries: Vec<(String, bool)> = tables
            .alt
            .iter()
            .filter(|a| a.site == addr)
            .map(|a| (a.capability.unwrap().to_string(), a.not))
            .collect();
        entries.sort();
        SITES
            .iter()
            .find(|(_, e)| {
                let mut want: Vec<(String, bool)> = e
                    .iter()
                    .map(|(bit, not)| {
                        (
                            alt::Capability::erratum(*bit).unwrap().name().to_string(),
                            *not,
                        )
                    })
                    .collect();
                want.sort();
                want == entries
            })
            .map(|(n, _)| *n)
            .unwrap_or_else(|| panic!("site {addr:#x} is none of the test's"))
    };

    // 4. Every site decodes to whole instructions; replacements as assembled.
    let before = disassemble(exe);
    let after = disassemble(&patched);
    for s in &applied.sites {
        let n = site_of(s.site);
        let want = expected[&n];
        let words: Vec<&String> = (0..s.len as u64 / 4)
            .map(|i| {
                after
                    .get(&(s.site + 4 * i))
                    .unwrap_or_else(|| panic!("{model} s{n}: no instruction at +{}", 4 * i))
            })
            .collect();
        for w in &words {
            assert!(
                !w.starts_with(".inst") && !w.starts_with("udf") && !w.contains("unknown"),
                "{model} s{n}: {w}"
            );
        }
        let chosen = s
            .entry
            .map(|e| tables.alt.iter().find(|a| a.index == e).unwrap());
        match (want, chosen) {
            (0, None) => {
                let old: Vec<&String> = (0..s.len as u64 / 4)
                    .map(|i| &before[&(s.site + 4 * i)])
                    .collect();
                assert_eq!(words, old, "{model} s{n}: the default stays");
            }
            (0, Some(a)) => panic!("{model} s{n}: entry {} applied, none expected", a.index),
            (v, Some(a)) => {
                let k = SITES.iter().find(|(m, _)| *m == n).unwrap().1[v as usize - 1];
                let name = alt::Capability::erratum(k.0).unwrap().name();
                assert_eq!(
                    (a.capability, a.not),
                    (Some(name), k.1),
                    "{model} s{n}: wrong entry"
                );
                let used = if a.direct_call {
                    assert!(
                        words[0].starts_with(&format!("bl {:x} <", a.replacement)),
                        "{model} s{n}: {}",
                        words[0]
                    );
                    1
                } else {
                    let repl: Vec<&String> = (0..a.replacement_len as u64 / 4)
                        .map(|i| &before[&(a.replacement + 4 * i)])
                        .collect();
                    assert_eq!(
                        &words[..repl.len()],
                        &repl[..],
                        "{model} s{n}: re-targeted instructions reach what they reached"
                    );
                    repl.len()
                };
                assert!(
                    words[used..].iter().all(|w| *w == "nop"),
                    "{model} s{n}: {words:?}"
                );
            }
            (v, None) => panic!("{model} s{n}: variant {v} expected, default kept"),
        }
    }
    assert!(
        applied.changed().count() > 0 || expected.values().all(|v| *v == 0),
        "{model}: something is patched"
    );

    // 5. The patched copy: same results, the errata's variants.
    let run_patched = qemu(model, &patched, &[]);
    assert_eq!(run_patched.results, plain.results, "{model}: results");
    assert_eq!(run_patched.variants, expected, "{model}: variants");

    // 6. The same bytes written at run time, with the cache maintenance.
    let args: Vec<String> = std::iter::once("--patch".to_string())
        .chain(
            applied
                .changed()
                .map(|s| format!("{:#x}:{}", s.site, s.after)),
        )
        .collect();
    let live = qemu(model, exe, &args);
    assert_eq!(live.results, plain.results, "{model}: results patched live");
    assert_eq!(live.variants, expected, "{model}: variants patched live");
    assert_eq!(live.synced.len(), applied.changed().count());
    let steps = alt::aarch64::cache::sync_sequence(live.ctr, 0x40_0000, 4).len() as u32;
    for (addr, len, n) in &live.synced {
        let s = applied.sites.iter().find(|s| s.site == *addr).unwrap();
        assert_eq!(*len, s.len as u64);
        assert_eq!(
            *n, steps,
            "{model}: the sequence of CTR_EL0 {:#x}",
            live.ctr
        );
    }
}

#[test]
fn cortex_a53() {
    check_model("cortex-a53");
}

#[test]
fn cortex_a57() {
    check_model("cortex-a57");
}

#[test]
fn cortex_a72() {
    check_model("cortex-a72");
}

#[test]
fn cortex_a76() {
    check_model("cortex-a76");
}

#[test]
fn neoverse_n1() {
    check_model("neoverse-n1");
}

#[test]
fn max() {
    check_model("max");
}

#[test]
fn the_models_disagree_so_the_errata_decide() {
    // The plans differ between models: a plan that ignored the CPU would pass every model
    // test above only if all plans were equal.
    let plans: Vec<BTreeMap<u32, u32>> = QEMU_AARCH64_MODELS
        .iter()
        .filter(|(n, _)| {
            [
                "cortex-a53",
                "cortex-a57",
                "cortex-a72",
                "cortex-a76",
                "neoverse-n1",
                "max",
            ]
            .contains(n)
        })
        .map(|(_, midr)| expected_variants(*midr, 0))
        .collect();
    for (i, a) in plans.iter().enumerate() {
        for b in &plans[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Every relocated form is applied on some model.
    for n in 1..=9 {
        assert!(plans.iter().any(|p| p[&n] != 0), "site {n} never patched");
    }
}

#[test]
fn the_cache_sequence_of_alt_h_on_the_emulated_cpu() {
    use alt::aarch64::cache::{sync_sequence, CacheOp, Domain};
    let exe = program();
    let cases: [(u64, u64, u64); 5] = [
        (0x8444_c004, 0x40_1000, 4),
        (0x8444_8004, 0x40_103c, 8),
        (0x8003_8003 | (1 << 28), 0x40_0ff8, 0x50),
        (0x8444_c004 | (1 << 29), 0x40_1000, 0x40),
        (0x8444_c004, 0x40_1000, 0),
    ];
    let mut args = vec!["--cache".to_string()];
    let mut expected = String::new();
    for (ctr, addr, len) in cases {
        args.extend([
            format!("{ctr:#x}"),
            format!("{addr:#x}"),
            format!("{len:#x}"),
        ]);
        for op in sync_sequence(ctr, addr, len).ops() {
            let (k, a, l, line) = match *op {
                CacheOp::CleanDcacheToPoU { addr, len, line } => (1, addr, len, line),
                CacheOp::Dsb(Domain::Ish) => (2, 0, 0, 0),
                CacheOp::InvalidateIcacheToPoU { addr, len, line } => (3, addr, len, line),
                CacheOp::Isb => (4, 0, 0, 0),
                CacheOp::Dsb(d) => panic!("{d:?}"),
            };
            expected.push_str(&format!("{k} {a:#x} {l:#x} {line:#x};"));
        }
        expected.push('\n');
    }
    let out = run(Command::new(QEMU)
        .args(["-cpu", "cortex-a57"])
        .arg(exe)
        .args(&args));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn the_c_example_of_alt_h_runs_patched() {
    need(GCC);
    need(QEMU);
    let exe = dir().join("alt_example");
    run(Command::new(GCC)
        .args(["-O2", "-Wall", "-Werror", "-static", "-I"])
        .arg(include())
        .arg(include().join("alt_example.c"))
        .arg("-o")
        .arg(&exe));
    let reference = run(Command::new(QEMU).args(["-cpu", "max"]).arg(&exe)).stdout;
    for model in ["cortex-a53", "neoverse-n1"] {
        let spec = CpuSpec::for_image(model, Some(Machine::Aarch64)).unwrap();
        let patched = dir().join(format!("alt_example.{model}"));
        let applied = apply_file(&exe, &patched, &spec).unwrap();
        let changed = applied.changed().count();
        // cortex-a53 has 843419 (the ctz site); neoverse-n1 none of the example's errata.
        assert_eq!(changed, usize::from(model == "cortex-a53"), "{model}");
        let out = run(Command::new(QEMU).args(["-cpu", model]).arg(&patched));
        assert_eq!(out.stdout, reference, "{model}");
    }
}
