//! The AArch64 rules of the planner ([`crate::isa::Isa`]), after Linux's
//! `arch/arm64/kernel/alternative.c`: 4-byte instructions, PC-relative forms re-targeted, `NOP`
//! padding, `BL` for direct calls, and cache maintenance after writing.

use alloc::vec::Vec;
use core::ops::Range;

use super::reloc::{classify, relocate_block, relocate_insn, InsnClass};
use crate::isa::{CodeError, Isa, Shape};

/// AArch64 (A64, little-endian).
#[derive(Clone, Copy, Debug)]
pub struct Aarch64;

/// `NOP`.
pub const A64_NOP: u32 = 0xd503_201f;
/// `BL .` (offset 0): re-targeted to make a direct call.
const A64_BL: u32 = 0x9400_0000;
/// `BLR Xn` (any register): an indirect call.
const A64_BLR_MASK: u32 = 0xffff_fc1f;
const A64_BLR: u32 = 0xd63f_0000;

fn words(code: &[u8]) -> impl Iterator<Item = u32> + '_ {
    code.chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

fn check_aligned(addr: u64, code: &[u8]) -> Result<(), CodeError> {
    if !addr.is_multiple_of(4) || !code.len().is_multiple_of(4) {
        return Err(CodeError::A64Misaligned { addr });
    }
    Ok(())
}

impl Isa for Aarch64 {
    const CALL_LEN: u8 = 4;

    fn shape(addr: u64, code: &[u8]) -> Result<Shape, CodeError> {
        check_aligned(addr, code)?;
        let mut shape = Shape::default();
        for (i, w) in words(code).enumerate() {
            shape.boundaries.insert(4 * i);
            let is_bl = classify(w) == InsnClass::Bl;
            if is_bl || w & A64_BLR_MASK == A64_BLR {
                shape.returns.insert(4 * i + 4);
            }
        }
        shape.boundaries.insert(code.len());
        Ok(shape)
    }

    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<Shape, CodeError> {
        let shape = Self::shape(from, src)?;
        check_aligned(to, out)?;
        let mut code: Vec<u32> = words(src).collect();
        relocate_block(&mut code, from, to).map_err(CodeError::A64Relocation)?;
        for (o, w) in out.chunks_exact_mut(4).zip(code) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        Ok(shape)
    }

    fn call(at: u64, target: u64) -> Result<crate::isa::CallBytes, CodeError> {
        if !at.is_multiple_of(4) || !target.is_multiple_of(4) {
            return Err(CodeError::A64Misaligned {
                addr: if at.is_multiple_of(4) { target } else { at },
            });
        }
        // `BL .` assembled at the target reaches the target; moved to the site it calls it.
        relocate_insn(A64_BL, target, at)
            .map(|w| w.to_le_bytes().into())
            .map_err(CodeError::A64Relocation)
    }

    fn fill(buf: &mut [u8]) {
        for w in buf.chunks_exact_mut(4) {
            w.copy_from_slice(&A64_NOP.to_le_bytes());
        }
    }

    fn keep_default(code: &[u8], out: &mut [u8]) {
        out.copy_from_slice(code)
    }

    unsafe fn sync(ranges: &mut dyn Iterator<Item = Range<u64>>) {
        // SAFETY: the caller's contract: the ranges are mapped.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            native::sync_ranges(ranges)
        };
        #[cfg(not(target_arch = "aarch64"))]
        let _ = ranges;
    }

    fn sync_cpu() {
        // SAFETY: `isb` only discards this CPU's prefetched instructions.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!("isb", options(nostack, preserves_flags))
        };
    }
}

/// The cache maintenance, executed: only compiled for AArch64 targets. The sequence it runs is
/// [`super::cache::sync_sequence`]'s, which the host tests check instruction by instruction.
#[cfg(target_arch = "aarch64")]
mod native {
    use core::ops::Range;

    use crate::aarch64::cache::{sync_sequence, CacheOp, Domain};

    fn ctr_el0() -> u64 {
        let v: u64;
        // SAFETY: CTR_EL0 is readable at EL0 on Linux and at every higher level.
        unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// # Safety
    ///
    /// Every range is mapped.
    pub(super) unsafe fn sync_ranges(ranges: &mut dyn Iterator<Item = Range<u64>>) {
        let ctr = ctr_el0();
        for r in ranges {
            for op in sync_sequence(ctr, r.start, r.end.saturating_sub(r.start)).iter() {
                // SAFETY: the caller's contract.
                unsafe { run(op) };
            }
        }
    }

    /// # Safety
    ///
    /// The lines `op` names are mapped.
    unsafe fn run(op: &CacheOp) {
        // SAFETY: cache maintenance by virtual address on mapped memory (the caller's
        // contract), and barriers; none of them changes memory contents.
        unsafe {
            match op {
                CacheOp::CleanDcacheToPoU { .. } => {
                    for line in op.lines() {
                        core::arch::asm!("dc cvau, {}", in(reg) line, options(nostack));
                    }
                }
                CacheOp::InvalidateIcacheToPoU { .. } => {
                    for line in op.lines() {
                        core::arch::asm!("ic ivau, {}", in(reg) line, options(nostack));
                    }
                }
                CacheOp::Dsb(Domain::Ish) => core::arch::asm!("dsb ish", options(nostack)),
                CacheOp::Dsb(Domain::IshSt) => core::arch::asm!("dsb ishst", options(nostack)),
                CacheOp::Dsb(Domain::Sy) => core::arch::asm!("dsb sy", options(nostack)),
                CacheOp::Isb => core::arch::asm!("isb", options(nostack)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_a_boundary_every_word_and_returns_after_calls() {
        let bl = 0x9400_0010u32.to_le_bytes();
        let blr = 0xd63f_0020u32.to_le_bytes(); // blr x1
        let nop = A64_NOP.to_le_bytes();
        let code = [nop, bl, blr].concat();
        let s = Aarch64::shape(0x1000, &code).unwrap();
        assert_eq!(s.boundaries.iter().collect::<Vec<_>>(), [0, 4, 8, 12]);
        assert_eq!(s.returns.iter().collect::<Vec<_>>(), [8, 12]);
        assert!(Aarch64::shape(0x1002, &nop).is_err());
    }
}
