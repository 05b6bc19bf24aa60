//! inspect, verify and plan on binaries whose tables are written by hand in inline assembly,
//! in the layout of `alt_runtime::table`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use alt_tablegen::inspect::{plan, verify, CpuSpec, Tables};
use alt_tablegen::Input;
use common::*;

/// `site_fn` has two sites: A, a 5-byte NOP (popcnt if present, else `xor %eax,%eax`), and B,
/// `call fallback` (a direct call to `fallback` when AVX2 is present). `BROKEN` adds three bad
/// entries for site A.
fn fixture(broken: bool) -> String {
    let extra_repl = if broken {
        r#"8: popcnt %rdi, %rax
   nop
9:
"#
    } else {
        "8:\n9:\n"
    };
    let extra_entries = if broken {
        r#"   .long 2b - .
   .long 8b - .
   .short 0x0004
   .byte 3b - 2b
   .byte 9b - 8b
   .long 2b - .
   .long 6b - .
   .short 0x007f
   .byte 3b - 2b
   .byte 7b - 6b
   .long 2b - .
   .long 6b - .
   .short 0x1004
   .byte 3b - 2b
   .byte 7b - 6b
"#
    } else {
        ""
    };
    format!(
        r#"
long fallback(long x) {{ return x + 1; }}
extern long site_fn(long);
__asm__(
".text\n"
".globl site_fn\n"
".type site_fn,@function\n"
"site_fn:\n"
"2: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n"
"3: .byte 0xe8\n"
"   .long fallback - 4 - .\n"
"5: ret\n"
".size site_fn, .-site_fn\n"
".pushsection alt_replacement,\"axR\"\n"
"6: popcnt %rdi, %rax\n"
"7: xor %eax, %eax\n"
{repl}
".popsection\n"
".pushsection alt_instr,\"aR\"\n"
".balign 4\n"
"   .long 2b - .\n"
"   .long 6b - .\n"
"   .short 0x0004\n"
"   .byte 3b - 2b\n"
"   .byte 7b - 6b\n"
"   .long 2b - .\n"
"   .long 7b - .\n"
"   .short 0x8004\n"
"   .byte 3b - 2b\n"
"   .byte 8b - 7b\n"
"   .long 3b - .\n"
"   .long fallback - .\n"
"   .short 0x400b\n"
"   .byte 5b - 3b\n"
"   .byte 0\n"
{entries}
".popsection\n"
);
int main(void) {{ return site_fn(41) == 42 ? 0 : 1; }}
"#,
        repl = quote_lines(extra_repl),
        entries = quote_lines(extra_entries),
    )
}

fn quote_lines(s: &str) -> String {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("\"{l}\\n\"\n"))
        .collect()
}

fn build(dir: &Path, broken: bool) -> PathBuf {
    let src = write(dir, "alt.c", &fixture(broken));
    let exe = dir.join(if broken { "broken" } else { "good" });
    cc_link(&exe, &[&src], &["-O2"]);
    run(&mut Command::new(&exe));
    exe
}

fn symbol_addr(exe: &Path, name: &str) -> u64 {
    let out = run(Command::new("nm").arg(exe));
    let line = out
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")))
        .unwrap();
    u64::from_str_radix(line.split(' ').next().unwrap(), 16).unwrap()
}

fn tables(exe: &Path) -> (Input, Tables) {
    let input = Input::open(exe).unwrap();
    let t = {
        let objs = input.objects().unwrap();
        Tables::read(&objs[0]).unwrap()
    };
    (input, t)
}

#[test]
fn inspect_resolves_every_entry_and_verify_accepts_a_good_table() {
    let dir = scratch("inspect-good");
    let exe = build(&dir, false);
    let site_fn = symbol_addr(&exe, "site_fn");
    let fallback = symbol_addr(&exe, "fallback");
    let (input, t) = tables(&exe);
    assert_eq!(t.alt.len(), 3);
    assert!(t.pv.is_empty());
    let a = &t.alt;
    assert_eq!((a[0].site, a[0].site_len), (site_fn, 5));
    assert_eq!(a[0].capability, Some("popcnt"));
    assert_eq!(a[0].site_bytes, "0f1f440000");
    assert_eq!(a[0].replacement_bytes, "f3480fb8c7");
    assert_eq!(
        (a[0].replacement_len, a[0].not, a[0].direct_call),
        (5, false, false)
    );
    assert_eq!(a[1].site, site_fn);
    assert_eq!(a[1].replacement, a[0].replacement + 5);
    assert_eq!(a[1].replacement_bytes, "31c0");
    assert!(a[1].not);
    assert_eq!(a[2].site, site_fn + 5);
    assert_eq!(a[2].replacement, fallback);
    assert_eq!(a[2].capability, Some("avx2"));
    assert!(a[2].direct_call);
    assert_eq!(&a[2].site_bytes[..2], "e8");
    assert_eq!(a[1].entry_addr, a[0].entry_addr + 12);

    let objs = input.objects().unwrap();
    assert_eq!(verify(&objs[0], &t), vec![]);

    let out = run(Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .arg("verify")
        .arg(&exe));
    assert!(
        out.contains("ok: 3 alternative and 0 paravirt entries verified"),
        "{out}"
    );
    let out = run(Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .args(["inspect", "--json"])
        .arg(&exe));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["alt"][0]["capability"], "popcnt");
    assert_eq!(v["alt"][0]["site"], site_fn);
    assert_eq!(v["alt"][2]["direct_call"], true);
    let human = run(Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .arg("inspect")
        .arg(&exe));
    assert!(human.contains("alt_instr: 3 entries"), "{human}");
    assert!(human.contains("if !popcnt (0x004)"), "{human}");
}

#[test]
fn verify_rejects_a_broken_table_naming_each_entry() {
    let dir = scratch("inspect-broken");
    let exe = build(&dir, true);
    let site_fn = symbol_addr(&exe, "site_fn");
    let (input, t) = tables(&exe);
    let objs = input.objects().unwrap();
    let problems = verify(&objs[0], &t);
    let got: Vec<(usize, u64, &str)> = problems
        .iter()
        .map(|p| (p.index, p.site, p.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            // The runtime's own words: verify runs the runtime's validator.
            (
                3,
                site_fn,
                "replacement of 6 bytes is longer than the site of 5 bytes"
            ),
            (4, site_fn, "unknown capability id 0x07f"),
            (5, site_fn, "reserved flag bits 0x1000 are set"),
        ]
    );
    assert_eq!(problems[0].entry_addr, t.alt[0].entry_addr + 36);
    assert_eq!(
        problems[0].to_string(),
        format!(
            "alt_instr[3] at {:#x} (site {site_fn:#x}): replacement of 6 bytes is longer than the site of 5 bytes",
            t.alt[3].entry_addr
        )
    );

    let out = Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .arg("verify")
        .arg(&exe)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("alt_instr[3] at 0x"), "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn plan_applies_the_first_entry_that_holds() {
    let dir = scratch("plan");
    let exe = build(&dir, false);
    let site_fn = symbol_addr(&exe, "site_fn");
    let (input, t) = tables(&exe);
    let objs = input.objects().unwrap();
    let obj = &objs[0];
    let chosen = |names: &str| -> Vec<(u64, Option<usize>)> {
        plan(obj, &t, &CpuSpec::from_names(names).unwrap())
            .unwrap()
            .iter()
            .map(|d| (d.site, d.chosen))
            .collect()
    };
    assert_eq!(
        chosen("popcnt"),
        vec![(site_fn, Some(0)), (site_fn + 5, None)]
    );
    assert_eq!(chosen(""), vec![(site_fn, Some(1)), (site_fn + 5, None)]);
    assert_eq!(
        chosen("avx2,POPCNT"),
        vec![(site_fn, Some(0)), (site_fn + 5, Some(2))]
    );
    assert!(CpuSpec::from_names("popcount").is_err());
    let model = |name: &str| {
        let caps = CpuSpec::from_model(name).unwrap();
        plan(obj, &t, &caps)
            .unwrap()
            .iter()
            .map(|d| (d.site, d.chosen))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        model("Haswell"),
        vec![(site_fn, Some(0)), (site_fn + 5, Some(2))]
    );
    assert_eq!(
        model("qemu64"),
        vec![(site_fn, Some(1)), (site_fn + 5, None)]
    );
    assert_eq!(
        model("Nehalem"),
        vec![(site_fn, Some(0)), (site_fn + 5, None)]
    );
    assert!(CpuSpec::from_model("Pentium5")
        .unwrap_err()
        .contains("unknown CPU model"));
    let out = run(Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .args(["plan", "--cpu", "Haswell"])
        .arg(&exe));
    assert!(out.contains("(alt_instr[2], avx2)"), "{out}");

    let out = run(Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .args(["plan", "--cpu-features", "avx2"])
        .arg(&exe));
    assert!(
        out.contains(&format!("site {site_fn:#x} len 5: replacement")),
        "{out}"
    );
    assert!(out.contains("(alt_instr[1], !popcnt)"), "{out}");
    assert!(out.contains("(alt_instr[2], avx2)"), "{out}");
}

#[test]
fn inspect_and_verify_a_generated_paravirt_table() {
    let dir = scratch("inspect-pv");
    let c = write(&dir, "ops.c", OPS_C);
    let ops = dir.join("ops.o");
    cc_c(&c, &ops, &["-O2", "-fno-pic"]);
    let m = write(&dir, "main.c", MAIN_C);
    let table = dir.join("table.o");
    let emitted = alt_tablegen::emit::emit_files(
        &[&ops],
        "pv_ops",
        &alt_tablegen::emit::EmitOptions {
            table: "pv".into(),
            clobbers: None,
        },
    )
    .unwrap();
    std::fs::write(&table, &emitted.object).unwrap();
    let exe = dir.join("prog");
    cc_link(&exe, &[&m, &ops, &table], &["-O2", "-fno-pic", "-no-pie"]);
    let (input, t) = tables(&exe);
    assert_eq!(t.pv.len(), 3);
    let ops_seen: Vec<u8> = t.pv.iter().map(|p| p.op).collect();
    assert_eq!(ops_seen, vec![1, 0, 2]);
    assert!(t.pv.iter().all(|p| p.table == "pv" && p.site_len == 6));
    assert!(t.pv[0].site_bytes.starts_with("ff15"));
    let objs = input.objects().unwrap();
    assert_eq!(verify(&objs[0], &t), vec![]);
}

#[test]
fn mutated_tables_and_headers_never_panic_inspect_or_verify() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let dir = scratch("inspect-mutate");
    let exe = build(&dir, true);
    let orig = std::fs::read(&exe).unwrap();
    let (off, size) = {
        use object::{Object, ObjectSection};
        let f = object::File::parse(&*orig).unwrap();
        let s = f.section_by_name("alt_instr").unwrap();
        let (o, l) = s.file_range().unwrap();
        (o as usize, l as usize)
    };
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut m = orig.clone();
        for _ in 0..1 + next() % 4 {
            let r = next();
            let at = if r % 3 == 0 {
                (next() as usize) % m.len()
            } else if r % 3 == 1 {
                off + (next() as usize) % size
            } else {
                // A section header field.
                let shoff = u64::from_le_bytes(m[0x28..0x30].try_into().unwrap()) as usize;
                shoff.saturating_add((next() as usize) % 4096) % m.len()
            };
            m[at] = next() as u8;
        }
        let ok = catch_unwind(AssertUnwindSafe(|| {
            if let Ok(objs) = alt_tablegen::read::objects(Path::new("m"), &m) {
                for o in &objs {
                    if let Ok(t) = Tables::read(o) {
                        let _ = verify(o, &t);
                        let _ = plan(o, &t, &CpuSpec::from_names("popcnt").unwrap());
                        let _ = t.format_human();
                    }
                }
            }
        }));
        assert!(ok.is_ok(), "mutation {i} panicked");
    }
}

/// A paravirt table `T` (two slots) with three sites: a good `call *T+8(%rip)` (6 bytes), a
/// 5-byte `call rel32` site, and a site calling the wrong slot.
fn pv_fixture() -> String {
    quote_lines_program(
        r#"
.data
.globl T
.type T,@object
.size T, 16
T: .quad 0, 0
.text
.globl pv_sites
.type pv_sites,@function
pv_sites:
2: call *T+8(%rip)
3: call pv_sites
4: call *T(%rip)
5: ret
.size pv_sites, .-pv_sites
.pushsection alt_pv_T,\"aR\"
.balign 4
.long 2b - .
.byte 1, 3b - 2b
.short 0x01ff
.long 3b - .
.byte 0, 4b - 3b
.short 0x01ff
.long 4b - .
.byte 1, 5b - 4b
.short 0x01ff
.popsection
"#,
    )
}

fn quote_lines_program(asm: &str) -> String {
    format!(
        "__asm__(\n{});\nint main(void) {{ return 0; }}\n",
        quote_lines(asm)
    )
}

#[test]
fn verify_refuses_exactly_the_paravirt_sites_the_runtime_refuses() {
    let dir = scratch("inspect-pv-runtime");
    let src = write(&dir, "pv.c", &pv_fixture());
    let exe = dir.join("pv");
    cc_link(&exe, &[&src], &["-O2"]);
    let (input, t) = tables(&exe);
    let objs = input.objects().unwrap();
    let got: Vec<(usize, String)> = verify(&objs[0], &t)
        .into_iter()
        .map(|p| (p.index, p.reason))
        .collect();
    // The 5-byte site: an earlier alt-tablegen accepted any site of 5 bytes or more; the
    // runtime needs the 6 bytes of an indirect call. The third calls slot 0 for op 1.
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, 1);
    assert_eq!(
        got[0].1,
        "site of 5 bytes is shorter than the 6 bytes of an indirect call"
    );
    assert_eq!(got[1].0, 2);
    assert!(
        got[1]
            .1
            .starts_with("site does not begin with a call or tail jump through the slot at"),
        "{}",
        got[1].1
    );
}
