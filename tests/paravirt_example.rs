//! End-to-end: builds `examples/paravirt`, runs it under both backends (natively and under
//! `qemu-x86_64 -cpu qemu64`, `Nehalem`, `Haswell` and `max`), and checks the checksums, the decision and
//! bytes of every site, and that every site decodes with iced-x86 into whole instructions that
//! end exactly at the site's end, before and after patching.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::{example, json, run_native, run_on_model};
use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic};
use serde_json::Value;

/// Runs the example (under `qemu-x86_64 -cpu MODEL` when given) and parses its JSON.
fn run(backend: &str, qemu_cpu: Option<&str>) -> Value {
    let bin = example("paravirt");
    let out = match qemu_cpu {
        None => run_native(&bin, &["--backend", backend, "--json"], &[]),
        Some(cpu) => run_on_model(
            cpu,
            &bin,
            &[
                "--backend",
                backend,
                "--json",
                "--blocking-threads-run-no-sites",
            ],
            &[],
        ),
    };
    json(
        &out,
        &format!("paravirt --backend {backend} on {qemu_cpu:?}"),
    )
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} is not a string: {v}"))
}

fn num_of(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a number: {v}"))
}

fn hex(s: &str) -> Vec<u8> {
    common::unhex(s)
}

struct Site {
    addr: u64,
    op: String,
    decision: String,
    why: String,
    before: Vec<u8>,
    after: Vec<u8>,
}

fn sites(top: &Value) -> Vec<Site> {
    let a = top["paravirt"].as_array().expect("sites is an array");
    a.iter()
        .map(|s| {
            assert_eq!(str_of(s, "table"), "PV_OPS");
            Site {
                addr: num_of(s, "address"),
                op: str_of(s, "op").to_string(),
                decision: str_of(s, "decision").to_string(),
                why: str_of(s, "why").to_string(),
                before: hex(str_of(s, "before")),
                after: hex(str_of(s, "after")),
            }
        })
        .collect()
}

/// Decodes `code` at `addr` with iced-x86: whole valid instructions ending exactly at the end.
fn decode_whole(code: &[u8], addr: u64) -> Vec<iced_x86::Instruction> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        assert!(
            !i.is_invalid(),
            "site {addr:#x}: {code:02x?} does not decode at offset {}",
            i.ip() - addr
        );
        out.push(i);
    }
    assert_eq!(d.position(), code.len(), "site {addr:#x}: {code:02x?}");
    out
}

fn is_nop(i: &iced_x86::Instruction) -> bool {
    i.mnemonic() == Mnemonic::Nop
}

/// Expected (decision, through a thunk) per operation and backend.
fn expected(backend: &str, op: &str) -> (&'static str, bool) {
    match (backend, op) {
        ("native", "save_flags" | "restore_flags" | "irq_disable" | "irq_enable" | "cycles") => {
            ("inline", false)
        }
        ("native", "hypercall" | "io_delay") => ("direct_call", false),
        ("native", "halt") => ("direct_call", true),
        ("counting", "irq_disable" | "irq_enable") => ("inline", false),
        ("counting", "save_flags" | "restore_flags" | "cycles") => ("direct_call", true),
        ("counting", "hypercall") => ("direct_call", false),
        ("counting", "io_delay") => ("nop", false),
        ("counting", "halt") => ("trap", false),
        _ => panic!("unexpected op {op}"),
    }
}

fn check_sites(backend: &str, top: &Value) {
    let sites = sites(top);
    let mut seen: Vec<&str> = sites.iter().map(|s| s.op.as_str()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "cycles",
            "halt",
            "hypercall",
            "io_delay",
            "irq_disable",
            "irq_enable",
            "restore_flags",
            "save_flags"
        ],
        "every operation has a site"
    );
    for s in &sites {
        let (decision, thunk) = expected(backend, &s.op);
        assert_eq!(s.decision, decision, "{backend} {} at {:#x}", s.op, s.addr);
        assert_eq!(
            s.why.contains("register-saving thunk"),
            thunk,
            "{backend} {}: {}",
            s.op,
            s.why
        );
        // Before: one-byte NOPs, then call qword ptr [rip + PV_OPS + 8*op] at the end (a
        // thread inside the operation returns to the site's end).
        let before = decode_whole(&s.before, s.addr);
        let (call, pad) = before.split_last().expect("a call");
        assert_eq!(call.code(), Code::Call_rm64, "{}", s.op);
        assert_eq!(&s.before[s.before.len() - 6..][..2], &[0xff, 0x15]);
        assert!(pad.iter().all(is_nop));
        let min_len = match s.op.as_str() {
            "irq_disable" | "irq_enable" => 11,
            "cycles" => 9,
            "save_flags" | "restore_flags" => 7,
            _ => 6,
        };
        assert_eq!(s.before.len(), min_len, "{} site length", s.op);
        // All sites of one operation call the same slot.
        let slot = call.memory_displacement64();
        for o in sites.iter().filter(|o| o.op == s.op) {
            let d = decode_whole(&o.before, o.addr);
            assert_eq!(d.last().unwrap().memory_displacement64(), slot);
        }

        // After: whole instructions, exactly as decided.
        let after = decode_whole(&s.after, s.addr);
        match s.decision.as_str() {
            "inline" => match s.op.as_str() {
                "cycles" => assert_eq!(
                    s.after,
                    [0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0]
                ),
                "save_flags" => assert_eq!(&s.after[..3], &[0x48, 0x8b, 0x05]),
                "restore_flags" => assert_eq!(&s.after[..3], &[0x48, 0x89, 0x3d]),
                "irq_disable" => {
                    assert_eq!(&s.after[..3], &[0x48, 0xc7, 0x05]);
                    assert_eq!(&s.after[7..], &[0, 0, 0, 0]);
                }
                "irq_enable" => {
                    assert_eq!(&s.after[..3], &[0x48, 0xc7, 0x05]);
                    assert_eq!(&s.after[7..], &[0, 2, 0, 0]);
                }
                other => panic!("{other} has no inline sequence"),
            },
            "direct_call" => {
                // The call ends where the indirect call ended: at the site's end.
                let (call, pad) = after.split_last().expect("a call");
                assert_eq!(call.code(), Code::Call_rel32_64, "{}", s.op);
                assert_eq!(call.next_ip(), s.addr + s.after.len() as u64);
                assert!(pad.iter().all(is_nop), "{:02x?}", s.after);
            }
            "nop" => assert!(after.iter().all(is_nop), "{:02x?}", s.after),
            "trap" => {
                assert_eq!(after[0].code(), Code::Ud2);
                assert!(after[1..].iter().all(is_nop), "{:02x?}", s.after);
            }
            other => panic!("unknown decision {other}"),
        }
    }
    // The flag operations' inline sequences all address the same emulated flags word.
    let flag_words: Vec<u64> = sites
        .iter()
        .filter(|s| s.decision == "inline" && s.op != "cycles")
        .map(|s| decode_whole(&s.after, s.addr)[0].memory_displacement64())
        .collect();
    assert!(!flag_words.is_empty());
    assert!(
        flag_words.windows(2).all(|w| w[0] == w[1]),
        "{flag_words:x?}"
    );
}

fn check_run(backend: &str, top: &Value) -> String {
    assert_eq!(str_of(top, "backend"), backend);
    let checksum = str_of(top, "checksum").to_string();
    assert_eq!(str_of(top, "checksum_unpatched"), checksum, "{backend}");
    assert_eq!(str_of(top, "checksum_reverted"), checksum, "{backend}");
    let counts = &top["counts"];
    let counts = (
        num_of(counts, "flags"),
        num_of(counts, "cycles"),
        num_of(counts, "hypercalls"),
    );
    match backend {
        "native" => assert_eq!(counts, (0, 0, 0)),
        _ => assert_eq!(counts, (400_000, 200_000, 100_000)),
    }
    check_sites(backend, top);
    checksum
}

#[test]
fn both_backends_give_the_same_results_and_exact_sites() {
    let native = check_run("native", &run("native", None));
    let counting = check_run("counting", &run("counting", None));
    assert_eq!(native, counting);
}

#[test]
fn qemu_cpu_models() {
    // Fails with advice when qemu-user is missing (scripts/test.sh installs it).
    common::qemu();
    let reference = check_run("native", &run("native", None));
    for cpu in ["qemu64", "Nehalem", "Haswell", "max"] {
        for backend in ["native", "counting"] {
            let top = run(backend, Some(cpu));
            assert_eq!(check_run(backend, &top), reference, "{backend} on {cpu}");
        }
    }
}
