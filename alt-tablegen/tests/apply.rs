//! `alt-tablegen apply` and `plan --cpu` on recorded systems: the C example of `alt.h` built
//! with `cc`, planned by the runtime's planner, written patched, and run under
//! `qemu-x86_64 -cpu MODEL` next to the unpatched build; CPUID dumps (this tool's text form,
//! AIDA64 / InstLatx64 with several logical CPUs, a dump of 92 leaves) decided by the per-CPU
//! policy.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../alt-runtime/include")
}

/// The C example of alt.h, built for this host.
fn example(dir: &Path) -> PathBuf {
    let exe = dir.join("alt_example");
    run(Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(include_dir())
        .arg(include_dir().join("alt_example.c"))
        .arg("-o")
        .arg(&exe));
    exe
}

fn qemu(model: &str, exe: &Path) -> Output {
    Command::new("qemu-x86_64")
        .args(["-cpu", model])
        .arg(exe)
        .output()
        .expect("qemu-x86_64 (Debian qemu-user; scripts/test.sh installs it)")
}

fn apply_json(args: &[&str], input: &Path, output: &Path) -> serde_json::Value {
    let text = run(tool()
        .arg("apply")
        .args(args)
        .arg("--json")
        .arg(input)
        .arg(output));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn site<'a>(j: &'a serde_json::Value, condition: &str) -> &'a serde_json::Value {
    j["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["condition"] == condition)
        .unwrap_or_else(|| panic!("no site chose {condition}: {j:#}"))
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_c_example_patched_for_a_model_runs_on_it_with_the_same_results() {
    let dir = scratch("apply-example");
    let exe = example(&dir);
    let reference = run(&mut Command::new(&exe));
    assert!(
        reference.contains("popcount32(0xdeadbeef) = 24"),
        "{reference}"
    );

    let hsw = dir.join("alt_example.haswell");
    let j = apply_json(&["--cpu", "Haswell"], &exe, &hsw);
    assert_eq!(j["machine"], "x86-64");
    // POPCNT inline at the first site: f3 0f b8 c7 (popcnt eax, edi), then the padding.
    let popcnt = site(&j, "popcnt");
    assert_eq!(popcnt["choice"], "replacement");
    assert!(
        popcnt["after"].as_str().unwrap().starts_with("f30fb8"),
        "{popcnt}"
    );
    assert_eq!(site(&j, "bmi2")["choice"], "replacement");
    assert_eq!(site(&j, "lfence_serializing")["after"], "0faee8");
    // Only the sites changed, byte for byte at their file offsets.
    let (a, b) = (std::fs::read(&exe).unwrap(), std::fs::read(&hsw).unwrap());
    assert_eq!(a.len(), b.len());
    let mut expected = a.clone();
    for s in j["sites"].as_array().unwrap() {
        let off = s["file_offset"].as_u64().unwrap() as usize;
        let after = s["after"].as_str().unwrap();
        let bytes: Vec<u8> = (0..after.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&after[i..i + 2], 16).unwrap())
            .collect();
        expected[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    assert_eq!(b, expected, "nothing but the sites changed");

    let out = qemu("Haswell", &hsw);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), reference);
    // On a CPU without POPCNT the Haswell copy dies of SIGILL: the patch is real.
    let out = qemu("qemu64", &hsw);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(4),
        "{out:?}"
    );
    // Patched for qemu64, it runs there with the same results.
    let q64 = dir.join("alt_example.qemu64");
    let j = apply_json(&["--cpu", "qemu64"], &exe, &q64);
    assert_eq!(j["sites"][0]["choice"], "default");
    assert_eq!(site(&j, "!bmi2")["choice"], "replacement");
    let out = qemu("qemu64", &q64);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), reference);
    // The executable bit is kept.
    use std::os::unix::fs::PermissionsExt;
    assert_ne!(
        std::fs::metadata(&q64).unwrap().permissions().mode() & 0o111,
        0
    );
}

#[test]
fn apply_refuses_a_system_of_another_instruction_set_and_bad_tables() {
    let dir = scratch("apply-errors");
    let exe = example(&dir);
    let out = tool()
        .args(["apply", "--cpu", "cortex-a53"])
        .arg(&exe)
        .arg(dir.join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cpu describes AArch64 CPUs but"));
    assert!(!dir.join("x").exists(), "nothing written");
    // A table whose replacement is longer than its site: refused naming the entry.
    let src = write(
        &dir,
        "bad.c",
        r#"
int main(void) { return 0; }
__asm__(".text\n"
"2: nop\n3:\n"
".pushsection alt_replacement,\"axR\"\n4: popcnt %rdi, %rax\n5:\n.popsection\n"
".pushsection alt_instr,\"aR\"\n.balign 4\n"
".long 2b - .\n.long 4b - .\n.short 4\n.byte 3b - 2b\n.byte 5b - 4b\n.popsection\n");
"#,
    );
    let bad = dir.join("bad");
    cc_link(&bad, &[&src], &["-O2"]);
    let out = tool()
        .args(["apply", "--cpu", "Haswell"])
        .arg(&bad)
        .arg(dir.join("y"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alternative entry 0 at")
            && err.contains("replacement of 5 bytes is longer than the site of 1 bytes"),
        "{err}"
    );
}

/// Dumps of one CPU each in the AIDA64 form; a P-core with AVX-512 and an E-core without.
fn aida64_hybrid() -> String {
    let mut text = String::new();
    for (n, p_core) in [(0, true), (16, false)] {
        let ebx7: u32 = if p_core { 0xf39f_27eb } else { 0x239c_27eb };
        text.push_str(&format!(
            "------[ Logical CPU #{n} ]------\n\n\
             CPUID 00000000: 00000020-756E6547-6C65746E-49656E69 [GenuineIntel]\n\
             CPUID 00000001: 00090672-00800800-7FFAFBFF-BFEBFBFF\n\
             CPUID 00000007: 00000001-{ebx7:08X}-98C027AC-FC1CC410 [SL 00]\n\
             CPUID 0000000D: 000002E7-00000A88-00000A88-00000000 [SL 00]\n\
             CPUID 0000001A: {}-00000000-00000000-00000000\n\
             CPUID 80000000: 80000008-00000000-00000000-00000000\n\
             CPUID 80000001: 00000000-00000000-00000121-2C100800\n\n",
            if p_core { "40000001" } else { "20000001" }
        ));
    }
    text
}

#[test]
fn plan_decides_a_recorded_hybrid_dump_by_every_logical_cpu() {
    // An AVX-512 site and an AVX2 site: with the E-core in the dump, AVX-512 is not usable
    // (features AND), AVX2 is.
    let dir = scratch("plan-aida");
    let src = write(
        &dir,
        "p.c",
        r#"
int main(void) { return 0; }
__asm__(".text\n"
"2: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n3:\n"
"6: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n7:\n"
".pushsection alt_replacement,\"axR\"\n4: nop\n5:\n.popsection\n"
".pushsection alt_instr,\"aR\"\n.balign 4\n"
".long 2b - .\n.long 4b - .\n.short 0x00c\n.byte 3b - 2b\n.byte 5b - 4b\n"
".long 6b - .\n.long 4b - .\n.short 0x00b\n.byte 7b - 6b\n.byte 5b - 4b\n"
".popsection\n");
"#,
    );
    let exe = dir.join("p");
    cc_link(&exe, &[&src], &["-O2"]);
    let both = write(&dir, "adl.txt", &aida64_hybrid());
    let plan = |dump: &Path| -> serde_json::Value {
        let text = run(tool().args(["plan", "--json", "--cpu"]).arg(dump).arg(&exe));
        serde_json::from_str(&text).unwrap()
    };
    let j = plan(&both);
    let sites = j["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2);
    assert_eq!(
        sites[0]["chosen"],
        serde_json::Value::Null,
        "avx512f: the E-core lacks it"
    );
    assert_eq!(sites[1]["chosen"], 1, "avx2: every CPU has it");
    // The P-core alone would use AVX-512.
    let p_only: String = aida64_hybrid()
        .split("------[ Logical CPU #16")
        .next()
        .unwrap()
        .into();
    let p = write(&dir, "p-core.txt", &p_only);
    assert_eq!(plan(&p)["sites"][0]["chosen"], 0);
}

#[test]
fn plan_reads_a_full_dump_and_reports_dump_errors_as_they_are() {
    let dir = scratch("plan-dumps");
    let exe = example(&dir);
    // 92 leaf/subleaf answers, as a Granite Rapids dump has: more than the old 64.
    let mut text = String::from("0 0 00000020 756e6547 6c65746e 49656e69\n");
    text.push_str("1 0 000a06d1 00800800 7ffefbff bfebfbff\nxcr0 e7\n");
    for i in 0..90u32 {
        text.push_str(&format!("{:x} {:x} 0 0 0 0\n", 0x4 + i % 8, i / 8));
    }
    let full = write(&dir, "gnr.txt", &text);
    let out = run(tool().args(["plan", "--cpu"]).arg(&full).arg(&exe));
    assert!(out.contains("replacement"), "popcnt is in leaf 1: {out}");
    // A bad line is reported with its line number, not as "too many leaves".
    let bad = write(&dir, "bad.txt", "0 0 1 2 3 4\n1 0 1 2 3 zz\n");
    let out = tool()
        .args(["plan", "--cpu"])
        .arg(&bad)
        .arg(&exe)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CPUID dump line 2: bad hexadecimal number"),
        "{out:?}"
    );
    let empty = write(&dir, "empty.txt", "# nothing\n");
    let out = tool()
        .args(["plan", "--cpu"])
        .arg(&empty)
        .arg(&exe)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CPUID answers in the dump"));
}
