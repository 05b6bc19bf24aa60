//! End-to-end: runs the `pv-c` program under both backends (natively and under
//! `qemu-x86_64 -cpu qemu64` and `-cpu Haswell`) and checks that the C call sites alt-tablegen
//! finds in the compiled C objects are exactly the C sites the runtime patched, with the exact
//! bytes each backend dictates, that every site decodes (iced-x86) into whole instructions ending
//! at the site's end, and that every checksum agrees.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use alt_tablegen::scan::{scan_files, Anchor, Form};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic};
use serde_json::Value;

const ROUNDS: &str = "20000";
const R: u64 = 20_000;

/// `PvOps::OP_NAMES` of `src/main.rs` and the fields of `struct pv_ops` in `csrc/pv_ops.h`.
const OPS: [&str; 7] = [
    "save_flags",
    "restore_flags",
    "irq_disable",
    "irq_enable",
    "mix",
    "hypercall",
    "cpu_relax",
];

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pv-c"))
}

fn run(backend: &str, qemu_cpu: Option<&str>) -> Value {
    let args = ["--backend", backend, "--rounds", ROUNDS, "--json"];
    let out = match qemu_cpu {
        None => common::run_native(&bin(), &args, &[]),
        Some(cpu) => {
            let mut with = args.to_vec();
            with.push("--blocking-threads-run-no-sites");
            common::run_on_model(cpu, &bin(), &with, &[])
        }
    };
    common::json(&out, &format!("pv-c --backend {backend} on {qemu_cpu:?}"))
}

/// A C call site as alt-tablegen finds it in the compiled C objects: (function, offset, op).
type CSite = (String, u64, u64);

/// Scans the C objects build.rs compiled, as `alt-tablegen scan --symbol PV_OPS` does.
fn scanned_c_sites() -> Vec<CSite> {
    let objects: Vec<PathBuf> = std::env::split_paths(env!("PV_C_OBJECTS")).collect();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let report = scan_files(&objects, &["PV_OPS"]).expect("scan the C objects");
    // 15 calls, and 3 tail calls in the c_tail_* functions.
    assert_eq!(report.summary.sites, 18, "{}", report.to_json());
    assert_eq!(report.summary.patchable, report.summary.sites);
    let mut sites: Vec<CSite> = report
        .sites
        .iter()
        .map(|s| {
            let Anchor::Symbol { name, delta } = &s.anchor else {
                panic!("no anchor: {s:?}")
            };
            if is_tail(name) {
                assert_eq!(s.form, Form::JmpRip, "{s:?}");
                assert_eq!(&s.bytes[..2], &[0xff, 0x25]);
            } else {
                assert_eq!(s.form, Form::CallRip, "{s:?}");
                assert_eq!(&s.bytes[..2], &[0xff, 0x15]);
            }
            assert_eq!(s.length, 6);
            (name.clone(), *delta as u64, s.op.expect("op"))
        })
        .collect();
    sites.sort();
    sites
}

/// The C functions whose sites are tail calls (`jmp *PV_OPS+8*op(%rip)`).
fn is_tail(function: &str) -> bool {
    function.starts_with("c_tail_")
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} is not a string: {v}"))
}

fn num_of(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a number: {v}"))
}

fn counts(v: &Value) -> (u64, u64, u64) {
    (
        num_of(v, "flags"),
        num_of(v, "mix"),
        num_of(v, "hypercalls"),
    )
}

/// Decodes `code` at `ip`: whole valid instructions ending exactly at the end.
fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
    if let Err(e) = common::decode_whole(code, ip) {
        panic!("site {ip:#x}: {e}");
    }
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

/// What a C site of `op` becomes under `backend`.
fn expected_decision(backend: &str, op: &str) -> &'static str {
    match (backend, op) {
        // The only native inline sequences short enough for a 6-byte C site.
        ("native", "mix" | "cpu_relax") => "inline",
        ("counting", "cpu_relax") => "nop",
        _ => "direct_call",
    }
}

/// Checks one run; returns its checksum.
fn check_run(backend: &str, top: &Value, scanned: &[CSite]) -> String {
    assert_eq!(str_of(top, "backend"), backend);
    assert_eq!(num_of(top, "rounds"), R);
    let checksum = str_of(top, "checksum").to_string();
    for k in [
        "checksum_unpatched",
        "checksum_rust",
        "checksum_rust_unpatched",
        "checksum_reverted",
    ] {
        assert_eq!(str_of(top, k), checksum, "{backend}: {k}");
    }
    assert_eq!(str_of(top, "flags_probe"), "0x0000020000000200");
    assert_eq!(str_of(top, "save_flags"), "0x200");
    let tail = str_of(top, "tail");
    assert_eq!(
        str_of(top, "tail_unpatched"),
        tail,
        "{backend}: tail calls unpatched"
    );
    assert_eq!(
        str_of(top, "tail_reverted"),
        tail,
        "{backend}: tail calls reverted"
    );
    let c = &top["counts"];
    match backend {
        "native" => {
            for phase in ["c", "rust", "probe"] {
                assert_eq!(counts(&c[phase]), (0, 0, 0), "{phase}");
            }
        }
        _ => {
            // Per round: 3 saves and a restore, a mix, a hypercall; the probe: 3 + 1 saves.
            assert_eq!(counts(&c["c"]), (4 * R, R, R));
            assert_eq!(counts(&c["rust"]), (4 * R, R, R));
            assert_eq!(counts(&c["probe"]), (4, 0, 0));
        }
    }

    // The program's C sites are the ones alt-tablegen finds in the C objects.
    let table = num_of(top, "table");
    let functions = &top["c_functions"];
    let mut listed: Vec<CSite> = top["c_sites"]
        .as_array()
        .expect("c_sites")
        .iter()
        .map(|s| {
            let f = str_of(s, "function").to_string();
            let off = num_of(s, "offset");
            assert_eq!(num_of(s, "address"), num_of(functions, &f) + off);
            let op = OPS.iter().position(|o| *o == str_of(s, "op")).unwrap() as u64;
            (f, off, op)
        })
        .collect();
    listed.sort();
    assert_eq!(listed, scanned, "C sites: program vs alt-tablegen scan");

    let sites = top["paravirt"].as_array().expect("sites");
    let mut by_addr: BTreeMap<u64, &Value> = BTreeMap::new();
    for s in sites {
        assert_eq!(str_of(s, "table"), "PV_OPS");
        assert!(by_addr.insert(num_of(s, "address"), s).is_none(), "{s}");
        // Every site, Rust or C: before is `call [rip + PV_OPS + 8*op]` (or, for a C tail
        // call, `jmp [rip + ...]`), after NOPs for a Rust site with room for an inline
        // sequence (so that the call returns to the site's end), and both before and after
        // decode into whole instructions ending at the site's end.
        let addr = num_of(s, "address");
        let before = common::unhex(str_of(s, "before"));
        let after = common::unhex(str_of(s, "after"));
        assert_eq!(before.len(), after.len());
        let op = OPS.iter().position(|o| *o == str_of(s, "op")).unwrap() as u64;
        let b = decode(&before, addr);
        let (call, pad) = b.split_last().expect("an instruction");
        assert!(pad.iter().all(|i| i.mnemonic() == Mnemonic::Nop), "{s}");
        match before[before.len() - 6..][..2] {
            [0xff, 0x15] => assert_eq!(call.code(), Code::Call_rm64, "{s}"),
            [0xff, 0x25] => assert_eq!(call.code(), Code::Jmp_rm64, "{s}"),
            _ => panic!("not a call or jump through the table: {s}"),
        }
        assert_eq!(call.memory_displacement64(), table + 8 * op, "{s}");
        decode(&after, addr);
    }
    assert!(
        sites.len() > scanned.len(),
        "the Rust sites are in the report too: {} sites",
        sites.len()
    );

    let targets = &top["call_targets"];
    for (f, off, op) in scanned {
        let addr = num_of(functions, f) + off;
        let s = by_addr
            .get(&addr)
            .unwrap_or_else(|| panic!("C site {f}+{off:#x} at {addr:#x} is not in the report"));
        let op_name = OPS[*op as usize];
        assert_eq!(str_of(s, "op"), op_name, "{f}+{off:#x}");
        assert_eq!(num_of(s, "length"), 6, "{f}+{off:#x}");
        let decision = str_of(s, "decision");
        assert_eq!(
            decision,
            expected_decision(backend, op_name),
            "{backend}: {f}+{off:#x} {op_name}"
        );
        let after = common::unhex(str_of(s, "after"));
        let tail = is_tail(f);
        assert_eq!(
            common::unhex(str_of(s, "before"))[1],
            if tail { 0x25 } else { 0x15 }
        );
        match (decision, tail) {
            ("inline", false) if op_name == "mix" => {
                // lea rax, [rsi + rdi*2]; 2-byte NOP
                assert_eq!(after, [0x48, 0x8d, 0x04, 0x7e, 0x66, 0x90]);
            }
            ("inline", true) if op_name == "mix" => {
                // lea rax, [rsi + rdi*2]; ret; NOP
                assert_eq!(after, [0x48, 0x8d, 0x04, 0x7e, 0xc3, 0x90]);
            }
            ("inline", false) => {
                // pause; 4-byte NOP
                assert_eq!(op_name, "cpu_relax");
                assert_eq!(after, [0xf3, 0x90, 0x0f, 0x1f, 0x40, 0x00]);
            }
            ("inline", true) => {
                // pause; ret; 3-byte NOP
                assert_eq!(op_name, "cpu_relax");
                assert_eq!(after, [0xf3, 0x90, 0xc3, 0x0f, 0x1f, 0x00]);
            }
            ("nop", false) => assert_eq!(after, [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]),
            // A nop in tail position returns at once.
            ("nop", true) => assert_eq!(after, [0xc3, 0x0f, 0x1f, 0x44, 0x00, 0x00]),
            ("direct_call", _) => {
                let mut i = decode(&after, addr);
                assert_eq!(i.len(), 2, "{after:02x?}");
                // A call ends where the indirect call ended (a one-byte NOP first), so that a
                // thread inside the function returns to a whole instruction; a jump returns
                // nowhere and comes first.
                let (want, nop_at) = if tail {
                    (Code::Jmp_rel32_64, 5)
                } else {
                    i.swap(0, 1);
                    (Code::Call_rel32_64, 0)
                };
                assert_eq!(i[0].code(), want, "{f}+{off:#x}");
                assert_eq!(after[nop_at], 0x90);
                // The backend's function itself: C sites allow the C ABI's clobbers, so no
                // register-saving thunk.
                assert_eq!(
                    i[0].near_branch_target(),
                    num_of(targets, op_name),
                    "{backend}: {f}+{off:#x} {op_name}"
                );
                assert!(str_of(s, "why").contains("called directly"), "{s}");
            }
            other => panic!("unexpected decision {other:?}"),
        }
    }
    format!("{checksum} {tail}")
}

#[test]
fn c_sites_are_found_and_patched_under_both_backends() {
    let scanned = scanned_c_sites();
    let native = check_run("native", &run("native", None), &scanned);
    let counting = check_run("counting", &run("counting", None), &scanned);
    assert_eq!(native, counting);
}

#[test]
fn qemu_cpu_models() {
    // Fails with advice when qemu-user is missing (scripts/test.sh installs it).
    common::qemu();
    let scanned = scanned_c_sites();
    let reference = check_run("native", &run("native", None), &scanned);
    for cpu in ["qemu64", "Nehalem", "Haswell", "max"] {
        for backend in ["native", "counting"] {
            let top = run(backend, Some(cpu));
            assert_eq!(
                check_run(backend, &top, &scanned),
                reference,
                "{backend} on {cpu}"
            );
        }
    }
}
