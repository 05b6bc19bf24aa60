//! The x86-64 rules of the planner ([`crate::isa::Isa`]).

use alloc::vec::Vec;
use core::ops::Range;

use super::{insn, nops, relocate};
use crate::isa::{CodeError, Isa, Shape};

/// x86-64.
#[derive(Clone, Copy, Debug)]
pub struct X86_64;

impl Isa for X86_64 {
    const CALL_LEN: u8 = 5;

    fn shape(_addr: u64, code: &[u8]) -> Result<Shape, CodeError> {
        let mut shape = Shape::default();
        for item in insn::instructions(code) {
            let (at, i) = item.map_err(CodeError::X86Decode)?;
            shape.boundaries.insert(at);
            if matches!(i.kind, insn::InsnKind::Call | insn::InsnKind::CallIndirect) {
                shape.returns.insert(at + usize::from(i.len));
            }
        }
        shape.boundaries.insert(code.len());
        Ok(shape)
    }

    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<(), CodeError> {
        relocate::relocate(src, from, to, out)
            .map(|_| ())
            .map_err(CodeError::X86Relocation)
    }

    fn call(at: u64, target: u64) -> Result<Vec<u8>, CodeError> {
        relocate::call_rel32(at, target)
            .map(|c| c.to_vec())
            .map_err(CodeError::X86Relocation)
    }

    fn fill(buf: &mut [u8]) {
        nops::fill(buf)
    }

    fn keep_default(code: &[u8]) -> Vec<u8> {
        nops::optimize_nops(code)
    }

    fn sync(_ranges: &mut dyn Iterator<Item = Range<u64>>) {
        // x86 keeps instruction caches coherent with stores; the CPU that wrote only has to
        // discard what it may have fetched already.
        Self::sync_cpu();
    }

    fn sync_cpu() {
        super::serialize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Offsets;

    #[test]
    fn shapes_record_boundaries_and_return_offsets() {
        // nop; call rel32; mov eax, 1
        let code = [0x90, 0xe8, 0, 0, 0, 0, 0xb8, 1, 0, 0, 0];
        let s = X86_64::shape(0, &code).unwrap();
        assert_eq!(s.boundaries.iter().collect::<Vec<_>>(), [0, 1, 6, 11]);
        assert_eq!(s.returns.iter().collect::<Vec<_>>(), [6]);
        // call qword ptr [rip + 0]: an indirect call returns too.
        let s = X86_64::shape(0, &[0xff, 0x15, 0, 0, 0, 0]).unwrap();
        assert_eq!(s.returns.iter().collect::<Vec<_>>(), [6]);
        assert!(X86_64::shape(0, &[0xe8, 0]).is_err());
    }

    #[test]
    fn fill_keeps_the_boundaries_asked_for() {
        let mut buf = [0u8; 12];
        buf[0] = 0x90;
        let mut keep = Offsets::EMPTY;
        keep.insert(5);
        crate::isa::fill_keeping::<X86_64>(&mut buf, 1, keep);
        let s = X86_64::shape(0, &buf).unwrap();
        assert!(s.boundaries.contains(5), "{buf:02x?}");
        assert_eq!(s.boundaries.iter().collect::<Vec<_>>(), [0, 1, 5, 12]);
    }
}
