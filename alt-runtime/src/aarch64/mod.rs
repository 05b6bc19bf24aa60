//! AArch64 instruction knowledge, as plain functions that compile and are tested on any host.

pub mod cache;
pub mod reloc;
