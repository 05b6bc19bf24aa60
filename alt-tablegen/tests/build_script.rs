//! The build-script helper, called as a build script would, with a temporary OUT_DIR.

mod common;

use std::path::Path;
use std::process::Command;

use alt_tablegen::build::{Build, LinkMode};
use common::*;

fn build(dir: &Path, mode: LinkMode) -> alt_tablegen::build::Output {
    let src = write(dir, "ops.c", OPS_C);
    let mut b = Build::new("pv_ops", "pv");
    b.file(&src)
        .out_dir(dir)
        .cargo_metadata(false)
        .link_mode(mode);
    b.cc()
        .target("x86_64-unknown-linux-gnu")
        .host("x86_64-unknown-linux-gnu")
        .opt_level(2)
        .warnings(false);
    b.compile("pvops").unwrap()
}

fn check_run(exe: &Path) {
    let out = run(&mut Command::new(exe));
    let entries: Vec<&str> = out.lines().filter(|l| l.starts_with("entry ")).collect();
    assert_eq!(entries.len(), 3, "{out}");
    assert!(entries[0].contains("op=1 len=6 clobbers=0x3ff"), "{out}");
    assert!(entries[0].contains("bytes=ff15"), "{out}");
    assert!(
        entries[2].contains("op=2") && entries[2].contains("bytes=ff25"),
        "{out}"
    );
    assert!(out.contains("results 202 303 301"), "{out}");
}

#[test]
fn build_compiles_scans_emits_and_prints_link_args() {
    let dir = scratch("build-objects");
    let out = build(&dir, LinkMode::Objects);
    assert_eq!(out.objects.len(), 1);
    assert_eq!(out.table_object, dir.join("alt_pv_pv.o"));
    assert!(out.table_object.exists());
    assert_eq!(out.emitted.entries.len(), 3);
    assert_eq!(out.emitted.skipped.len(), 1);
    assert!(out.archive.is_none());
    let args: Vec<&String> = out
        .cargo_lines
        .iter()
        .filter(|l| l.starts_with("cargo:rustc-link-arg="))
        .collect();
    assert_eq!(args.len(), 2, "{:?}", out.cargo_lines);
    assert_eq!(
        args[1],
        &format!("cargo:rustc-link-arg={}", out.table_object.display())
    );
    assert!(out.cargo_lines[0].starts_with("cargo:rerun-if-changed="));

    // Link as the link arguments say, with a PIE main (the default, like a Rust binary).
    let main = write(&dir, "main.c", MAIN_C);
    let exe = dir.join("prog");
    cc_link(&exe, &[&main, &out.objects[0], &out.table_object], &["-O2"]);
    check_run(&exe);
}

#[test]
fn whole_archive_mode_puts_the_table_in_the_archive() {
    let dir = scratch("build-archive");
    let out = build(&dir, LinkMode::WholeArchive);
    let lib = out.archive.clone().unwrap();
    assert_eq!(lib, dir.join("libpvops.a"));
    assert!(out
        .cargo_lines
        .contains(&"cargo:rustc-link-lib=static:+whole-archive=pvops".to_string()));
    assert!(out
        .cargo_lines
        .contains(&format!("cargo:rustc-link-search=native={}", dir.display())));
    let members = run(Command::new("ar").arg("t").arg(&lib));
    assert!(members.lines().any(|m| m == "alt_pv_pv.o"), "{members}");

    let main = write(&dir, "main.c", MAIN_C);
    let exe = dir.join("prog");
    let lib_s = lib.display().to_string();
    run(Command::new("cc")
        .arg("-O2")
        .arg(&main)
        .args([
            "-Wl,--whole-archive",
            &lib_s,
            "-Wl,--no-whole-archive",
            "-o",
        ])
        .arg(&exe));
    check_run(&exe);
}

#[test]
fn bin_objects_mode_links_only_the_binaries() {
    let dir = scratch("build-bin-objects");
    let out = build(&dir, LinkMode::BinObjects);
    let link: Vec<&String> = out
        .cargo_lines
        .iter()
        .filter(|l| !l.starts_with("cargo:rerun-if-changed="))
        .collect();
    assert_eq!(
        link,
        [
            &format!("cargo:rustc-link-arg-bins={}", out.objects[0].display()),
            &format!("cargo:rustc-link-arg-bins={}", out.table_object.display()),
        ],
        "{:?}",
        out.cargo_lines
    );
    assert!(out.archive.is_none());
}
