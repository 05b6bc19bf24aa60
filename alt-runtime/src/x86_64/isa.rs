//! The x86-64 rules of the planner ([`crate::isa::Isa`]).

use core::ops::Range;

use super::{insn, nops, relocate};
use crate::isa::{CodeError, Isa, Shape};

/// x86-64.
#[derive(Clone, Copy, Debug)]
pub struct X86_64;

/// Records an instruction at `at` in a shape.
fn note(shape: &mut Shape, at: usize, i: &insn::Insn) {
    shape.boundaries.insert(at);
    if matches!(i.kind, insn::InsnKind::Call | insn::InsnKind::CallIndirect) {
        shape.returns.insert(at + usize::from(i.len));
    }
}

/// The shape of the site layout the macros emit for a default call, without decoding: one-byte
/// NOPs, then `call rel32` ending the code (or NOPs alone). `None` for anything else.
fn padded_call(code: &[u8]) -> Option<Shape> {
    let nops = code.iter().take_while(|&&b| b == 0x90).count();
    let rest = &code[nops..];
    if !(rest.is_empty() || (rest.len() == 5 && rest[0] == 0xe8)) {
        return None;
    }
    let mut shape = Shape::default();
    for at in 0..=nops {
        shape.boundaries.insert(at);
    }
    if !rest.is_empty() {
        shape.returns.insert(code.len());
        shape.boundaries.insert(code.len());
    }
    Some(shape)
}

impl Isa for X86_64 {
    const CALL_LEN: u8 = 5;

    fn shape(_addr: u64, code: &[u8]) -> Result<Shape, CodeError> {
        if let Some(shape) = padded_call(code) {
            return Ok(shape);
        }
        let mut shape = Shape::default();
        for item in insn::instructions(code) {
            let (at, i) = item.map_err(CodeError::X86Decode)?;
            note(&mut shape, at, &i);
        }
        shape.boundaries.insert(code.len());
        Ok(shape)
    }

    #[inline]
    fn alike(a: &[u8], b: &[u8]) -> bool {
        // A call or jmp rel32 and nothing else: one instruction, and its displacement plays no
        // part in the shape.
        let rel32 = |c: &[u8]| c.len() == 5 && matches!(c[0], 0xe8 | 0xe9);
        crate::short::same(a, b) || (rel32(a) && rel32(b) && a[0] == b[0])
    }

    fn relocate(src: &[u8], from: u64, to: u64, out: &mut [u8]) -> Result<Shape, CodeError> {
        let mut shape = Shape::default();
        relocate::relocate_each(src, from, to, out, |at, i| note(&mut shape, at, i))
            .map_err(CodeError::X86Relocation)?;
        shape.boundaries.insert(src.len());
        Ok(shape)
    }

    fn call(at: u64, target: u64) -> Result<crate::isa::CallBytes, CodeError> {
        relocate::call_rel32(at, target)
            .map(|c| c.into())
            .map_err(CodeError::X86Relocation)
    }

    fn fill(buf: &mut [u8]) {
        nops::fill(buf)
    }

    fn keep_default(code: &[u8], out: &mut [u8]) {
        nops::optimize_nops_into(code, out)
    }

    unsafe fn sync(_ranges: &mut dyn Iterator<Item = Range<u64>>) {
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
    use alloc::vec::Vec;

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
    fn code_alike_has_one_shape() {
        let call = |d: u32| {
            let mut c = [0xe8, 0, 0, 0, 0];
            c[1..].copy_from_slice(&d.to_le_bytes());
            c
        };
        let jmp = |d: u32| {
            let mut c = call(d);
            c[0] = 0xe9;
            c
        };
        let mov = [0xb8, 1, 0, 0, 0];
        for (a, b, alike) in [
            (call(0), call(0x1234_5678), true),
            (jmp(7), jmp(0xffff_fff0), true),
            (call(0), jmp(0), false),
            (mov, mov, true),
            (mov, [0xb8, 2, 0, 0, 0], false),
            (call(0), mov, false),
        ] {
            assert_eq!(X86_64::alike(&a, &b), alike, "{a:02x?} {b:02x?}");
            if alike {
                assert_eq!(
                    X86_64::shape(0, &a).unwrap(),
                    X86_64::shape(0x40, &b).unwrap()
                );
            }
        }
        assert!(
            !X86_64::alike(&call(0)[..4], &call(1)[..4]),
            "a call cut short"
        );
        assert!(X86_64::alike(&[0x90, 0x90], &[0x90, 0x90]));
    }

    #[test]
    fn the_padded_call_fast_path_agrees_with_decoding() {
        for code in [
            &[0x90, 0x90, 0xe8, 1, 2, 3, 4][..],
            &[0xe8, 1, 2, 3, 4],
            &[0x90, 0x90, 0x90],
            &[],
        ] {
            let fast = padded_call(code).expect("the layout");
            let mut slow = Shape::default();
            for item in insn::instructions(code) {
                let (at, i) = item.unwrap();
                note(&mut slow, at, &i);
            }
            slow.boundaries.insert(code.len());
            assert_eq!(fast, slow, "{code:02x?}");
        }
        assert_eq!(padded_call(&[0x90, 0xe8, 1, 2, 3]), None);
        assert_eq!(padded_call(&[0xe8, 1, 2, 3, 4, 0x90]), None);
        assert_eq!(padded_call(&[0x0f, 0x1f, 0x00]), None);
    }

    #[test]
    fn relocation_returns_the_shape() {
        // nop; call rel32 (to 0x2000 from 0x1000)
        let src = [0x90, 0xe8, 0xfb, 0x0f, 0, 0];
        let mut out = [0; 6];
        let shape = X86_64::relocate(&src, 0x1000, 0x1100, &mut out).unwrap();
        assert_eq!(shape, X86_64::shape(0x1000, &src).unwrap());
        assert_eq!(out, [0x90, 0xe8, 0xfb, 0x0e, 0, 0]);
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
