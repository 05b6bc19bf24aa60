//! Links the kernel with `kernel.ld`, which `INCLUDE`s the runtime's `alt.ld` fragment.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let script = dir.join("kernel.ld");
    let fragment_dir = dir.join("..").join("alt-runtime").join("link");
    println!("cargo:rerun-if-changed={}", script.display());
    println!(
        "cargo:rerun-if-changed={}",
        fragment_dir.join("alt.ld").display()
    );
    // `INCLUDE alt.ld` in kernel.ld is found through the library search path.
    println!("cargo:rustc-link-arg-bins=-L{}", fragment_dir.display());
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
