//! # alt
//!
//! Boot-time alternatives and paravirt patching for Rust. This facade re-exports the runtime
//! ([`alt_runtime`]) and the macros (`alt-macros`): [`alternative`] (attribute),
//! [`asm::alternative!`](crate::asm::alternative) and [`paravirt_ops!`].
//!
//! # Alternatives
//!
//! ```
//! use alt::alternative;
//!
//! /// POPCNT inline where every CPU has it; the portable body elsewhere.
//! #[alternative(popcnt => inline("popcnt {ret}, {x}"))]
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
//!     assert_eq!(popcount(0xff), 8); // before patching: the default, through a thunk
//!     let report = alt::process::patch_self().expect("patching");
//!     assert_eq!(popcount(0xff), 8); // now whatever this CPU runs best
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
//! # Paravirt operations
//!
//! [`paravirt_ops!`] declares an operations table: a `#[no_mangle]` static array of `extern "C"`
//! function pointers (C calls it as `call *TABLE+8*op(%rip)`), one method per operation whose
//! every call is a patchable site, and a backend type. At start-up a backend is installed: each
//! site becomes the native inline sequence, a direct call, NOPs or a trap (see
//! [`paravirt`] and `docs/paravirt.md`).
//!
//! ```no_run
//! extern "C" fn native_cycles() -> u64 {
//!     // SAFETY: rdtsc is available on every x86-64 CPU.
//!     unsafe { core::arch::x86_64::_rdtsc() }
//! }
//! extern "C" fn native_hypercall(nr: u64, arg: u64) -> u64 {
//!     nr ^ arg
//! }
//! unsafe extern "C" fn counted_hypercall(nr: u64, arg: u64) -> u64 {
//!     nr ^ arg
//! }
//!
//! alt::paravirt_ops! {
//!     /// Example operations.
//!     pub table DOC_OPS {
//!         /// Time-stamp counter.
//!         fn cycles() -> u64 {
//!             native: native_cycles,
//!             inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
//!             clobbers: [rax, rdx],
//!         }
//!         /// A "hypercall".
//!         fn hypercall(nr: u64, arg: u64) -> u64 { native: native_hypercall, clobbers: C }
//!     }
//! }
//!
//! fn main() {
//!     let backend = DocOpsBackend {
//!         hypercall: alt::paravirt::OpImpl::Function(counted_hypercall),
//!         ..DocOpsBackend::NATIVE
//!     };
//!     // SAFETY: single-threaded start-up; counted_hypercall is sound for any arguments.
//!     let patched = unsafe { DOC_OPS.install(&backend) }.expect("patching");
//!     println!("{}", patched.report());
//!     let t = DOC_OPS.cycles(); // rdtsc inline
//!     let h = DOC_OPS.hypercall(1, 2); // call counted_hypercall
//!     # let _ = (t, h);
//! }
//! ```
//!
//! Declare tables at module level (not inside a function body): the generated helper module
//! reaches the native functions through `use super::*`.

#![no_std]

pub use alt_macros::{alternative, paravirt_ops};
pub use alt_runtime::*;

/// Bare instruction swaps: `alt::asm::alternative!`. (Rust has one namespace for attribute and
/// function-like macros, so this cannot live beside the `#[alternative]` attribute.)
pub mod asm {
    pub use alt_macros::alternative_asm as alternative;
}

/// Everything the code the macros generate names, and nothing else: generated code reaches the
/// crate only through `<facade>::__private::...` (the facade being `::alt`, or the path given
/// with `crate = path`), so the runtime can be restructured without breaking it, and users never
/// name these items. Not a public API: anything here may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use alt_runtime::paravirt::{
        Backend, OpChoice, OpDesc, OpImpl, OpsCell, PvPatchError, PvPatched, TableDesc,
    };
    pub use alt_runtime::table::Clobbers;

    /// The hosted installer of `paravirt_ops!` tables and its options.
    #[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
    pub use alt_runtime::{paravirt::patch_self_with, process::PatchOptions};

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
