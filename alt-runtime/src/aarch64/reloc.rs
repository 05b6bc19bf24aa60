//! Relocation of A64 instructions: what a replacement instruction must read when it is copied
//! from where it was assembled to the site it patches.
//!
//! A replacement sequence is assembled in its own section, so every PC-relative operand in it was
//! computed for the replacement's address. When the sequence is copied into a site the patcher must
//! re-encode those operands so each instruction still refers to the same place, the way Linux's
//! `arch/arm64/kernel/alternative.c` does. This module does that for one instruction
//! ([`relocate_insn`]) or a whole block ([`relocate_block`]) as plain functions over `u32`
//! instruction words; nothing here runs AArch64 code, so it compiles and is tested on any host.
//!
//! # Forms handled
//!
//! Field layouts are those of the Arm Architecture Reference Manual (A64 base instructions,
//! "Branches, Exception Generating and System instructions" and "Data Processing -- Immediate"):
//!
//! | form                 | encoding (fixed bits)           | offset field            | range           |
//! |----------------------|---------------------------------|-------------------------|-----------------|
//! | `B`                  | `000101` imm26                  | imm26 (bits 25:0) * 4   | ±128 MiB        |
//! | `BL`                 | `100101` imm26                  | imm26 (bits 25:0) * 4   | ±128 MiB        |
//! | `B.cond`, `BC.cond`  | `01010100` imm19 o0 cond        | imm19 (bits 23:5) * 4   | ±1 MiB          |
//! | `CBZ`, `CBNZ`        | sf `011010` op imm19 Rt         | imm19 (bits 23:5) * 4   | ±1 MiB          |
//! | `TBZ`, `TBNZ`        | b5 `011011` op b40 imm14 Rt     | imm14 (bits 18:5) * 4   | ±32 KiB         |
//! | `ADR`                | `0` immlo `10000` immhi Rd      | immhi:immlo, bytes      | ±1 MiB          |
//! | `ADRP`               | `1` immlo `10000` immhi Rd      | immhi:immlo, 4 KiB pages| ±4 GiB          |
//!
//! Only the offset field changes; every other bit (condition, register, tested bit number
//! `b5:b40`, operand size) is kept. A new offset that does not fit its field is an error
//! ([`RelocErrorKind::OutOfRange`]), never a silent wrap.
//!
//! # Forms refused
//!
//! The PC-relative literal loads -- `LDR (literal)` (32- and 64-bit, and the SIMD&FP `S`/`D`/`Q`
//! forms), `LDRSW (literal)` and `PRFM (literal)`, all `opc 011 V 00 imm19 Rt` -- read memory at
//! `PC + imm19 * 4`. They are refused ([`RelocErrorKind::UnsupportedLiteral`]) rather than
//! re-targeted because the right answer depends on where the *literal* goes, which the
//! instruction alone does not say: a literal pool emitted inside the replacement moves with it and
//! must keep its offset, a pool emitted after it (the assembler's default, at the end of the
//! section) stays behind and must be re-targeted, and a pool shared by several replacements is
//! both. Guessing wrong loads the wrong value with no fault to show for it, so a replacement that
//! needs a constant should build it with `MOVZ`/`MOVK` or `ADRP` + `LDR` instead. Linux refuses
//! the same forms (`BUG()` in its alternative patcher).
//!
//! The compare-and-branch forms added by FEAT_CMPBR (`CB<cc>`, `CBB<cc>`, `CBH<cc>`, imm9) are
//! PC-relative too; they are recognised and refused ([`RelocErrorKind::UnsupportedPcRelative`])
//! rather than returned unchanged with a stale offset.
//!
//! # Example
//!
//! ```
//! use alt_runtime::aarch64::reloc::{branch_target, relocate_insn};
//!
//! // `BL +8` assembled at 0x1000 calls 0x1008; copied to 0x2000 it must read `BL -0xff8`.
//! let bl = 0x9400_0002;
//! let moved = relocate_insn(bl, 0x1000, 0x2000).unwrap();
//! assert_eq!(branch_target(moved, 0x2000), Some(0x1008));
//! ```

use core::fmt;

/// What kind of A64 instruction a word is, as far as relocation cares.
///
/// Everything that is not PC-relative is [`InsnClass::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InsnClass {
    /// `B label`: unconditional branch, imm26.
    B,
    /// `BL label`: branch with link, imm26.
    Bl,
    /// `B.cond label` or `BC.cond label` (FEAT_HBC): conditional branch, imm19.
    BCond,
    /// `CBZ Wt|Xt, label`: compare and branch on zero, imm19.
    Cbz,
    /// `CBNZ Wt|Xt, label`: compare and branch on non-zero, imm19.
    Cbnz,
    /// `TBZ Rt, #bit, label`: test bit and branch if zero, imm14.
    Tbz,
    /// `TBNZ Rt, #bit, label`: test bit and branch if non-zero, imm14.
    Tbnz,
    /// `ADR Xd, label`: PC-relative address, byte granularity, 21-bit offset.
    Adr,
    /// `ADRP Xd, label`: PC-relative page address, 4 KiB granularity, 21-bit offset.
    Adrp,
    /// A PC-relative literal load: `LDR (literal)` (general or SIMD&FP), `LDRSW (literal)` or
    /// `PRFM (literal)`. Not relocatable; see the [module documentation](self).
    LiteralLoad,
    /// A FEAT_CMPBR compare-and-branch (`CB<cc>`, `CBB<cc>`, `CBH<cc>`), imm9. Not relocated.
    CompareBranch,
    /// Not PC-relative: the instruction means the same at any address.
    Other,
}

impl InsnClass {
    /// The assembler name of the form, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            InsnClass::B => "B",
            InsnClass::Bl => "BL",
            InsnClass::BCond => "B.cond",
            InsnClass::Cbz => "CBZ",
            InsnClass::Cbnz => "CBNZ",
            InsnClass::Tbz => "TBZ",
            InsnClass::Tbnz => "TBNZ",
            InsnClass::Adr => "ADR",
            InsnClass::Adrp => "ADRP",
            InsnClass::LiteralLoad => "literal load",
            InsnClass::CompareBranch => "CB<cc>",
            InsnClass::Other => "other",
        }
    }

    /// Whether an instruction of this class refers to an address relative to its own.
    pub const fn is_pc_relative(self) -> bool {
        !matches!(self, InsnClass::Other)
    }
}

impl fmt::Display for InsnClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an instruction could not be relocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelocErrorKind {
    /// The instruction's target cannot be reached from its new address: the new offset does not
    /// fit the instruction's offset field.
    OutOfRange {
        /// The form whose range was exceeded.
        class: InsnClass,
        /// The address the instruction refers to (for `ADRP`, the 4 KiB page).
        target: u64,
        /// The new address of the instruction.
        pc: u64,
    },
    /// A PC-relative literal load (`LDR`/`LDRSW`/`PRFM (literal)`), which is never relocated.
    UnsupportedLiteral,
    /// A PC-relative form this module recognises but does not relocate (FEAT_CMPBR `CB<cc>`).
    UnsupportedPcRelative,
    /// The old or new address is not a multiple of 4, so it cannot hold an A64 instruction.
    Misaligned,
}

/// A relocation failure: which instruction, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelocError {
    /// Index of the instruction within the block; 0 for [`relocate_insn`].
    pub index: usize,
    /// What went wrong.
    pub kind: RelocErrorKind,
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: ", self.index)?;
        match self.kind {
            RelocErrorKind::OutOfRange { class, target, pc } => write!(
                f,
                "{class} target {target:#x} is out of range ({}) from its new address {pc:#x}",
                range_name(class)
            ),
            RelocErrorKind::UnsupportedLiteral => f.write_str(
                "PC-relative literal load (LDR/LDRSW/PRFM literal) cannot be relocated; \
                 build the constant with MOVZ/MOVK or ADRP+LDR",
            ),
            RelocErrorKind::UnsupportedPcRelative => {
                f.write_str("PC-relative compare-and-branch (CB<cc>) is not relocated")
            }
            RelocErrorKind::Misaligned => {
                f.write_str("address is not a multiple of 4 (A64 instructions are 4-byte aligned)")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RelocError {}

fn range_name(class: InsnClass) -> &'static str {
    match class {
        InsnClass::B | InsnClass::Bl => "±128 MiB",
        InsnClass::BCond | InsnClass::Cbz | InsnClass::Cbnz | InsnClass::Adr => "±1 MiB",
        InsnClass::Tbz | InsnClass::Tbnz => "±32 KiB",
        InsnClass::Adrp => "±4 GiB",
        InsnClass::LiteralLoad | InsnClass::CompareBranch | InsnClass::Other => "n/a",
    }
}

// --- Field layouts (Arm ARM, A64 encoding index) -------------------------------------------------

/// `B`/`BL`: bit 31 = op, bits 30:26 = 00101, imm26 in bits 25:0.
const B_MASK: u32 = 0xfc00_0000;
const B_VALUE: u32 = 0x1400_0000;
const BL_VALUE: u32 = 0x9400_0000;
const IMM26_MASK: u32 = 0x03ff_ffff;

/// `B.cond`/`BC.cond`: bits 31:25 = 0101010, o1 (bit 24) = 0, imm19 in 23:5, o0 (bit 4), cond 3:0.
const BCOND_MASK: u32 = 0xff00_0000;
const BCOND_VALUE: u32 = 0x5400_0000;

/// `CBZ`/`CBNZ`: sf (bit 31), bits 30:25 = 011010, op (bit 24), imm19 in 23:5, Rt in 4:0.
const CB_MASK: u32 = 0x7f00_0000;
const CBZ_VALUE: u32 = 0x3400_0000;
const CBNZ_VALUE: u32 = 0x3500_0000;

/// `TBZ`/`TBNZ`: b5 (bit 31), bits 30:25 = 011011, op (bit 24), b40 in 23:19, imm14 in 18:5.
const TB_MASK: u32 = 0x7f00_0000;
const TBZ_VALUE: u32 = 0x3600_0000;
const TBNZ_VALUE: u32 = 0x3700_0000;

/// imm19 in bits 23:5 (B.cond, CBZ/CBNZ, literal loads).
const IMM19_SHIFT: u32 = 5;
const IMM19_MASK: u32 = 0x7_ffff << IMM19_SHIFT;
/// imm14 in bits 18:5 (TBZ/TBNZ).
const IMM14_SHIFT: u32 = 5;
const IMM14_MASK: u32 = 0x3fff << IMM14_SHIFT;

/// `ADR`/`ADRP`: op (bit 31), immlo in 30:29, bits 28:24 = 10000, immhi in 23:5, Rd in 4:0.
const ADR_MASK: u32 = 0x9f00_0000;
const ADR_VALUE: u32 = 0x1000_0000;
const ADRP_VALUE: u32 = 0x9000_0000;
const IMMLO_SHIFT: u32 = 29;
const IMMLO_MASK: u32 = 0x3 << IMMLO_SHIFT;
const IMMHI_SHIFT: u32 = 5;
const IMMHI_MASK: u32 = 0x7_ffff << IMMHI_SHIFT;

/// Load register (literal): opc in 31:30, bits 29:27 = 011, V (bit 26), bits 25:24 = 00.
/// `V = 1, opc = 11` is unallocated.
const LDR_LIT_MASK: u32 = 0x3b00_0000;
const LDR_LIT_VALUE: u32 = 0x1800_0000;
const LDR_LIT_UNALLOCATED_MASK: u32 = 0xc400_0000;

/// FEAT_CMPBR compare and branch (register and immediate forms): sf (bit 31),
/// bits 30:25 = 111010, imm9 in 13:5. The space was unallocated before FEAT_CMPBR.
const CMPBR_MASK: u32 = 0x7e00_0000;
const CMPBR_VALUE: u32 = 0x7400_0000;

/// ADRP works in 4 KiB pages.
const PAGE_MASK: u64 = !0xfff;

/// Classifies an A64 instruction word by the PC-relative form it has, if any.
///
/// ```
/// use alt_runtime::aarch64::reloc::{classify, InsnClass};
///
/// assert_eq!(classify(0x1400_0000), InsnClass::B); // B .
/// assert_eq!(classify(0x9000_0000), InsnClass::Adrp); // ADRP x0, #0
/// assert_eq!(classify(0xd503_201f), InsnClass::Other); // NOP
/// ```
pub const fn classify(insn: u32) -> InsnClass {
    if insn & B_MASK == B_VALUE {
        InsnClass::B
    } else if insn & B_MASK == BL_VALUE {
        InsnClass::Bl
    } else if insn & BCOND_MASK == BCOND_VALUE {
        InsnClass::BCond
    } else if insn & CB_MASK == CBZ_VALUE {
        InsnClass::Cbz
    } else if insn & CB_MASK == CBNZ_VALUE {
        InsnClass::Cbnz
    } else if insn & TB_MASK == TBZ_VALUE {
        InsnClass::Tbz
    } else if insn & TB_MASK == TBNZ_VALUE {
        InsnClass::Tbnz
    } else if insn & ADR_MASK == ADR_VALUE {
        InsnClass::Adr
    } else if insn & ADR_MASK == ADRP_VALUE {
        InsnClass::Adrp
    } else if insn & LDR_LIT_MASK == LDR_LIT_VALUE
        && insn & LDR_LIT_UNALLOCATED_MASK != LDR_LIT_UNALLOCATED_MASK
    {
        InsnClass::LiteralLoad
    } else if insn & CMPBR_MASK == CMPBR_VALUE {
        InsnClass::CompareBranch
    } else {
        InsnClass::Other
    }
}

/// Sign-extends the low `bits` bits of `value`.
const fn sign_extend(value: u32, bits: u32) -> i64 {
    let shift = 64 - bits;
    (((value as u64) << shift) as i64) >> shift
}

/// The signed offset an instruction encodes, in the unit of its field (words for branches and
/// literals, bytes for ADR, pages for ADRP). `None` for [`InsnClass::Other`].
fn encoded_offset(insn: u32, class: InsnClass) -> Option<i64> {
    match class {
        InsnClass::B | InsnClass::Bl => Some(sign_extend(insn & IMM26_MASK, 26)),
        InsnClass::BCond | InsnClass::Cbz | InsnClass::Cbnz | InsnClass::LiteralLoad => {
            Some(sign_extend((insn & IMM19_MASK) >> IMM19_SHIFT, 19))
        }
        InsnClass::Tbz | InsnClass::Tbnz => {
            Some(sign_extend((insn & IMM14_MASK) >> IMM14_SHIFT, 14))
        }
        InsnClass::Adr | InsnClass::Adrp => {
            let lo = (insn & IMMLO_MASK) >> IMMLO_SHIFT;
            let hi = (insn & IMMHI_MASK) >> IMMHI_SHIFT;
            Some(sign_extend((hi << 2) | lo, 21))
        }
        InsnClass::CompareBranch => Some(sign_extend((insn >> 5) & 0x1ff, 9)),
        InsnClass::Other => None,
    }
}

/// The address a PC-relative instruction at `pc` refers to.
///
/// For branches (`B`, `BL`, `B.cond`, `CBZ`/`CBNZ`, `TBZ`/`TBNZ`, `CB<cc>`) the branch
/// destination; for `ADR` the address it computes; for `ADRP` the 4 KiB page it computes
/// (`(pc & !0xfff) + imm * 4096`); for literal loads the address of the literal. `None` for
/// instructions that are not PC-relative. Address arithmetic wraps modulo 2^64, as the
/// architecture's does.
///
/// ```
/// use alt_runtime::aarch64::reloc::branch_target;
///
/// assert_eq!(branch_target(0x9400_0002, 0x1000), Some(0x1008)); // BL +8
/// assert_eq!(branch_target(0xd503_201f, 0x1000), None); // NOP
/// ```
pub fn branch_target(insn: u32, pc: u64) -> Option<u64> {
    let class = classify(insn);
    let offset = encoded_offset(insn, class)?;
    Some(match class {
        InsnClass::Adr => pc.wrapping_add(offset as u64),
        InsnClass::Adrp => (pc & PAGE_MASK).wrapping_add((offset as u64) << 12),
        _ => pc.wrapping_add((offset as u64) << 2),
    })
}

/// Re-encodes `insn` so that, placed at `pc`, it refers to `target`. The instruction must be one
/// of the relocatable classes.
fn retarget(insn: u32, class: InsnClass, target: u64, pc: u64) -> Result<u32, RelocErrorKind> {
    let out_of_range = RelocErrorKind::OutOfRange { class, target, pc };
    // Displacements are taken modulo 2^64 and read as signed, matching the hardware's wrapping
    // address arithmetic; every field is far narrower than 64 bits.
    let disp = target.wrapping_sub(pc) as i64;
    let (value, bits): (i64, u32) = match class {
        InsnClass::Adr => (disp, 21),
        InsnClass::Adrp => {
            let page_disp = target.wrapping_sub(pc & PAGE_MASK) as i64;
            if page_disp & 0xfff != 0 {
                // Not a page: cannot happen for targets computed by `branch_target`.
                return Err(out_of_range);
            }
            (page_disp >> 12, 21)
        }
        InsnClass::B | InsnClass::Bl | InsnClass::BCond => {
            if disp & 3 != 0 {
                return Err(RelocErrorKind::Misaligned);
            }
            (
                disp >> 2,
                if matches!(class, InsnClass::BCond) {
                    19
                } else {
                    26
                },
            )
        }
        InsnClass::Cbz | InsnClass::Cbnz => {
            if disp & 3 != 0 {
                return Err(RelocErrorKind::Misaligned);
            }
            (disp >> 2, 19)
        }
        InsnClass::Tbz | InsnClass::Tbnz => {
            if disp & 3 != 0 {
                return Err(RelocErrorKind::Misaligned);
            }
            (disp >> 2, 14)
        }
        InsnClass::LiteralLoad => return Err(RelocErrorKind::UnsupportedLiteral),
        InsnClass::CompareBranch => return Err(RelocErrorKind::UnsupportedPcRelative),
        InsnClass::Other => return Ok(insn),
    };
    let min = -(1i64 << (bits - 1));
    let max = (1i64 << (bits - 1)) - 1;
    if value < min || value > max {
        return Err(out_of_range);
    }
    let field = (value as u32) & ((1u32 << bits) - 1);
    Ok(match class {
        InsnClass::B | InsnClass::Bl => (insn & !IMM26_MASK) | field,
        InsnClass::BCond | InsnClass::Cbz | InsnClass::Cbnz => {
            (insn & !IMM19_MASK) | (field << IMM19_SHIFT)
        }
        InsnClass::Tbz | InsnClass::Tbnz => (insn & !IMM14_MASK) | (field << IMM14_SHIFT),
        // ADR, ADRP: immlo = low 2 bits, immhi = high 19 bits.
        _ => {
            (insn & !(IMMLO_MASK | IMMHI_MASK))
                | ((field & 0x3) << IMMLO_SHIFT)
                | ((field >> 2) << IMMHI_SHIFT)
        }
    })
}

/// Refuses the forms that are PC-relative but never relocated, whatever the addresses.
fn refuse_unsupported(class: InsnClass) -> Result<(), RelocErrorKind> {
    match class {
        InsnClass::LiteralLoad => Err(RelocErrorKind::UnsupportedLiteral),
        InsnClass::CompareBranch => Err(RelocErrorKind::UnsupportedPcRelative),
        _ => Ok(()),
    }
}

fn check_aligned(from: u64, to: u64) -> Result<(), RelocErrorKind> {
    if from & 3 != 0 || to & 3 != 0 {
        Err(RelocErrorKind::Misaligned)
    } else {
        Ok(())
    }
}

/// Relocates one instruction: `insn` was at address `from`; returns the encoding that refers to
/// the same address when placed at `to`.
///
/// Instructions that are not PC-relative are returned unchanged. Branches, `ADR` and `ADRP` are
/// re-targeted (for `ADRP`, to the same 4 KiB page, whatever the page offsets of `from` and
/// `to`). Errors ([`RelocError::index`] is 0):
///
/// - [`RelocErrorKind::Misaligned`] if `from` or `to` is not a multiple of 4;
/// - [`RelocErrorKind::OutOfRange`] if the target cannot be reached from `to` (distances are
///   taken modulo 2^64, as the hardware's address arithmetic is);
/// - [`RelocErrorKind::UnsupportedLiteral`] for literal loads, even when `from == to`, so a
///   table is accepted or refused independently of where things happen to land;
/// - [`RelocErrorKind::UnsupportedPcRelative`] for FEAT_CMPBR `CB<cc>`.
///
/// ```
/// use alt_runtime::aarch64::reloc::{relocate_insn, RelocErrorKind};
///
/// // `B .` at 0x1000 moved to 0x1008 must branch back by 8 bytes: imm26 = -2.
/// assert_eq!(relocate_insn(0x1400_0000, 0x1000, 0x1008), Ok(0x17ff_fffe));
/// // LDR x0, <literal> is refused.
/// let err = relocate_insn(0x5800_0040, 0x1000, 0x2000).unwrap_err();
/// assert_eq!(err.kind, RelocErrorKind::UnsupportedLiteral);
/// ```
pub fn relocate_insn(insn: u32, from: u64, to: u64) -> Result<u32, RelocError> {
    let error = |kind| RelocError { index: 0, kind };
    check_aligned(from, to).map_err(error)?;
    let class = classify(insn);
    refuse_unsupported(class).map_err(error)?;
    match branch_target(insn, from) {
        Some(target) => retarget(insn, class, target, to).map_err(error),
        None => Ok(insn),
    }
}

/// The relocated form of `code[index]`, for a block moving from `from` to `to`.
fn relocate_in_block(
    code_len: usize,
    index: usize,
    insn: u32,
    from: u64,
    to: u64,
) -> Result<u32, RelocErrorKind> {
    let class = classify(insn);
    refuse_unsupported(class)?;
    let offset = (index as u64).wrapping_mul(4);
    let old_pc = from.wrapping_add(offset);
    let new_pc = to.wrapping_add(offset);
    let Some(target) = branch_target(insn, old_pc) else {
        return Ok(insn);
    };
    // ADRP is page-relative: the page it names does not move with the block.
    if class != InsnClass::Adrp {
        let block_bytes = (code_len as u64).saturating_mul(4);
        if target.wrapping_sub(from) <= block_bytes {
            // The target is inside the block (or its end): it moves with the block, so the
            // encoded offset stays as it is.
            return Ok(insn);
        }
    }
    retarget(insn, class, target, new_pc)
}

/// Relocates a block of instructions that was assembled at `from` and is being placed at `to`,
/// in place, as Linux's alternative patcher does for a replacement sequence.
///
/// For each instruction, a target *inside* the block moves with it: the encoding is kept. A target
/// *outside* the block stays where it was: the instruction is re-targeted for its new address.
/// "Inside" is `from <= target <= from + 4 * code.len()`: the end of the block counts as inside,
/// so `b 1f` with `1:` just after the replacement lands just after the copied replacement -- in the
/// site's NOP fill, falling through to the end of the site -- and not on whatever followed the
/// replacement in its own section (Linux and Xen use the same inclusive bound).
/// `ADRP` is always re-targeted, because it names a 4 KiB page and the page does not move with
/// the block. `ADR` follows the inside/outside rule.
///
/// Either every instruction is relocated or, on error, `code` is left exactly as it was; the
/// error names the index of the first instruction that could not be relocated (errors for
/// misaligned `from` or `to` name index 0). Errors are those of [`relocate_insn`].
///
/// ```
/// use alt_runtime::aarch64::reloc::relocate_block;
///
/// // 0: CBZ x0, +8 (to index 2, inside)   1: B +0x1000 (outside)   2: RET
/// let mut code = [0xb400_0040, 0x1400_0400, 0xd65f_03c0];
/// relocate_block(&mut code, 0x10_0000, 0x10_2000).unwrap();
/// assert_eq!(code[0], 0xb400_0040); // unchanged
/// assert_eq!(code[1], 0x17ff_fc00); // now B -0x1000: still reaches 0x10_1004
/// assert_eq!(code[2], 0xd65f_03c0);
/// ```
pub fn relocate_block(code: &mut [u32], from: u64, to: u64) -> Result<(), RelocError> {
    check_aligned(from, to).map_err(|kind| RelocError { index: 0, kind })?;
    let len = code.len();
    // First pass: check everything, write nothing.
    for (index, &insn) in code.iter().enumerate() {
        relocate_in_block(len, index, insn, from, to).map_err(|kind| RelocError { index, kind })?;
    }
    // Second pass: cannot fail, the first pass computed the same results.
    for (index, insn) in code.iter_mut().enumerate() {
        if let Ok(new) = relocate_in_block(len, index, *insn, from, to) {
            *insn = new;
        }
    }
    Ok(())
}
