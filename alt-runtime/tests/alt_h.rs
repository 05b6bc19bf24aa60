//! `include/alt.h` against the Rust definitions it mirrors: every capability id, the flags,
//! the entry layout (entries assembled from C and from assembly, read back as `AltEntry`), and
//! the cache-maintenance sequence of `aarch64::cache` (the header's C twin, run on the host).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use alt_runtime::aarch64::cache::{sync_sequence, CacheOp, Domain};
use alt_runtime::table::{AltEntry, AltFlags, ALT_ENTRY_SIZE};
use alt_runtime::Capability;

fn header() -> PathBuf {
    let p = Path::new(alt_runtime::c_header::INCLUDE_DIR).join("alt.h");
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        alt_runtime::c_header::ALT_H
    );
    p
}

fn defines() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(header()).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next().unwrap_or("").to_string()))
        })
        .collect()
}

fn c_name(cap: Capability) -> String {
    format!(
        "ALT_CAP_{}",
        cap.name().to_ascii_uppercase().replace('.', "_")
    )
}

#[test]
fn every_capability_id_is_in_the_header_and_nothing_else() {
    let d = defines();
    let mut expected = Vec::new();
    for cap in Capability::all() {
        let name = c_name(cap);
        let value = d
            .get(&name)
            .unwrap_or_else(|| panic!("alt.h lacks {name} ({:#05x})", cap.id()));
        let v = u16::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(v, cap.id(), "{name}");
        expected.push(name);
    }
    let mut in_header: Vec<&String> = d.keys().filter(|k| k.starts_with("ALT_CAP_")).collect();
    in_header.sort();
    expected.sort();
    assert_eq!(
        in_header.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(d["ALT_FLAG_NOT"], format!("{:#06x}", AltFlags::NOT.bits()));
    assert_eq!(
        d["ALT_FLAG_DIRECT_CALL"],
        format!("{:#06x}", AltFlags::DIRECT_CALL.bits())
    );
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("alt-h-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test.sh installs the toolchains)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bytes of section `name` of an object, through `objcopy -O binary`.
fn section(objcopy: &str, obj: &Path, name: &str) -> Vec<u8> {
    let out = obj.with_extension(format!("{name}.bin"));
    run(Command::new(objcopy)
        .args(["-O", "binary", "--only-section", name])
        .arg(obj)
        .arg(&out));
    std::fs::read(out).unwrap()
}

/// Sites from C (one per macro) and from assembly, for `cc`, assembled; their entries read
/// back with the Rust layout: lengths, keys and flags as written.
fn entries_for(cc: &str, objcopy: &str, c_body: &str, s_body: &str, tag: &str) -> Vec<AltEntry> {
    let dir = scratch(tag);
    let c = dir.join("sites.c");
    std::fs::write(&c, format!("#include \"alt.h\"\n{c_body}")).unwrap();
    let s = dir.join("sites.S");
    std::fs::write(&s, format!("#include \"alt.h\"\n.text\n{s_body}")).unwrap();
    let inc = header().parent().unwrap().to_path_buf();
    let mut all = Vec::new();
    for src in [&c, &s] {
        // sites_c.o, sites_S.o
        let ext = src.extension().unwrap().to_str().unwrap();
        let obj = dir.join(format!("sites_{ext}.o"));
        run(Command::new(cc)
            .args(["-O2", "-Wall", "-Werror", "-c", "-I"])
            .arg(&inc)
            .arg(src)
            .arg("-o")
            .arg(&obj));
        let table = section(objcopy, &obj, "alt_instr");
        assert_eq!(table.len() % ALT_ENTRY_SIZE, 0);
        all.extend(
            table
                .chunks_exact(ALT_ENTRY_SIZE)
                .map(|c| AltEntry::from_bytes(c.try_into().unwrap())),
        );
    }
    all
}

fn cap(name: &str) -> u16 {
    Capability::from_name(name).unwrap().id()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_entries_have_the_rust_layout() {
    let c = r#"
unsigned long pc(unsigned long x) {
    unsigned long r;
    __asm__(ALT_ALTERNATIVE("mov %1, %0", "popcnt %1, %0", ALT_CAP_POPCNT) : "=r"(r) : "r"(x));
    return r;
}
void f(void) { __asm__ volatile(ALT_ALTERNATIVE_2("", "lfence", ALT_CAP_LFENCE_SERIALIZING,
                                                  "mfence", ALT_NOT(ALT_CAP_SSE3))); }
void target(void);
void g(void) { __asm__ volatile(ALT_CALL("nop", target, ALT_CAP_AVX2) ::: "memory"); }
"#;
    let s = "alt_alternative_start\n mov %rdi, %rax\n alt_alternative_else\n popcnt %rdi, %rax\n lzcnt %rdi, %rax\n alt_alternative_end ALT_CAP_LZCNT\n";
    let e = entries_for("cc", "objcopy", c, s, "x86");
    let got: Vec<(u16, u8, u8)> = e
        .iter()
        .map(|e| (e.key, e.site_len, e.replacement_len))
        .collect();
    assert_eq!(
        got,
        [
            // mov r64, r64 (3 bytes) / popcnt r64, r64 (5): the site is padded to 5.
            (cap("popcnt"), 5, 5),
            // Empty default: the site is the longest replacement (mfence/lfence, 3 bytes).
            (cap("lfence_serializing"), 3, 3),
            (cap("sse3") | AltFlags::NOT.bits(), 3, 3),
            // A one-byte NOP padded to the 5 bytes of `call rel32`; no replacement bytes.
            (cap("avx2") | AltFlags::DIRECT_CALL.bits(), 5, 0),
            // Assembly: mov (3) / popcnt + lzcnt (10).
            (cap("lzcnt"), 10, 10),
        ]
    );
}

fn aarch64_gcc() -> &'static str {
    "aarch64-linux-gnu-gcc"
}

#[test]
fn aarch64_entries_have_the_rust_layout_and_nop_words() {
    let c = r#"
unsigned long f(unsigned long x) {
    unsigned long r;
    __asm__(ALT_ALTERNATIVE("mov %0, %1", "add %0, %1, #1\n\tadd %0, %0, #1",
                            ALT_CAP_ERRATUM_ARM64_843419) : "=&r"(r) : "r"(x));
    return r;
}
void target(void);
void g(void) { __asm__ volatile(ALT_CALL("nop", target, ALT_NOT(ALT_CAP_ERRATUM_ARM64_1319367))
                                ::: "x30", "memory"); }
"#;
    let s = "alt_alternative_start\n mov x0, #1\n ret\n alt_alternative_else\n b 1f\n alt_alternative_end ALT_CAP_ERRATUM_ARM64_1418040\n1: ret\n";
    let e = entries_for(aarch64_gcc(), "aarch64-linux-gnu-objcopy", c, s, "aarch64");
    let got: Vec<(u16, u8, u8)> = e
        .iter()
        .map(|e| (e.key, e.site_len, e.replacement_len))
        .collect();
    assert_eq!(
        got,
        [
            (cap("erratum_arm64_843419"), 8, 8),
            (
                cap("erratum_arm64_1319367") | AltFlags::NOT.bits() | AltFlags::DIRECT_CALL.bits(),
                4,
                0
            ),
            (cap("erratum_arm64_1418040"), 8, 4),
        ]
    );
    // The padding of the first C site is a NOP word (mov is 4 bytes, the site 8).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alt-h-aarch64");
    let text = section("aarch64-linux-gnu-objcopy", &dir.join("sites_c.o"), ".text");
    assert!(
        text.chunks_exact(4)
            .any(|w| w == 0xd503_201fu32.to_le_bytes()),
        "a NOP word in the text"
    );
}

/// The header's `alt_cache_sequence`, compiled for the host, against `sync_sequence`.
#[test]
fn the_c_cache_sequence_is_the_rust_one() {
    let dir = scratch("cache");
    let src = dir.join("seq.c");
    std::fs::write(
        &src,
        r#"
#include <stdio.h>
#include <stdlib.h>
#include "alt.h"
int main(int argc, char **argv) {
    for (int i = 1; i + 2 < argc; i += 3) {
        struct alt_cache_op ops[5];
        int n = alt_cache_sequence(strtoul(argv[i], 0, 0), strtoul(argv[i + 1], 0, 0),
                                   strtoul(argv[i + 2], 0, 0), ops);
        for (int k = 0; k < n; k++)
            printf("%d %#lx %#lx %#lx;", ops[k].kind, ops[k].addr, ops[k].len, ops[k].line);
        printf("\n");
    }
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("seq");
    run(Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(header().parent().unwrap())
        .arg(&src)
        .arg("-o")
        .arg(&exe));
    let ctrs: [u64; 6] = [
        0x8444_c004, // cortex-a57 under qemu: DminLine 4, IminLine 4
        0x8444_8004,
        0x8003_8003, // qemu max: 32-byte lines
        0x8444_c004 | (1 << 28),
        0x8444_c004 | (1 << 29),
        0x8444_c004 | (3 << 28),
    ];
    let ranges: [(u64, u64); 6] = [
        (0x40_1000, 4),
        (0x40_103c, 8),
        (0x40_1000, 0),
        (0x40_0ff8, 0x50),
        (u64::MAX - 3, 4),
        (0xffff_ffff_ffff_ffc0, 0x80),
    ];
    let mut args = Vec::new();
    let mut expected = String::new();
    for ctr in ctrs {
        for (addr, len) in ranges {
            args.extend([
                format!("{ctr:#x}"),
                format!("{addr:#x}"),
                format!("{len:#x}"),
            ]);
            for op in sync_sequence(ctr, addr, len).ops() {
                let (kind, a, l, line) = match *op {
                    CacheOp::CleanDcacheToPoU { addr, len, line } => (1, addr, len, line),
                    CacheOp::Dsb(Domain::Ish) => (2, 0, 0, 0),
                    CacheOp::InvalidateIcacheToPoU { addr, len, line } => (3, addr, len, line),
                    CacheOp::Isb => (4, 0, 0, 0),
                    CacheOp::Dsb(d) => panic!("unexpected {d:?}"),
                };
                let hex = |v: u64| {
                    if v == 0 {
                        "0".to_string()
                    } else {
                        format!("{v:#x}")
                    }
                };
                expected.push_str(&format!("{kind} {} {} {};", hex(a), hex(l), hex(line)));
            }
            expected.push('\n');
        }
    }
    let got = run(Command::new(&exe).args(&args));
    assert_eq!(got, expected);
}
