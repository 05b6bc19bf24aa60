//! Moving x86-64 code: fresh `call`/`jmp rel32` encodings, and re-targeting the PC-relative
//! operands of replacement code copied to a site at another address.
//!
//! ```
//! use alt_runtime::x86_64::relocate::{call_rel32, relocate};
//!
//! assert_eq!(call_rel32(0x1000, 0x2000), Ok([0xe8, 0xfb, 0x0f, 0x00, 0x00]));
//!
//! // `call 0x5000` assembled at 0x1000 (rel32 = 0x3ffb), moved to 0x3000.
//! let src = [0xe8, 0xfb, 0x3f, 0x00, 0x00];
//! let mut out = [0u8; 5];
//! assert_eq!(relocate(&src, 0x1000, 0x3000, &mut out), Ok(1));
//! assert_eq!(out, [0xe8, 0xfb, 0x1f, 0x00, 0x00]); // still calls 0x5000
//! ```

use core::fmt;

use super::insn::{instructions, DecodeError};

/// Why code could not be encoded or relocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocError {
    /// Byte offset, within the source code, of the instruction at fault (0 for
    /// [`call_rel32`] / [`jmp_rel32`] and for a length mismatch).
    pub offset: usize,
    /// What went wrong.
    pub kind: RelocErrorKind,
}

/// The kinds of [`RelocError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelocErrorKind {
    /// The source bytes are not whole, decodable instructions.
    Decode(DecodeError),
    /// The absolute `target` of a PC-relative operand cannot be reached from the new address
    /// with the operand's displacement size (rel8 or rel32/disp32).
    OutOfRange {
        /// The absolute address the operand must keep reaching.
        target: u64,
    },
    /// The output buffer's length differs from the source's.
    LengthMismatch,
    /// A PC-relative form this module does not move (an EIP-relative operand with a `67`
    /// prefix that leaves the block).
    Unsupported(&'static str),
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RelocErrorKind::Decode(e) => {
                write!(f, "cannot relocate code: {e}")
            }
            RelocErrorKind::OutOfRange { target } => write!(
                f,
                "instruction at offset {} cannot reach its target {target:#x} from the new address",
                self.offset
            ),
            RelocErrorKind::LengthMismatch => {
                write!(f, "output buffer length differs from the code's length")
            }
            RelocErrorKind::Unsupported(what) => {
                write!(
                    f,
                    "cannot relocate instruction at offset {}: {what}",
                    self.offset
                )
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RelocError {}

/// The rel32 that makes an instruction of `len` bytes at `at` reach `target`.
fn rel32(at: u64, len: u64, target: u64) -> Option<i32> {
    let disp = target.wrapping_sub(at.wrapping_add(len)) as i64;
    i32::try_from(disp).ok()
}

/// Encodes `opcode rel32` at `at` reaching `target`.
fn branch_rel32(opcode: u8, at: u64, target: u64) -> Result<[u8; 5], RelocError> {
    let rel = rel32(at, 5, target).ok_or(RelocError {
        offset: 0,
        kind: RelocErrorKind::OutOfRange { target },
    })?;
    let r = rel.to_le_bytes();
    Ok([opcode, r[0], r[1], r[2], r[3]])
}

/// `call target` (`e8 rel32`) for an instruction placed at `at`; the displacement is relative to
/// `at + 5`. An error if `target` is more than 2 GiB away.
pub fn call_rel32(at: u64, target: u64) -> Result<[u8; 5], RelocError> {
    branch_rel32(0xe8, at, target)
}

/// `jmp target` (`e9 rel32`) for an instruction placed at `at`; the displacement is relative to
/// `at + 5`. An error if `target` is more than 2 GiB away.
///
/// ```
/// use alt_runtime::x86_64::relocate::jmp_rel32;
///
/// assert_eq!(jmp_rel32(0x1000, 0x1005), Ok([0xe9, 0, 0, 0, 0]));
/// assert_eq!(jmp_rel32(0x1000, 0x1000), Ok([0xe9, 0xfb, 0xff, 0xff, 0xff]));
/// assert!(jmp_rel32(0, 0x1_0000_0000).is_err());
/// ```
pub fn jmp_rel32(at: u64, target: u64) -> Result<[u8; 5], RelocError> {
    branch_rel32(0xe9, at, target)
}

/// Copies `src`, code assembled to run at `src_addr`, into `out` (of the same length), adjusted to
/// run at `dst_addr`. Returns the number of instructions.
///
/// Every PC-relative operand whose target lies outside the block `[src_addr, src_addr + len]` is
/// re-targeted so it reaches the same absolute address from `dst_addr`: `rel32` calls, jumps and
/// conditional jumps, `rel8` jumps, conditional jumps and loops, `xbegin`, and RIP-relative
/// `disp32` memory operands (legacy, VEX, EVEX or XOP encoded). Operands whose target lies inside
/// the block are left unchanged: they move with it. The block's end address counts as inside, so
/// a jump to the end of the replacement still lands right after it (on the site's padding).
///
/// Errors: `out` of another length ([`RelocErrorKind::LengthMismatch`]); bytes that are not whole
/// instructions ([`RelocErrorKind::Decode`]); a displacement that no longer fits its size
/// ([`RelocErrorKind::OutOfRange`], never a silent wrap); an EIP-relative (`67`) operand leaving
/// the block ([`RelocErrorKind::Unsupported`]). On error the contents of `out` are unspecified.
pub fn relocate(
    src: &[u8],
    src_addr: u64,
    dst_addr: u64,
    out: &mut [u8],
) -> Result<usize, RelocError> {
    relocate_each(src, src_addr, dst_addr, out, |_, _| {})
}

/// [`relocate`], calling `each(offset, insn)` for every instruction of `src` as it goes (one
/// decoding pass serves the caller too).
pub fn relocate_each(
    src: &[u8],
    src_addr: u64,
    dst_addr: u64,
    out: &mut [u8],
    mut each: impl FnMut(usize, &super::insn::Insn),
) -> Result<usize, RelocError> {
    if src.len() != out.len() {
        return Err(RelocError {
            offset: 0,
            kind: RelocErrorKind::LengthMismatch,
        });
    }
    out.copy_from_slice(src);
    let block_len = src.len() as u64;
    let inside = |target: u64| target.wrapping_sub(src_addr) <= block_len;

    let mut count = 0;
    for item in instructions(src) {
        let (offset, insn) = item.map_err(|e| RelocError {
            offset: e.offset,
            kind: RelocErrorKind::Decode(e),
        })?;
        count += 1;
        each(offset, &insn);
        let at = offset as u64;
        let len = u64::from(insn.len);
        let out_of_range = |target| RelocError {
            offset,
            kind: RelocErrorKind::OutOfRange { target },
        };

        if let Some(rel) = insn.rel {
            // A branch's target is next_insn + disp whatever its size.
            let target = src_addr
                .wrapping_add(at + len)
                .wrapping_add(rel.disp as i64 as u64);
            if !inside(target) {
                let disp = target.wrapping_sub(dst_addr.wrapping_add(at + len)) as i64;
                let field = usize::from(rel.offset) + offset;
                match rel.size {
                    1 => {
                        let d = i8::try_from(disp).map_err(|_| out_of_range(target))?;
                        write(out, field, &d.to_le_bytes());
                    }
                    2 => {
                        let d = i16::try_from(disp).map_err(|_| out_of_range(target))?;
                        write(out, field, &d.to_le_bytes());
                    }
                    _ => {
                        let d = i32::try_from(disp).map_err(|_| out_of_range(target))?;
                        write(out, field, &d.to_le_bytes());
                    }
                }
            }
        }

        if let Some(disp_offset) = insn.rip_disp_offset {
            let target = src_addr
                .wrapping_add(at + len)
                .wrapping_add(insn.disp as u64);
            if !inside(target) {
                if insn.prefixes.address_size {
                    return Err(RelocError {
                        offset,
                        kind: RelocErrorKind::Unsupported(
                            "EIP-relative (67-prefixed) operand outside the block",
                        ),
                    });
                }
                let d = rel32(dst_addr.wrapping_add(at), len, target)
                    .ok_or_else(|| out_of_range(target))?;
                write(out, offset + usize::from(disp_offset), &d.to_le_bytes());
            }
        }
    }
    Ok(count)
}

/// Writes `bytes` at `at` in `out`. The decoder guarantees the field lies within the
/// instruction, and the instruction within `out`; `get_mut` keeps that from ever panicking.
fn write(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(field) = out.get_mut(at..at + bytes.len()) {
        field.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(src: &[u8], from: u64, to: u64) -> Result<[u8; 16], RelocError> {
        let mut out = [0u8; 16];
        relocate(src, from, to, &mut out[..src.len()])?;
        Ok(out)
    }

    #[test]
    fn rel32_encodings() {
        assert_eq!(call_rel32(0x1000, 0x1005), Ok([0xe8, 0, 0, 0, 0]));
        assert_eq!(call_rel32(0x1000, 0), Ok([0xe8, 0xfb, 0xef, 0xff, 0xff]));
        assert_eq!(
            call_rel32(0, 0x8000_0004),
            Ok([0xe8, 0xff, 0xff, 0xff, 0x7f])
        );
        assert_eq!(
            call_rel32(0, 0x8000_0005),
            Err(RelocError {
                offset: 0,
                kind: RelocErrorKind::OutOfRange {
                    target: 0x8000_0005
                }
            })
        );
        // Wrapping the address space is fine when the distance is small.
        assert_eq!(
            jmp_rel32(u64::MAX - 1, 3),
            Ok([0xe9, 0x00, 0x00, 0x00, 0x00])
        );
    }

    #[test]
    fn moves_rel32_and_rip_relative() {
        // call +0x100 (target 0x1105), mov rax, [rip+0x10] (target 0x5 + 7 + 0x10 + 0x1000)
        let src = [
            0xe8, 0x00, 0x01, 0x00, 0x00, 0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00,
        ];
        let out = moved(&src, 0x1000, 0x1100).unwrap();
        assert_eq!(
            &out[..12],
            &[0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x05, 0x10, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn in_block_targets_stay() {
        // jz +1 (to the ret); nop; ret; jmp -6 (to the start)
        let src = [0x74, 0x01, 0x90, 0xc3, 0xeb, 0xfa];
        let out = moved(&src, 0x1000, 0x9000).unwrap();
        assert_eq!(&out[..6], &src);
        // jmp to the end of the block counts as inside
        let src = [0xeb, 0x00];
        assert_eq!(&moved(&src, 0x1000, 0x9000).unwrap()[..2], &src);
    }

    #[test]
    fn rel8_out_of_block() {
        // jmp to 0x1000 + 2 + 0x10
        let src = [0xeb, 0x10];
        assert_eq!(&moved(&src, 0x1000, 0x1008).unwrap()[..2], &[0xeb, 0x08]);
        assert_eq!(&moved(&src, 0x1000, 0x0f91).unwrap()[..2], &[0xeb, 0x7f]);
        assert_eq!(&moved(&src, 0x1000, 0x1090).unwrap()[..2], &[0xeb, 0x80]);
        for dst in [0x0f90, 0x1091, 0x9000] {
            assert_eq!(
                moved(&src, 0x1000, dst).unwrap_err().kind,
                RelocErrorKind::OutOfRange { target: 0x1012 }
            );
        }
    }

    #[test]
    fn rel16_xbegin_out_of_block() {
        // xbegin rel16 (66 c7 f8 disp16) to 0x1000 + 5 + 0x10, the only rel16 form decoded.
        let src = [0x66, 0xc7, 0xf8, 0x10, 0x00];
        // 0x1015 - (0x1100 + 5) = -0xf0.
        assert_eq!(
            &moved(&src, 0x1000, 0x1100).unwrap()[..5],
            &[0x66, 0xc7, 0xf8, 0x10, 0xff]
        );
        // 0x1015 - (0x9010 + 5) = -0x8000 still fits; one byte further does not.
        assert_eq!(
            &moved(&src, 0x1000, 0x9010).unwrap()[..5],
            &[0x66, 0xc7, 0xf8, 0x00, 0x80]
        );
        assert_eq!(
            moved(&src, 0x1000, 0x9011).unwrap_err(),
            RelocError {
                offset: 0,
                kind: RelocErrorKind::OutOfRange { target: 0x1015 }
            }
        );
    }

    #[test]
    fn errors() {
        let mut out = [0u8; 3];
        assert_eq!(
            relocate(&[0x90, 0x90], 0, 0, &mut out).unwrap_err().kind,
            RelocErrorKind::LengthMismatch
        );
        let e = moved(&[0x90, 0xe8, 0, 0], 0, 0).unwrap_err();
        assert_eq!(e.offset, 1);
        assert!(matches!(e.kind, RelocErrorKind::Decode(_)));
        // rel32 overflow
        let e = moved(&[0x90, 0xe8, 0x10, 0, 0, 0], 0x1000, 0x9000_0000).unwrap_err();
        assert_eq!(e.offset, 1);
        assert_eq!(e.kind, RelocErrorKind::OutOfRange { target: 0x1016 });
        // EIP-relative leaving the block
        let e = moved(&[0x67, 0x8b, 0x05, 0x10, 0, 0, 0], 0, 0x100).unwrap_err();
        assert!(matches!(e.kind, RelocErrorKind::Unsupported(_)));
    }

    #[cfg(feature = "std")]
    #[test]
    fn errors_display() {
        use std::string::ToString;
        let e = moved(&[0x90, 0xe8, 0x10, 0, 0, 0], 0x1000, 0x9000_0000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instruction at offset 1 cannot reach its target 0x1016 from the new address"
        );
        let e = moved(&[0x90, 0x06], 0, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot relocate code: cannot decode x86-64 instruction at offset 1: \
             opcode invalid in 64-bit mode"
        );
    }
}
