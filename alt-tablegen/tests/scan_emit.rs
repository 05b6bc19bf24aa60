//! scan and emit on objects, archives and binaries the tests build themselves.

mod common;

use std::path::Path;
use std::process::Command;

use alt_tablegen::emit::{emit_files, EmitOptions};
use alt_tablegen::scan::{scan_files, Form, Site};
use alt_tablegen::ErrorKind;
use common::*;

/// Every instruction form, written in assembly so offsets and bytes are exact.
const FORMS_S: &str = r#"
	.text
	.globl f1
	.type f1,@function
f1:
	call *pv_ops+16(%rip)
	call *pv_ops+8
	jmp *pv_ops+24(%rip)
	call pv_func
	jmp pv_func
	mov pv_ops+8(%rip), %rax
	mov %rax, pv_ops+8(%rip)
	lea pv_ops(%rip), %rdi
	mov $pv_ops, %eax
	movq $0x12345678, pv_ops+32(%rip)
	ret
	.size f1, .-f1
	.globl f2
	.type f2,@function
f2:
	call *local_table+8(%rip)
	call *other_data(%rip)
	notrack call *pv_ops(%rip)
	ret
	.size f2, .-f2
	.data
	.type local_table,@object
local_table:
	.quad 0, 0, 0
	.size local_table, 24
other_data:
	.quad 0
	.section .note.GNU-stack,"",@progbits
"#;

type Row = (u64, u32, &'static str, i64, Form, Option<u64>, &'static str);
/// offset, length, symbol, addend, form, op, bytes.
type OwnedRow = (u64, u32, String, i64, Form, Option<u64>, String);

fn rows(sites: &[Site]) -> Vec<OwnedRow> {
    sites
        .iter()
        .map(|s| {
            (
                s.offset,
                s.length,
                s.symbol.clone(),
                s.addend,
                s.form,
                s.op,
                alt_tablegen::scan::to_hex(&s.bytes),
            )
        })
        .collect()
}

fn expect(rows: &[Row]) -> Vec<OwnedRow> {
    rows.iter()
        .map(|r| (r.0, r.1, r.2.to_string(), r.3, r.4, r.5, r.6.to_string()))
        .collect()
}

const FORMS_EXPECTED: &[Row] = &[
    (
        0x00,
        6,
        "pv_ops",
        16,
        Form::CallRip,
        Some(2),
        "ff1500000000",
    ),
    (
        0x06,
        7,
        "pv_ops",
        8,
        Form::CallAbs32,
        Some(1),
        "ff142500000000",
    ),
    (0x0d, 6, "pv_ops", 24, Form::JmpRip, Some(3), "ff2500000000"),
    (0x13, 5, "pv_func", 0, Form::CallRel32, None, "e800000000"),
    (0x18, 5, "pv_func", 0, Form::JmpRel32, None, "e900000000"),
    (0x1d, 7, "pv_ops", 8, Form::Load, None, "488b0500000000"),
    (0x24, 7, "pv_ops", 8, Form::Store, None, "48890500000000"),
    (0x2b, 7, "pv_ops", 0, Form::Address, None, "488d3d00000000"),
    (0x32, 5, "pv_ops", 0, Form::Address, None, "b800000000"),
    (
        0x37,
        11,
        "pv_ops",
        32,
        Form::Store,
        None,
        "48c7050000000078563412",
    ),
    // Through the .data section symbol: .data+4 from the field, 4 bytes to the end.
    (
        0x43,
        6,
        "local_table",
        8,
        Form::CallRip,
        Some(1),
        "ff1500000000",
    ),
    // other_data (.data+0x18) lies outside local_table: not reported.
    (0x4f, 7, "pv_ops", 0, Form::Other, None, "3eff1500000000"),
];

fn forms_object(dir: &Path) -> std::path::PathBuf {
    let src = write(dir, "forms.s", FORMS_S);
    let obj = dir.join("forms.o");
    cc_c(&src, &obj, &[]);
    obj
}

#[test]
fn scan_classifies_every_form_with_exact_offsets_addends_and_bytes() {
    let dir = scratch("forms");
    let obj = forms_object(&dir);
    let report = scan_files(&[&obj], &["pv_ops", "pv_func", "local_table"]).unwrap();
    assert_eq!(rows(&report.sites), expect(FORMS_EXPECTED));
    for s in &report.sites {
        assert_eq!(s.address, s.offset, "relocatable: address == offset");
        assert_eq!(s.section, ".text");
        assert_eq!(s.member, None);
        assert_eq!(s.patchable, s.form.is_patchable());
        // Patchable exactly when the runtime's paravirt validator recognises the form: a
        // direct `call rel32` to the symbol is not a call through a table slot.
        let runtime = alt_runtime::paravirt::SiteForm::of(&s.bytes, s.address).is_some();
        assert_eq!(
            s.patchable,
            runtime,
            "{:?} {}",
            s.form,
            alt_tablegen::scan::to_hex(&s.bytes)
        );
    }
    assert_eq!(report.sites[0].reloc_offset, 2);
    assert_eq!(report.sites[0].reloc_type, "R_X86_64_PC32");
    assert_eq!(report.sites[1].reloc_type, "R_X86_64_32S");
    assert_eq!(report.summary.sites, 12);
    assert_eq!(report.summary.patchable, 4);
    assert_eq!(report.summary.not_patchable, 8);
    assert_eq!(report.summary.by_form["call_rip"], 2);
    assert_eq!(report.summary.by_form["address"], 2);
    assert_eq!(report.summary.by_form["store"], 2);

    // Only the requested symbols.
    let only = scan_files(&[&obj], &["pv_func"]).unwrap();
    assert_eq!(only.sites.len(), 2);
    assert!(only.sites.iter().all(|s| s.symbol == "pv_func"));
}

#[test]
fn scan_json_has_the_documented_schema() {
    let dir = scratch("json");
    let obj = forms_object(&dir);
    let out = run(Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .args(["scan", "--symbol", "pv_ops", "--json"])
        .arg(&obj));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = &v["sites"][0];
    assert_eq!(first["file"], obj.display().to_string());
    assert_eq!(first["member"], serde_json::Value::Null);
    assert_eq!(first["section"], ".text");
    assert_eq!(first["offset"], 0);
    assert_eq!(first["address"], 0);
    assert_eq!(first["length"], 6);
    assert_eq!(first["symbol"], "pv_ops");
    assert_eq!(first["addend"], 16);
    assert_eq!(first["form"], "call_rip");
    assert_eq!(first["patchable"], true);
    assert_eq!(first["op"], 2);
    assert_eq!(first["bytes"], "ff1500000000");
    assert_eq!(v["summary"]["sites"], 9);
    assert_eq!(v["summary"]["patchable"], 3);
    assert_eq!(v["summary"]["not_patchable"], 6);
    assert_eq!(v["summary"]["by_form"]["load"], 1);
}

#[test]
fn scan_reads_archive_members_and_skips_non_elf_members() {
    let dir = scratch("archive");
    let obj = forms_object(&dir);
    let c = write(&dir, "ops.c", OPS_C);
    let ops = dir.join("ops.o");
    cc_c(&c, &ops, &["-O2", "-fno-pic"]);
    let note = write(&dir, "notes.txt", "not an object\n");
    let lib = dir.join("libfix.a");
    run(Command::new("ar")
        .arg("rcs")
        .arg(&lib)
        .args([&obj, &ops, &note]));
    let report = scan_files(&[&lib], &["pv_ops"]).unwrap();
    let members: Vec<_> = report
        .sites
        .iter()
        .map(|s| s.member.clone().unwrap())
        .collect();
    assert_eq!(members.iter().filter(|m| *m == "forms.o").count(), 9);
    assert_eq!(members.iter().filter(|m| *m == "ops.o").count(), 4);
    assert_eq!(members.len(), 13);
}

/// The C fixture with -fno-pic: `pv_ops.b(x)` is `call *pv_ops+8(%rip)`; with -fPIC every
/// reference is a GOT load (`mov pv_ops@GOTPCREL(%rip), %rax`, then `call *8(%rax)`), which is
/// reported as `load` with addend 0 and cannot be patched.
#[test]
fn c_calls_through_the_table_are_call_rip_without_pic_and_got_loads_with_pic() {
    let dir = scratch("cforms");
    let c = write(&dir, "ops.c", OPS_C);
    let nopic = dir.join("nopic.o");
    let pic = dir.join("pic.o");
    cc_c(&c, &nopic, &["-O2", "-fno-pic"]);
    cc_c(&c, &pic, &["-O2", "-fPIC"]);

    let r = scan_files(&[&nopic], &["pv_ops"]).unwrap();
    let got: Vec<_> = r.sites.iter().map(|s| (s.form, s.addend, s.op)).collect();
    assert_eq!(
        got,
        vec![
            (Form::CallRip, 8, Some(1)),
            (Form::CallRip, 0, Some(0)),
            (Form::JmpRip, 16, Some(2)),
            (Form::Address, 0, None),
        ]
    );
    for s in r.sites.iter().filter(|s| s.patchable) {
        assert_eq!(
            &s.bytes[..2],
            &[0xff, if s.form == Form::JmpRip { 0x25 } else { 0x15 }]
        );
        assert_eq!(s.reloc_offset, s.offset + 2);
    }

    let r = scan_files(&[&pic], &["pv_ops"]).unwrap();
    assert_eq!(r.sites.len(), 4);
    for s in &r.sites {
        assert_eq!((s.form, s.addend, s.patchable), (Form::Load, 0, false));
        assert_eq!(s.reloc_type, "R_X86_64_REX_GOTPCRELX");
    }
    let e = emit_files(
        &[&pic],
        "pv_ops",
        &EmitOptions {
            table: "pv".into(),
            clobbers: None,
        },
    )
    .unwrap();
    assert_eq!(e.entries.len(), 0);
    assert_eq!(e.skipped.len(), 4);
}

struct Entry {
    op: u32,
    len: u32,
    clobbers: u32,
    addr: u64,
    bytes: String,
}

fn parse_entries(out: &str) -> Vec<Entry> {
    out.lines()
        .filter_map(|l| l.strip_prefix("entry "))
        .map(|l| {
            let f = |k: &str| {
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix(k))
                    .unwrap()
                    .to_string()
            };
            let num = |s: String| {
                let s = s.trim_start_matches("0x");
                u64::from_str_radix(s, if s.len() > 3 { 16 } else { 10 }).unwrap()
            };
            Entry {
                op: f("op=").parse().unwrap(),
                len: f("len=").parse().unwrap(),
                clobbers: u32::from_str_radix(f("clobbers=").trim_start_matches("0x"), 16).unwrap(),
                addr: num(f("addr=")),
                bytes: f("bytes="),
            }
        })
        .collect()
}

#[test]
fn emitted_table_links_beside_the_code_and_resolves_to_the_sites() {
    let dir = scratch("emit");
    let c = write(&dir, "ops.c", OPS_C);
    let ops = dir.join("ops.o");
    cc_c(&c, &ops, &["-O2", "-fno-pic"]);
    let m = write(&dir, "main.c", MAIN_C);
    let main = dir.join("main.o");
    cc_c(&m, &main, &["-O2", "-fno-pic"]);

    let table = dir.join("pv_table.o");
    let out = Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .args(["emit", "--symbol", "pv_ops", "--table", "pv", "-o"])
        .arg(&table)
        .arg(&ops)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrote 3 entries"), "{stderr}");
    assert!(stderr.contains("address reference to pv_ops+0"), "{stderr}");

    // The table object: one section, three 8-byte entries, each site a PC32 relocation.
    let data = std::fs::read(&table).unwrap();
    let relocs = run(Command::new("readelf").args(["-rSW"]).arg(&table));
    assert!(
        relocs.contains(
            "alt_pv_pv         PROGBITS        0000000000000000 000040 000018 00  AR  0   0  4"
        ),
        "{relocs}"
    );
    assert_eq!(relocs.matches("R_X86_64_PC32").count(), 3, "{relocs}");
    assert!(relocs.contains("call_b + 4"), "{relocs}");
    assert!(relocs.contains("tail_c + 0"), "{relocs}");
    assert!(data.len() < 2048);

    let prog = dir.join("prog");
    cc_link(
        &prog,
        &[&main, &ops, &table],
        &["-no-pie", "-Wl,--emit-relocs", "-Wl,--gc-sections"],
    );
    let out = run(&mut Command::new(&prog));
    let entries = parse_entries(&out);
    assert_eq!(entries.len(), 3, "{out}");
    let ops_seen: Vec<u32> = entries.iter().map(|e| e.op).collect();
    assert_eq!(ops_seen, vec![1, 0, 2]);
    for e in &entries {
        assert_eq!(e.len, 6);
        assert_eq!(e.clobbers, 0x3ff);
        assert_eq!(e.bytes.len(), 12);
    }
    assert!(entries[0].bytes.starts_with("ff15"));
    assert!(entries[1].bytes.starts_with("ff15"));
    assert!(entries[2].bytes.starts_with("ff25"));
    assert!(out.contains("results 202 303 301"), "{out}");

    // Scanning the final binary finds the same sites at the addresses the table resolved to.
    let r = scan_files(&[&prog], &["pv_ops"]).unwrap();
    let patchable: Vec<&Site> = r.sites.iter().filter(|s| s.patchable).collect();
    assert_eq!(patchable.len(), 3);
    for (s, e) in patchable.iter().zip(&entries) {
        assert_eq!(s.address, e.addr);
        assert_eq!(alt_tablegen::scan::to_hex(&s.bytes), e.bytes);
        assert_eq!(s.op, Some(u64::from(e.op)));
        assert_eq!(s.section, ".text");
    }

    // emit refuses the final binary.
    let err = emit_files(
        &[&prog],
        "pv_ops",
        &EmitOptions {
            table: "pv".into(),
            clobbers: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NotRelocatable), "{err}");
    assert!(err.to_string().contains("final binary"), "{err}");
}

#[test]
fn a_site_in_a_section_without_global_symbols_cannot_be_anchored() {
    let dir = scratch("anchor");
    let c = write(
        &dir,
        "s.c",
        "struct ops { long (*a)(long); }; extern struct ops pv_ops;\n\
         __attribute__((noinline)) static long hidden(long x) { return pv_ops.a(x) + 1; }\n\
         long (*get(void))(long) { return hidden; }\n",
    );
    let o = dir.join("s.o");
    cc_c(&c, &o, &["-O2", "-fno-pic", "-ffunction-sections"]);
    let err = emit_files(
        &[&o],
        "pv_ops",
        &EmitOptions {
            table: "pv".into(),
            clobbers: None,
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err.kind, ErrorKind::Unanchorable(_)), "{msg}");
    assert!(msg.contains("section .text.hidden"), "{msg}");
    assert!(msg.contains("no global symbol"), "{msg}");

    // Without -ffunction-sections the static function shares .text with `get`.
    cc_c(&c, &o, &["-O2", "-fno-pic"]);
    let e = emit_files(
        &[&o],
        "pv_ops",
        &EmitOptions {
            table: "pv".into(),
            clobbers: Some(alt_runtime::Clobbers::RAX),
        },
    )
    .unwrap();
    assert_eq!(e.entries.len(), 1);
}
