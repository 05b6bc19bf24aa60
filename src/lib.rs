//! # alt
//!
//! Boot-time alternatives and paravirt patching for Rust. This facade re-exports
//! [`alt_runtime`] and the macros of `alt-macros`.

#![no_std]

pub use alt_runtime::*;
