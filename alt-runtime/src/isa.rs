//! What the planner needs to know about an instruction set, behind one small trait.
//!
//! The planner ([`crate::plan`]) is the same for every architecture: bounds, lengths, overlaps,
//! the priority rule. What differs is how code is checked, moved, padded and called, and that is
//! all here: [`X86_64`] (variable-length instructions, `call rel32`, multi-byte NOPs) and
//! [`Aarch64`] (4-byte instructions, `BL`, `NOP` words, PC-relative forms re-targeted as Linux's
//! `arch/arm64/kernel/alternative.c` does). Both are plain functions, so AArch64 tables are
//! planned and tested on any host; applying them needs a writer for AArch64 text and the cache
//! maintenance of [`crate::aarch64::cache`] afterwards.

use alloc::vec::Vec;

use crate::aarch64::reloc::{relocate_block, relocate_insn};
use crate::plan::TableErrorKind;
use crate::x86_64::{insn, nops, relocate};

/// One instruction set's rules for sites and replacements.
pub trait Isa {
    /// Length of the direct call written at a direct-call site.
    const CALL_LEN: u8;

    /// Checks that `code`, at `addr`, is whole instructions ending exactly at its end.
    fn check_whole(addr: u64, code: &[u8]) -> Result<(), TableErrorKind>;

    /// Copies `src`, assembled at `from`, into `out` re-targeted to run at `to`.
    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<(), TableErrorKind>;

    /// The direct call written at `at` to reach `target` ([`Isa::CALL_LEN`] bytes).
    fn call(at: u64, target: u64) -> Result<Vec<u8>, TableErrorKind>;

    /// Fills `buf` (a whole number of instructions' room) with NOPs.
    fn fill(buf: &mut [u8]);

    /// The site's default code as it should stay when no entry holds (x86-64 rewrites one-byte
    /// NOP padding into long NOPs).
    fn keep_default(code: &[u8]) -> Vec<u8>;
}

/// x86-64.
#[derive(Clone, Copy, Debug)]
pub struct X86_64;

impl Isa for X86_64 {
    const CALL_LEN: u8 = 5;

    fn check_whole(_addr: u64, code: &[u8]) -> Result<(), TableErrorKind> {
        insn::ends_exactly(code)
            .map(|_| ())
            .map_err(TableErrorKind::SiteNotWholeInstructions)
    }

    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<(), TableErrorKind> {
        relocate::relocate(src, from, to, out)
            .map(|_| ())
            .map_err(TableErrorKind::Relocation)
    }

    fn call(at: u64, target: u64) -> Result<Vec<u8>, TableErrorKind> {
        relocate::call_rel32(at, target)
            .map(|c| c.to_vec())
            .map_err(TableErrorKind::Relocation)
    }

    fn fill(buf: &mut [u8]) {
        nops::fill(buf)
    }

    fn keep_default(code: &[u8]) -> Vec<u8> {
        crate::plan::optimize_nops(code)
    }
}

/// AArch64 (A64, little-endian).
#[derive(Clone, Copy, Debug)]
pub struct Aarch64;

/// `NOP`.
pub const A64_NOP: u32 = 0xd503_201f;
/// `BL .` (offset 0): re-targeted to make a direct call.
const A64_BL: u32 = 0x9400_0000;

fn words(code: &[u8]) -> Vec<u32> {
    code.chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

impl Isa for Aarch64 {
    const CALL_LEN: u8 = 4;

    fn check_whole(addr: u64, code: &[u8]) -> Result<(), TableErrorKind> {
        if !addr.is_multiple_of(4) || !code.len().is_multiple_of(4) {
            return Err(TableErrorKind::A64Misaligned { addr });
        }
        Ok(())
    }

    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<(), TableErrorKind> {
        Self::check_whole(from, src)?;
        Self::check_whole(to, out)?;
        let mut code = words(src);
        relocate_block(&mut code, from, to).map_err(TableErrorKind::A64Relocation)?;
        for (o, w) in out.chunks_exact_mut(4).zip(code) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        Ok(())
    }

    fn call(at: u64, target: u64) -> Result<Vec<u8>, TableErrorKind> {
        if !at.is_multiple_of(4) || !target.is_multiple_of(4) {
            return Err(TableErrorKind::A64Misaligned {
                addr: if at.is_multiple_of(4) { target } else { at },
            });
        }
        // `BL .` assembled at the target reaches the target; moved to the site it calls it.
        relocate_insn(A64_BL, target, at)
            .map(|w| w.to_le_bytes().to_vec())
            .map_err(TableErrorKind::A64Relocation)
    }

    fn fill(buf: &mut [u8]) {
        for w in buf.chunks_exact_mut(4) {
            w.copy_from_slice(&A64_NOP.to_le_bytes());
        }
    }

    fn keep_default(code: &[u8]) -> Vec<u8> {
        code.to_vec()
    }
}
