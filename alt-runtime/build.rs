//! Puts the linker-script fragment `alt.ld` on the link search path of every crate that
//! depends on this one (as cortex-m-rt does with `link.x`), so that a kernel's own linker
//! script can `INCLUDE alt.ld` without knowing where this crate lives.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("alt.ld"), include_str!("link/alt.ld")).expect("write alt.ld");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rerun-if-changed=link/alt.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
