//! # alt
//!
//! Boot-time alternatives and paravirt patching for Rust: CPU-specific code patched into each
//! call site once, at start-up (hosted Linux processes) or boot (kernels), so that after patching
//! the site *is* the instruction: no flag, no branch, no indirect call.
//!
//! ```
//! use alt::alternative;
//!
//! /// Number of set bits: POPCNT inline where every CPU has it, the portable body elsewhere.
//! #[alternative(
//!     // SAFETY: POPCNT writes only its destination (the result) and the flags.
//!     popcnt => unsafe inline("popcnt {ret}, {x}")
//! )]
//! pub fn popcount(x: u64) -> u64 {
//!     x.count_ones() as u64
//! }
//!
//! /// A direct call to the AVX2 version where every CPU has AVX2.
//! #[alternative(avx2 => double_avx2)]
//! pub fn double(x: u32) -> u32 {
//!     x * 2
//! }
//!
//! #[target_feature(enable = "avx2")]
//! fn double_avx2(x: u32) -> u32 {
//!     x << 1
//! }
//!
//! fn main() {
//!     // Hosted Linux patches every site at load; patch_self returns that report.
//!     let report = alt::process::patch_self().expect("patching");
//!     assert_eq!(popcount(0xff), 8); // whatever this CPU runs best
//!     assert_eq!(double(21), 42);
//!     // A bare instruction swap: nothing, or an lfence where it serialises dispatch.
//!     // SAFETY: no operands; either sequence is harmless.
//!     unsafe { alt::asm::alternative!("", lfence_serializing => "lfence") };
//!     for site in &report.sites {
//!         println!("{:?} {} {}", site.function, site.decision(), site.why());
//!     }
//! }
//! ```
//!
//! # Where to read
//!
//! - [`#[alternative]`](alternative): a function whose every call is a patchable site; the whole
//!   reference (syntax, `{ret}` and operands, `clobber(...)`, `clobber_abi`, `preserve_vectors`,
//!   priority, `!cap`, direct calls, `unsafe inline`).
//! - [`asm::alternative!`](asm::alternative): a bare instruction swap inside a function.
//! - [`has!`]: a capability as a `bool`, one patched jump: `if alt::has!(avx2) { ... }`, or
//!   `alt::has!(avx2 => sum_avx2(&xs), _ => sum(&xs))` to run a safe `#[target_feature]`
//!   function where its capability holds.
//! - [`paravirt_ops!`]: an operations table whose calls are patched for a backend chosen at
//!   start-up, callable from C.
//! - [`capabilities`]: every capability name, generated from the table.
//! - [`process`]: patching a hosted process (at load, who calls what, threads, shared
//!   libraries); [`process::patch_self`], [`process::PatchOptions`]; [`report`].
//! - Kernels: [`plan`], [`patch`], [`linker`] and `docs/kernel.md`.
//! - `alt-tablegen verify BINARY` checks a build: valid tables, and every variant of every site
//!   changes only what the site declares.
//!
//! # Which tool
//!
//! - A **block or a loop** that depends on the CPU: [`has!`]. The branch is decided once per
//!   entry into the block and the code inside is ordinary code, unrolled and vectorised, or a
//!   `#[target_feature]` function an arm calls: a POPCNT loop chosen by `has!` runs at the speed
//!   of the loop compiled with POPCNT.
//! - **One operation at many call sites** (a popcount, a copy, a fence): [`#[alternative]`](alternative)
//!   or [`asm::alternative!`](asm::alternative). Every call becomes the instruction itself, with
//!   no branch at all; inside a hot loop, though, a site per element keeps the compiler from
//!   unrolling or vectorising across it and fixes its registers (`cargo bench --bench has`
//!   compares both).
//! - Where the build's target features guarantee a capability (`-C target-cpu=native`), all
//!   three emit the code for it directly: no site, nothing to patch.
//!
//! The crate is published as `alternatives`; its library is `alt`:
//!
//! ```toml
//! [dependencies]
//! alternatives = "0.1"
//! ```
//!
//! Features: `std` (default: hosted Linux), `alloc` (plans and reports without `std`, for kernels
//! with an allocator); with neither, the table types and capability names only.

#![no_std]

#[doc = include_str!("docs/alternative.md")]
pub use alt_macros::alternative;
#[doc = include_str!("docs/has.md")]
pub use alt_macros::has;
#[doc = include_str!("docs/paravirt_ops.md")]
pub use alt_macros::paravirt_ops;
// The runtime, as users name it: the modules a program, a library or a kernel uses. The
// instruction decoders, relocators and recorded CPU models stay in `alt_runtime`.
pub use alt_runtime::{
    capability, cpu, driver, errata, identity, isa, linker, memory, overrides, policy, rendezvous,
    table, writer, Capability, CapabilityKind, CapabilitySet, Errata, Features,
};
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub use alt_runtime::{no_patch_at_load, os, process};
#[cfg(feature = "alloc")]
pub use alt_runtime::{paravirt, patch, plan, report};

/// x86-64 pieces a kernel or a backend chooser needs: serialising the instruction stream and
/// detecting the hypervisor. The decoder and relocator are `alt_runtime::x86_64`'s.
pub mod x86_64 {
    pub use alt_runtime::x86_64::{hypervisor, serialize};
}

/// AArch64 pieces a kernel needs: the cache maintenance after writing instructions. The
/// relocator is `alt_runtime::aarch64`'s.
pub mod aarch64 {
    pub use alt_runtime::aarch64::cache;
}

/// Bare instruction swaps: [`alt::asm::alternative!`](crate::asm::alternative). (Rust has one
/// namespace for attribute and function-like macros, so this cannot live beside the
/// [`#[alternative]`](crate::alternative) attribute.)
pub mod asm {
    #[doc = include_str!("docs/asm_alternative.md")]
    pub use alt_macros::alternative_asm as alternative;
}

#[doc = include_str!("docs/capabilities.md")]
#[doc = alt_macros::__capability_reference!()]
pub mod capabilities {}

/// Everything the code the macros generate names, and nothing else: generated code reaches the
/// crate only through `<facade>::__private::...` (the facade being `::alt`, or the path given
/// with `crate = path`), so the runtime can be restructured without breaking it, and users never
/// name these items. Not a public API: anything here may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use alt_runtime::paravirt::{Backend, OpChoice, OpDesc, OpImpl, OpsCell, TableDesc};
    pub use alt_runtime::table::Clobbers;

    /// The hosted installer of `paravirt_ops!` tables, its options, result and error.
    #[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
    pub use alt_runtime::{
        driver::Patched as PvPatched,
        process::{
            install_paravirt as patch_self_with, PatchOptions, ProcessError as PvPatchError,
        },
    };

    pub use crate::__if_hosted as if_hosted;
}

/// Expands its input only when `alt` is built for a hosted Linux x86-64 process (the `std`
/// feature), so macro-generated hosted conveniences vanish in `no_std` builds.
#[doc(hidden)]
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
#[macro_export]
macro_rules! __if_hosted {
    ($($t:tt)*) => { $($t)* };
}

/// Expands its input only when `alt` is built for a hosted Linux x86-64 process.
#[doc(hidden)]
#[cfg(not(all(feature = "std", target_os = "linux", target_arch = "x86_64")))]
#[macro_export]
macro_rules! __if_hosted {
    ($($t:tt)*) => {};
}
