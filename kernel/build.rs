//! Links the kernel with `kernel.ld`. That script `INCLUDE`s the runtime's `alt.ld` (on the
//! link search path through the runtime crate's own build script) and `alt-pv.ld`, written
//! here for the kernel's paravirt tables by `alt_runtime::linker::write_paravirt_section`.
//!
//! Also builds the module the kernel loads after boot (`module/module.c`): compiled with the
//! runtime's `alt.h`, its calls through `PV_OPS` found by `alt-tablegen` from their
//! relocations, and both objects combined with `ld -r` into `OUT_DIR/module.ko`.

use std::path::{Path, PathBuf};
use std::process::Command;

use alt_tablegen::build::Build;
use alt_tablegen::scan::Form;

/// Compiles the module and its paravirt table into one relocatable object.
fn build_module(dir: &Path, out: &Path) {
    let objects = out.join("module");
    std::fs::create_dir_all(&objects).expect("module dir");
    let mut build = Build::new("PV_OPS", "PV_OPS");
    build
        .file(dir.join("module/module.c"))
        .out_dir(&objects)
        .cargo_metadata(false);
    // Kernel code: no PIC (the loader resolves absolute and PC-relative relocations), no red
    // zone, no stack protector; every call through the table stays a patchable call.
    build
        .cc()
        .include(alt_runtime::c_header::INCLUDE_DIR)
        .opt_level(2)
        .pic(false)
        .flag("-fno-pic")
        .flag("-mcmodel=kernel")
        .flag("-mno-red-zone")
        .flag("-ffreestanding")
        .flag("-fno-stack-protector")
        .flag("-fno-asynchronous-unwind-tables")
        .flag("-fno-optimize-sibling-calls")
        .flag("-fno-gcse");
    let built = build
        .compile("alt_module")
        .unwrap_or_else(|e| panic!("alt-tablegen: {e}"));
    for s in built.emitted.entries.iter().chain(&built.emitted.skipped) {
        assert!(
            matches!(s.form, Form::CallRip | Form::CallAbs32),
            "{}+{:#x}: PV_OPS referenced by a `{}` instruction",
            s.section,
            s.offset,
            s.form.name()
        );
    }
    let ko = out.join("module.ko");
    let status = Command::new("ld")
        .arg("-r")
        .args(&built.objects)
        .arg(&built.table_object)
        .arg("-o")
        .arg(&ko)
        .status()
        .expect("run ld");
    assert!(status.success(), "ld -r failed for the module");
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("module/module.c").display()
    );
}

/// The kernel's paravirt operations tables (src/pv.rs).
const PARAVIRT_TABLES: &[&str] = &["PV_OPS"];

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let script = dir.join("kernel.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    let mut pv = String::new();
    for table in PARAVIRT_TABLES {
        alt_runtime::linker::write_paravirt_section(&mut pv, table).expect("format");
    }
    std::fs::write(out.join("alt-pv.ld"), pv).expect("write alt-pv.ld");
    build_module(&dir, &out);
    println!("cargo:rustc-link-arg-bins=-L{}", out.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        // GNU ld (BFD), the linker kernels are usually linked with (rustc would pick rust-lld).
        "-fuse-ld=bfd",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
