//! What the planner needs to know about an instruction set, behind one small trait.
//!
//! The planners ([`crate::plan`], [`crate::paravirt`]) are the same for every architecture:
//! bounds, lengths, overlaps, the priority rule, the return-address rule. What differs is how
//! code is checked, moved, padded, called and synchronised, and that lives with each
//! architecture: [`crate::x86_64::X86_64`] (variable-length instructions, `call rel32`,
//! multi-byte NOPs, `cpuid` to serialise) and [`crate::aarch64::Aarch64`] (4-byte instructions,
//! `BL`, `NOP` words, PC-relative forms re-targeted, cache maintenance and `ISB`). Both are plain
//! functions, so AArch64 tables are planned and tested on any host.

use core::fmt;

pub use crate::aarch64::Aarch64;
pub use crate::x86_64::X86_64;

/// Why code could not be checked or moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeError {
    /// x86-64: the bytes are not whole instructions ending at the end.
    X86Decode(crate::x86_64::insn::DecodeError),
    /// x86-64: the code cannot be moved (a displacement that no longer fits, ...).
    X86Relocation(crate::x86_64::relocate::RelocError),
    /// AArch64: an instruction cannot be moved.
    A64Relocation(crate::aarch64::reloc::RelocError),
    /// AArch64: an address is not 4-byte aligned, or code is not whole 4-byte instructions.
    A64Misaligned {
        /// The misaligned address (or the start of the code whose length is not a multiple of
        /// 4).
        addr: u64,
    },
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeError::X86Decode(e) => write!(f, "{e}"),
            CodeError::X86Relocation(e) => write!(f, "{e}"),
            CodeError::A64Relocation(e) => write!(f, "{e}"),
            CodeError::A64Misaligned { addr } => write!(
                f,
                "{addr:#x} is not 4-byte aligned, or its code is not whole 4-byte instructions"
            ),
        }
    }
}

/// A set of byte offsets inside one site (sites are at most 255 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets([u64; 4]);

impl Offsets {
    /// The empty set.
    pub const EMPTY: Offsets = Offsets([0; 4]);

    /// Adds `offset` (offsets above 255 are ignored: no site is that long).
    pub fn insert(&mut self, offset: usize) {
        if offset < 256 {
            self.0[offset / 64] |= 1 << (offset % 64);
        }
    }

    /// Whether `offset` is in the set.
    pub fn contains(&self, offset: usize) -> bool {
        offset < 256 && self.0[offset / 64] & (1 << (offset % 64)) != 0
    }

    /// Every offset of `self` or `other`.
    pub fn union(self, other: Offsets) -> Offsets {
        let (a, b) = (self.0, other.0);
        Offsets([a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]])
    }

    /// Whether some offset of the set is below `end`.
    pub(crate) fn any_below(&self, end: usize) -> bool {
        let full = (end / 64).min(4);
        if self.0[..full].iter().any(|&w| w != 0) {
            return true;
        }
        full < 4 && self.0[full] & ((1u64 << (end % 64)) - 1) != 0
    }

    /// The offsets, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut words = self.0;
        let mut w = 0;
        core::iter::from_fn(move || {
            while w < words.len() {
                if words[w] != 0 {
                    let bit = words[w].trailing_zeros() as usize;
                    words[w] &= words[w] - 1;
                    return Some(w * 64 + bit);
                }
                w += 1;
            }
            None
        })
    }

    /// The largest offset, if any.
    pub fn last(&self) -> Option<usize> {
        let w = self.0.iter().rposition(|&w| w != 0)?;
        Some(w * 64 + 63 - self.0[w].leading_zeros() as usize)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn offsets_iterate_in_order() {
        let mut o = Offsets::EMPTY;
        assert!(o.is_empty());
        for x in [255, 0, 64, 63, 5, 128, 300] {
            o.insert(x);
        }
        assert_eq!(o.iter().collect::<Vec<_>>(), [0, 5, 63, 64, 128, 255]);
        assert!(o.contains(63) && !o.contains(62) && !o.contains(300));
        assert_eq!(o.last(), Some(255));
        assert_eq!(Offsets::EMPTY.last(), None);
        assert!(!o.is_empty());
        assert!(o.any_below(1) && !o.any_below(0));
        let mut high = Offsets::EMPTY;
        high.insert(130);
        assert!(!high.any_below(130) && high.any_below(131) && high.any_below(256));
        assert!(!Offsets::EMPTY.any_below(256));
    }
}

/// Where a piece of code's instructions start and where its calls return to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Offset of every instruction start, and the end of the code.
    pub boundaries: Offsets,
    /// Offset just after every call: where a thread inside the callee returns to.
    pub returns: Offsets,
}

/// A direct call's bytes ([`Isa::call`]): up to eight, inline.
pub type CallBytes = crate::bytes::SmallVec<u8, 8>;

/// One instruction set's rules for sites and replacements.
pub trait Isa {
    /// Length of the direct call written at a direct-call site.
    const CALL_LEN: u8;

    /// Checks that `code`, at `addr`, is whole instructions ending exactly at its end, and says
    /// where they start and where its calls return to.
    fn shape(addr: u64, code: &[u8]) -> Result<Shape, CodeError>;

    /// Whether code `b` has the shape of code `a` wherever each lies, without decoding it: the
    /// planner plans a site like the one before when their code is alike. It must imply that
    /// [`Isa::shape`] gives both one result at any two addresses (x86-64: equal bytes, or one
    /// `call` or `jmp rel32` and another, whatever their targets). The default, for an
    /// instruction set whose shapes depend on where the code lies (AArch64 refuses misaligned
    /// code), says no code is alike: every site is decoded.
    fn alike(a: &[u8], b: &[u8]) -> bool {
        let _ = (a, b);
        false
    }

    /// Copies `src`, assembled at `from`, into `out` re-targeted to run at `to`, and returns
    /// its shape (as [`Isa::shape`] would, from the same decoding).
    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<Shape, CodeError>;

    /// The direct call written at `at` to reach `target` ([`Isa::CALL_LEN`] bytes, kept
    /// inline: a program plans one per direct-call entry).
    fn call(at: u64, target: u64) -> Result<CallBytes, CodeError>;

    /// Fills `buf` (a whole number of instructions' room) with NOPs.
    fn fill(buf: &mut [u8]);

    /// Writes into `out` (as long as `code`) the site's default code as it should stay when no
    /// entry holds (x86-64 rewrites one-byte NOP padding into long NOPs).
    fn keep_default(code: &[u8], out: &mut [u8]);

    /// Makes this CPU execute the bytes just written to `ranges` and not stale copies (x86-64:
    /// a serialising instruction; AArch64: clean the data cache and invalidate the instruction
    /// cache to the point of unification for each range, then `ISB`). Other CPUs or threads
    /// synchronise themselves when the rendezvous releases them ([`Isa::sync_cpu`]).
    ///
    /// Does nothing when the runtime is built for another architecture than `Self` (planning
    /// foreign code on a host).
    ///
    /// # Safety
    ///
    /// Every range must be mapped in this address space (AArch64's cache maintenance by
    /// address faults on an unmapped one).
    unsafe fn sync(ranges: &mut dyn Iterator<Item = core::ops::Range<u64>>);

    /// Makes this CPU discard instructions it fetched before another CPU wrote text (x86-64:
    /// serialising; AArch64: `ISB`). Does nothing for a foreign architecture.
    fn sync_cpu();
}

/// Fills `buf[from..]` with NOPs, keeping an instruction boundary at every offset of `keep`
/// (offsets relative to the start of `buf`), so that a return address there stays valid.
pub fn fill_keeping<I: Isa>(buf: &mut [u8], from: usize, keep: Offsets) {
    let len = buf.len();
    if from >= len {
        return;
    }
    let mut start = from;
    for k in keep.iter().filter(|&k| k > from && k < len) {
        I::fill(&mut buf[start..k]);
        start = k;
    }
    I::fill(&mut buf[start..]);
}
