//! The C header `alt.h`: sites and table entries in this crate's ABI from C and assembly
//! (x86-64 and AArch64), for C code linked into a Rust program or kernel, and for programs
//! written in C alone (patched by a runtime of their own, or offline by `alt-tablegen apply`).
//!
//! A build script compiling C with the `cc` crate adds the header's directory:
//!
//! ```text
//! cc::Build::new().include(alt_runtime::c_header::INCLUDE_DIR).file("src/hot.c").compile("hot");
//! ```
//!
//! The header documents its macros (`ALT_ALTERNATIVE`, `ALT_ALTERNATIVE_2`, `ALT_CALL`, the
//! `alt_alternative_start`/`else`/`end` assembler macros, `alt_sync_icache`); `alt_example.c`
//! beside it uses them. `tests/alt_h.rs` checks its capability ids and entry layout against
//! this crate.

/// The text of `include/alt.h`.
pub const ALT_H: &str = include_str!("../include/alt.h");

/// The directory holding `alt.h` (and `alt_example.c`), on the machine that built this crate.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
