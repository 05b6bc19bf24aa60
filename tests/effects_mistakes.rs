//! Sites that break their promises to the compiler are rejected by `alt-tablegen verify`, naming
//! the site's function, the instruction and the register: this test binary holds such sites (never
//! run) beside correct ones, and checks its own executable.
//!
//! The first is the classic: `rep movsb` without `clobber(rcx, rdi, rsi)` compiles, and crashes
//! once patched, because the compiler keeps values in rcx, rsi and rdi across the site.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::hint::black_box;
use std::process::Command;

use alt::alternative;
use alt_tablegen::effects::{check, EffectsProblem};
use alt_tablegen::inspect::Tables;
use alt_tablegen::Input;

/// Wrong: `rep movsb` changes rcx, rsi and rdi, and the site declares none of them.
///
/// # Safety
///
/// Never called.
#[alternative(
    // SAFETY: deliberately wrong (the test's subject): no `clobber(rcx, rdi, rsi)`.
    erms => unsafe inline("mov rcx, rdx", "rep movsb")
)]
unsafe fn copy_without_clobbers(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) }
}

/// Right: the same with the clobbers declared.
///
/// # Safety
///
/// Never called.
#[alternative(
    // SAFETY: `rep movsb` changes rcx, rsi and rdi, all declared.
    erms => unsafe inline("mov rcx, rdx", "rep movsb"),
    clobber(rcx, rdi, rsi)
)]
unsafe fn copy_with_clobbers(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) }
}

/// Wrong: `cpuid` writes rbx (and rcx, rdx), none of which the site may change.
#[alternative(
    // SAFETY: deliberately wrong: cpuid writes rax, rbx, rcx and rdx.
    hypervisor => unsafe inline("mov eax, 1", "cpuid")
)]
fn leaf_one() -> u64 {
    0
}

/// Wrong: a vector register changed in a `preserve_vectors` site.
#[alternative(
    // SAFETY: deliberately wrong: xmm3 changes, and the site promises the vector registers.
    popcnt => unsafe inline("pxor xmm3, xmm3", "popcnt {ret}, {x}"),
    preserve_vectors
)]
fn popcount_vector_clobber(x: u64) -> u64 {
    x.count_ones() as u64
}

/// Wrong (bare): a store in a site declared `nomem`.
#[allow(clippy::pointers_in_nomem_asm_block)] // The mistake under test.
fn store_in_nomem(p: *mut u64) {
    // SAFETY: never called; deliberately wrong: the replacement stores, the site says nomem.
    unsafe {
        alt::asm::alternative!(
            "",
            clflushopt => "mov qword ptr [{0}], 0",
            in(reg) p,
            options(nomem, nostack)
        )
    };
}

/// Wrong (bare): flags changed in a `preserves_flags` site; a push in a `nostack` one; an output
/// in a compiler-chosen register is allowed to change, and only that one.
fn flags_and_stack(x: u64) -> u64 {
    let out: u64;
    // SAFETY: never called; deliberately wrong: `add` changes the flags, `push` uses the stack.
    unsafe {
        alt::asm::alternative!(
            "mov {0}, {1}",
            bmi1 => "mov {0}, {1}; add {0}, 1",
            avx2 => "push {1}; pop {0}",
            out(reg) out,
            in(reg) x,
            options(nomem, nostack, preserves_flags)
        )
    };
    out
}

extern "C" fn native_cycles() -> u64 {
    0
}

alt::paravirt_ops! {
    /// Wrong: the native inline sequence writes rdx, the operation declares only rax.
    pub table MISTAKE_OPS {
        /// The time-stamp counter, with a clobber forgotten.
        fn cycles() -> u64 {
            native: native_cycles,
            // SAFETY: deliberately wrong: rdtsc writes rdx, which is not in `clobbers`.
            unsafe inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
            clobbers: [rax],
        }
    }
}

/// Puts one site of each function in the binary without running any.
#[inline(never)]
fn sites() {
    if black_box(false) {
        let mut buf = [0u8; 4];
        // SAFETY: not reached.
        unsafe {
            copy_without_clobbers(buf.as_mut_ptr(), buf.as_ptr().add(2), 2);
            copy_with_clobbers(buf.as_mut_ptr(), buf.as_ptr().add(2), 2);
        }
        black_box(leaf_one());
        black_box(popcount_vector_clobber(3));
        store_in_nomem(buf.as_mut_ptr() as *mut u64);
        black_box(flags_and_stack(1));
        black_box(MISTAKE_OPS.cycles());
    }
}

fn problems() -> Vec<EffectsProblem> {
    sites();
    let exe = std::env::current_exe().expect("test binary");
    let input = Input::open(&exe).expect("open the test binary");
    let objects = input.objects().expect("objects");
    let tables = Tables::read(&objects[0]).expect("tables");
    let report = check(&objects[0], &tables);
    assert!(report.sites_checked >= 7, "{report:?}");
    report.problems
}

fn of<'a>(all: &'a [EffectsProblem], function: &str) -> Vec<&'a EffectsProblem> {
    all.iter()
        .filter(|p| p.function.ends_with(function))
        .collect()
}

/// (variant contains, instruction, what changes) for each problem.
fn summary(ps: &[&EffectsProblem]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ps
        .iter()
        .map(|p| (p.instruction.clone(), p.changes.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn rep_movsb_without_its_clobbers_is_rejected_naming_each_register() {
    let all = problems();
    let ps = of(&all, "effects_mistakes::copy_without_clobbers");
    assert_eq!(
        summary(&ps),
        [
            ("mov rcx, rdx".to_string(), "rcx".to_string()),
            ("rep movsb [rdi], [rsi]".to_string(), "rdi".to_string()),
            ("rep movsb [rdi], [rsi]".to_string(), "rsi".to_string()),
        ],
        "{all:#?}"
    );
    assert!(ps.iter().all(|p| p.variant.contains("erms => inline")));
    assert!(ps[0].reason.contains("clobber(...)"), "{}", ps[0].reason);
    assert!(
        of(&all, "effects_mistakes::copy_with_clobbers").is_empty(),
        "{all:#?}"
    );
}

#[test]
fn implicit_operands_vectors_memory_flags_and_stack_are_judged() {
    let all = problems();
    assert_eq!(
        summary(&of(&all, "effects_mistakes::leaf_one")),
        [
            ("cpuid".to_string(), "rbx".to_string()),
            ("cpuid".to_string(), "rcx".to_string()),
            ("cpuid".to_string(), "rdx".to_string()),
        ],
        "{all:#?}"
    );
    let v = of(&all, "effects_mistakes::popcount_vector_clobber");
    assert_eq!(v.len(), 1, "{all:#?}");
    assert_eq!(v[0].instruction, "pxor xmm3, xmm3");

    // Bare sites are named module:line.
    let bare: Vec<&EffectsProblem> = all
        .iter()
        .filter(|p| p.function.starts_with("effects_mistakes:"))
        .filter(|p| !p.function.contains("::"))
        .collect();
    let mut got: Vec<(String, String)> = bare
        .iter()
        .map(|p| (p.instruction.clone(), p.changes.clone()))
        .collect();
    got.sort();
    got.dedup();
    let want: Vec<(String, String)> = [
        ("mov qword ptr [rax], 0", "memory"),
        // The first stack use of the variant is the one named.
        ("push rcx", "stack"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // Register numbers are the compiler's choice: compare the shapes.
    let shape = |s: &str| {
        s.split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("")
            .to_string()
    };
    let got_shapes: Vec<(String, String)> =
        got.iter().map(|(i, c)| (shape(i), c.clone())).collect();
    for (i, c) in &want {
        assert!(
            got_shapes.contains(&(shape(i), c.clone())),
            "missing {i} / {c} in {got:#?}"
        );
    }
    assert!(
        got.iter()
            .any(|(i, c)| i.starts_with("add ") && c == "flags"),
        "{got:#?}"
    );
    // The output register of flags_and_stack may change: no register problem there.
    assert!(
        bare.iter()
            .all(|p| ["memory", "stack", "flags"].contains(&p.changes.as_str())),
        "{bare:#?}"
    );

    let pv: Vec<&EffectsProblem> = all
        .iter()
        .filter(|p| p.function.contains("alt_pv_MISTAKE_OPS"))
        .collect();
    assert_eq!(pv.len(), 1, "{all:#?}");
    assert_eq!(
        (pv[0].instruction.as_str(), pv[0].changes.as_str()),
        ("rdtsc", "rdx")
    );
    assert!(pv[0].variant.contains("native inline"));
}

/// The `alt-tablegen` binary `cargo test` built in this profile, built if missing.
fn tablegen() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("alt-tablegen");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "alt-tablegen", "--bin", "alt-tablegen"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build").success());
    }
    bin
}

#[test]
fn the_verify_command_fails_naming_function_instruction_and_register() {
    sites();
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(tablegen())
        .arg("verify")
        .arg(&exe)
        .output()
        .expect("run alt-tablegen verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("copy_without_clobbers") && l.contains("rep movsb"))
        .unwrap_or_else(|| panic!("no line for the rep movsb site in:\n{stderr}"));
    assert!(
        line.contains("changes rsi") || line.contains("changes rdi"),
        "{line}"
    );
    assert!(stderr.contains("changes rcx"), "{stderr}");
}
