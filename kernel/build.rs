//! Links the kernel with `kernel.ld`. That script `INCLUDE`s the runtime's `alt.ld` (on the
//! link search path through the runtime crate's own build script) and `alt-pv.ld`, written
//! here for the kernel's paravirt tables by `alt_runtime::linker::write_paravirt_section`.

use std::path::PathBuf;

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
