//! AArch64 instruction knowledge, as plain functions that compile and are tested on any host.
//!
//! - [`reloc`]: re-targeting PC-relative instructions (B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, ADR,
//!   ADRP) when a replacement is copied to its site, with range checks; literal loads refused.
//! - [`cache`]: the cache maintenance after writing instructions (`DC CVAU`, `DSB ISH`,
//!   `IC IVAU`, `ISB`, relaxed by `CTR_EL0.IDC`/`DIC`) as data, and the instruction encodings.

pub mod cache;
#[cfg(feature = "alloc")]
mod isa;
pub mod reloc;

pub use cache::{sync_sequence, CacheOp, CacheSequence};
#[cfg(feature = "alloc")]
pub use isa::{Aarch64, A64_NOP};
pub use reloc::{
    branch_target, classify, relocate_block, relocate_insn, InsnClass, RelocError, RelocErrorKind,
};
