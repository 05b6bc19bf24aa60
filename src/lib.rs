//! # alt
//!
//! Boot-time alternatives and paravirt patching for Rust. This facade re-exports the runtime
//! ([`alt_runtime`]) and the macros (`alt-macros`): [`alternative`] (attribute) and
//! [`asm::alternative!`](crate::asm::alternative).

#![no_std]

pub use alt_macros::alternative;
pub use alt_runtime::*;

/// Bare instruction swaps: `alt::asm::alternative!`. (Rust has one namespace for attribute and
/// function-like macros, so this cannot live beside the `#[alternative]` attribute.)
pub mod asm {
    pub use alt_macros::alternative_asm as alternative;
}
