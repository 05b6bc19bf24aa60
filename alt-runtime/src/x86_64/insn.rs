//! An x86-64 instruction length decoder (64-bit mode only).
//!
//! [`decode`] finds where the instruction at the start of a byte slice ends, and where its
//! PC-relative parts are: a `rel8`/`rel16`/`rel32` branch displacement ([`Insn::rel`]) or a
//! RIP-relative `disp32` memory operand ([`Insn::rip_disp_offset`]). That is what is needed to
//! check that a patched site holds whole instructions and to move code to another address
//! ([`relocate`](super::relocate)). It does not name instructions or operands.
//!
//! Covered: legacy prefixes (`66 67 f0 f2 f3` and the segment overrides), REX, the one-byte map,
//! the `0f`, `0f 38` and `0f 3a` maps (including 3DNow! `0f 0f` and the SSE4a `extrq`/`insertq`
//! immediate forms), VEX (`c4`, `c5`), EVEX (`62`, maps 1, 2, 3, 5, 6) and XOP (`8f`, maps 8, 9,
//! 10). Opcodes that do not exist in 64-bit mode are errors, as are instructions longer than 15
//! bytes and instructions cut off by the end of the slice. Some opcodes reserved in a map are
//! accepted with the length their map's rule gives; the decoder never panics and never reads past
//! the slice.
//!
//! Forms whose length or meaning depend on the CPU's vendor are refused, so that a plan made on
//! one machine holds on every other: a `66`-prefixed near branch (Intel ignores the prefix, AMD
//! takes a 16-bit displacement and truncates the target) and `ud0` (a ModRM byte on Intel, none
//! on AMD). No compiler emits either.
//!
//! ```
//! use alt_runtime::x86_64::insn::{decode, BranchKind, InsnKind};
//!
//! // call rel32
//! let call = decode(&[0xe8, 0x10, 0x00, 0x00, 0x00]).unwrap();
//! assert_eq!(call.len, 5);
//! assert_eq!(call.kind, InsnKind::Call);
//! let rel = call.rel.unwrap();
//! assert_eq!((rel.offset, rel.size, rel.kind), (1, 4, BranchKind::Call));
//! assert_eq!(call.branch_target(0x1000), Some(0x1015));
//!
//! // cmp dword [rip + 0x100], 5
//! let cmp = decode(&[0x83, 0x3d, 0x00, 0x01, 0x00, 0x00, 0x05]).unwrap();
//! assert_eq!(cmp.len, 7);
//! assert_eq!(cmp.rip_disp_offset, Some(2));
//! assert_eq!(cmp.rip_target(0x1000), Some(0x1107)); // relative to the end, after the imm8
//! ```

use core::fmt;

/// Architectural limit on the length of one instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset of the first byte of the instruction that could not be decoded, relative to
    /// the slice given to [`decode`], [`instructions`] or [`ends_exactly`].
    pub offset: usize,
    /// What is wrong, for people.
    pub reason: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decode x86-64 instruction at offset {}: {}",
            self.offset, self.reason
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// What a PC-relative branch displacement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BranchKind {
    /// `call rel32` (`e8`).
    Call,
    /// `jmp rel8` / `jmp rel32` (`eb`, `e9`).
    Jmp,
    /// Conditional jump `jcc rel8` / `jcc rel32` (`70..7f`, `0f 80..8f`).
    Jcc,
    /// `loop`, `loope`, `loopne`, `jrcxz` (`e0..e3`, rel8 only).
    Loop,
    /// `xbegin rel32` (or `rel16` with an operand-size prefix) (`c7 f8`).
    Xbegin,
}

/// A PC-relative branch displacement inside an instruction. The target is the address of the
/// next instruction plus the sign-extended displacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelOperand {
    /// Byte offset of the displacement within the instruction.
    pub offset: u8,
    /// Size of the displacement in bytes: 1, 4, or 2 (only `xbegin` with `66`).
    pub size: u8,
    /// The kind of branch.
    pub kind: BranchKind,
    /// The displacement, sign-extended.
    pub disp: i32,
}

/// A rough classification of an instruction, for callers that look for control flow or padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InsnKind {
    /// Anything not listed below.
    Other,
    /// A NOP: `90` (without `rex.b` or `f3`), `0f 1f /0` (any length, any prefixes).
    Nop,
    /// Direct near call (`e8`).
    Call,
    /// Indirect call (`ff /2`, `ff /3`).
    CallIndirect,
    /// Direct jump (`eb`, `e9`).
    Jmp,
    /// Indirect jump (`ff /4`, `ff /5`).
    JmpIndirect,
    /// Conditional jump (`70..7f`, `0f 80..8f`).
    Jcc,
    /// `loop`, `loope`, `loopne`, `jrcxz`.
    Loop,
    /// Near return (`c3`, `c2 iw`).
    Ret,
    /// `int3` (`cc`).
    Int3,
    /// An undefined-instruction trap: `ud2` (`0f 0b`), `ud1` (`0f b9`). (`ud0` is refused: its
    /// length depends on the vendor.)
    Ud,
    /// `xbegin`.
    Xbegin,
}

/// How the opcode of an instruction is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Legacy and REX prefixes, then an opcode in the one-byte, `0f`, `0f 38` or `0f 3a` map.
    Legacy,
    /// Two- or three-byte VEX prefix (`c5`, `c4`).
    Vex,
    /// EVEX prefix (`62`).
    Evex,
    /// AMD XOP prefix (`8f`).
    Xop,
}

/// The legacy and REX prefixes in front of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prefixes {
    /// Number of legacy and REX prefix bytes (the offset of the opcode or VEX/EVEX/XOP prefix).
    pub count: u8,
    /// `66` operand-size override seen.
    pub operand_size: bool,
    /// `67` address-size override seen: memory operands use 32-bit addresses
    /// (RIP-relative ones are EIP-relative).
    pub address_size: bool,
    /// `f0` lock seen.
    pub lock: bool,
    /// The last of `f2` / `f3` seen, if any.
    pub rep: Option<u8>,
    /// The last segment override (`26 2e 36 3e 64 65`) seen, if any.
    pub segment: Option<u8>,
    /// The REX byte that applies (immediately before the opcode), if any.
    pub rex: Option<u8>,
}

/// One decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Insn {
    /// Length in bytes (1 to 15).
    pub len: u8,
    /// The PC-relative branch displacement, if the instruction has one.
    pub rel: Option<RelOperand>,
    /// Byte offset of the `disp32` of a RIP-relative memory operand (ModRM `mod=00 rm=101`), if
    /// any. The operand addresses the end of the instruction (after any immediate) plus the
    /// sign-extended `disp32` ([`Insn::rip_target`]).
    pub rip_disp_offset: Option<u8>,
    /// A rough classification.
    pub kind: InsnKind,
    /// How the opcode is encoded.
    pub encoding: Encoding,
    /// Legacy and REX prefixes.
    pub prefixes: Prefixes,
    /// Opcode map: 0 one-byte, 1 `0f`, 2 `0f 38`, 3 `0f 3a`, or the map number of a VEX, EVEX
    /// or XOP prefix (3DNow! is map 1 opcode `0f`; its suffix byte is the last byte).
    pub map: u8,
    /// Byte offset of the opcode byte (after all prefixes and escape bytes).
    pub opcode_offset: u8,
    /// The opcode byte within its map.
    pub opcode: u8,
    /// Byte offset of the ModRM byte, if any.
    pub modrm_offset: Option<u8>,
    /// Byte offset of the memory displacement (ModRM displacement or `moffs`), if any.
    pub disp_offset: Option<u8>,
    /// Size in bytes of the memory displacement (0, 1, 4, or 8 for `moffs`). An EVEX `disp8` is
    /// stored scaled (compressed); its size here is 1.
    pub disp_size: u8,
    /// The memory displacement, sign-extended (the raw stored value; 0 if there is none).
    pub disp: i64,
    /// Byte offset of the immediate bytes, if any (excluding branch displacements and the 3DNow!
    /// opcode suffix; including an `is4` register byte).
    pub imm_offset: Option<u8>,
    /// Total size in bytes of the immediates (`enter` has 3: `iw` then `ib`).
    pub imm_size: u8,
}

impl Insn {
    /// The target of the PC-relative branch if this instruction, placed at `addr`, has one.
    pub fn branch_target(&self, addr: u64) -> Option<u64> {
        let rel = self.rel?;
        Some(
            addr.wrapping_add(u64::from(self.len))
                .wrapping_add(rel.disp as i64 as u64),
        )
    }

    /// The address of the RIP-relative memory operand if this instruction, placed at `addr`, has
    /// one. With an address-size prefix (`67`) the result is truncated to 32 bits as the CPU does.
    pub fn rip_target(&self, addr: u64) -> Option<u64> {
        self.rip_disp_offset?;
        let target = addr
            .wrapping_add(u64::from(self.len))
            .wrapping_add(self.disp as u64);
        Some(if self.prefixes.address_size {
            target & 0xffff_ffff
        } else {
            target
        })
    }
}

/// How to decode what follows an opcode byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Not an instruction in 64-bit mode.
    Invalid,
    /// Opcode only.
    Bare,
    /// ModRM (with SIB and displacement as it says).
    ModRm,
    /// ModRM, then `ib`.
    ModRmIb,
    /// ModRM, then `iz` (`iw` with `66` and without `rex.w`, otherwise `id`).
    ModRmIz,
    /// ModRM always treated as a register operand (`mov` to and from CR/DR).
    ModRmReg,
    /// `ib`.
    Ib,
    /// `iw`.
    Iw,
    /// `iz`.
    Iz,
    /// `iv`: `io` with `rex.w`, `iw` with `66`, `id` otherwise (`b8..bf`).
    Iv,
    /// Memory offset: 8 bytes, 4 with `67` (`a0..a3`).
    Moffs,
    /// `iw` then `ib` (`enter`).
    Enter,
    /// Group 3 `f6`: ModRM, then `ib` for `/0` and `/1`.
    Group3Byte,
    /// Group 3 `f7`: ModRM, then `iz` for `/0` and `/1`.
    Group3Full,
    /// `rel8` branch.
    Rel8(BranchKind),
    /// `rel32` branch (operand size does not shorten it in 64-bit mode).
    Rel32(BranchKind),
    /// `c7`: `xbegin relz` for ModRM `f8`, otherwise ModRM then `iz`.
    MovOrXbegin,
    /// `0f 78`: `vmread` (ModRM), or `extrq`/`insertq` (ModRM, `ib`, `ib`) with `66` / `f2`.
    VmreadOrExtrq,
    /// 3DNow!: ModRM, then the opcode suffix byte.
    D3Now,
    /// ModRM, then `id` (XOP map 10).
    ModRmId,
}

/// The form of a one-byte-map opcode (escape and prefix bytes are handled before this).
fn primary_form(op: u8) -> Form {
    use Form::*;
    match op {
        // add, or, adc, sbb, and, sub, xor, cmp: Eb,Gb / Ev,Gv / Gb,Eb / Gv,Ev / AL,ib / eAX,iz
        0x00..=0x3f => match op & 7 {
            0..=3 => ModRm,
            4 => Ib,
            5 => Iz,
            // push/pop es/cs/ss/ds, daa, das, aaa, aas; and the prefixes/escape bytes.
            _ => Invalid,
        },
        0x40..=0x4f => Invalid, // REX, consumed as a prefix
        0x50..=0x5f => Bare,
        0x60..=0x62 => Invalid, // pusha, popa; 62 is EVEX
        0x63 => ModRm,          // movsxd
        0x64..=0x67 => Invalid, // prefixes
        0x68 => Iz,
        0x69 => ModRmIz,
        0x6a => Ib,
        0x6b => ModRmIb,
        0x6c..=0x6f => Bare,
        0x70..=0x7f => Rel8(BranchKind::Jcc),
        0x80 => ModRmIb,
        0x81 => ModRmIz,
        0x82 => Invalid,
        0x83 => ModRmIb,
        0x84..=0x8f => ModRm,
        0x90..=0x99 => Bare,
        0x9a => Invalid, // call far ptr16:32
        0x9b..=0x9f => Bare,
        0xa0..=0xa3 => Moffs,
        0xa4..=0xa7 => Bare,
        0xa8 => Ib,
        0xa9 => Iz,
        0xaa..=0xaf => Bare,
        0xb0..=0xb7 => Ib,
        0xb8..=0xbf => Iv,
        0xc0 | 0xc1 => ModRmIb,
        0xc2 => Iw,
        0xc3 => Bare,
        0xc4 | 0xc5 => Invalid, // VEX
        0xc6 => ModRmIb,
        0xc7 => MovOrXbegin,
        0xc8 => Enter,
        0xc9 => Bare,
        0xca => Iw,
        0xcb | 0xcc => Bare,
        0xcd => Ib,
        0xce => Invalid, // into
        0xcf => Bare,
        0xd0..=0xd3 => ModRm,
        0xd4..=0xd6 => Invalid, // aam, aad, salc
        0xd7 => Bare,
        0xd8..=0xdf => ModRm, // x87
        0xe0..=0xe3 => Rel8(BranchKind::Loop),
        0xe4..=0xe7 => Ib,
        0xe8 => Rel32(BranchKind::Call),
        0xe9 => Rel32(BranchKind::Jmp),
        0xea => Invalid, // jmp far ptr16:32
        0xeb => Rel8(BranchKind::Jmp),
        0xec..=0xef => Bare,
        0xf0 | 0xf2 | 0xf3 => Invalid, // prefixes
        0xf1 | 0xf4 | 0xf5 => Bare,
        0xf6 => Group3Byte,
        0xf7 => Group3Full,
        0xf8..=0xfd => Bare,
        0xfe | 0xff => ModRm,
    }
}

/// The form of an opcode in the `0f` map.
fn map0f_form(op: u8) -> Form {
    use Form::*;
    match op {
        0x00..=0x03 => ModRm,
        0x04 | 0x0a | 0x0c => Invalid,
        0x05..=0x09 | 0x0b | 0x0e => Bare, // syscall, clts, sysret, invd, wbinvd, ud2, femms
        0x0d => ModRm,
        0x0f => D3Now,
        0x10..=0x1f => ModRm,
        0x20..=0x23 => ModRmReg,
        0x24..=0x27 => Invalid,
        0x28..=0x2f => ModRm,
        0x30..=0x35 | 0x37 => Bare,
        0x36 | 0x39 | 0x3b..=0x3f => Invalid,
        0x38 | 0x3a => Invalid, // escapes, handled by the caller
        0x40..=0x6f => ModRm,
        0x70..=0x73 => ModRmIb,
        0x74..=0x76 => ModRm,
        0x77 => Bare, // emms
        0x78 => VmreadOrExtrq,
        0x79 => ModRm,
        0x7a | 0x7b => Invalid,
        0x7c..=0x7f => ModRm,
        0x80..=0x8f => Rel32(BranchKind::Jcc),
        0x90..=0x9f => ModRm,
        0xa0..=0xa2 => Bare,
        0xa3 => ModRm,
        0xa4 => ModRmIb,
        0xa5..=0xa7 => ModRm, // shld; VIA PadLock (xsha*, xstore, xcrypt*)
        0xa8..=0xaa => Bare,
        0xab => ModRm,
        0xac => ModRmIb,
        0xad..=0xb9 => ModRm,
        0xba => ModRmIb,
        0xbb..=0xc1 => ModRm,
        0xc2 => ModRmIb,
        0xc3 => ModRm,
        0xc4..=0xc6 => ModRmIb,
        0xc7 => ModRm,
        0xc8..=0xcf => Bare,
        0xd0..=0xff => ModRm,
    }
}

/// The form of an opcode in VEX/EVEX map 1 (`0f`).
fn vex_map1_form(op: u8, evex: bool) -> Form {
    match op {
        0x77 if !evex => Form::Bare, // vzeroupper, vzeroall
        0x70..=0x73 | 0xc2 | 0xc4..=0xc6 => Form::ModRmIb,
        _ => Form::ModRm,
    }
}

/// Reads bytes of one instruction, enforcing the slice end and the 15-byte limit.
struct Cursor<'a> {
    code: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError { offset: 0, reason }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_INSN_LEN {
            return Err(self.err("instruction longer than 15 bytes"));
        }
        self.code
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err("truncated instruction"))
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a little-endian, sign-extended value of `size` (1, 2, 4 or 8) bytes.
    fn signed(&mut self, size: u8) -> Result<i64, DecodeError> {
        let mut raw = [0u8; 8];
        for slot in raw.iter_mut().take(usize::from(size)) {
            *slot = self.byte()?;
        }
        let value = u64::from_le_bytes(raw);
        let shift = 64 - 8 * u32::from(size);
        Ok(((value << shift) as i64) >> shift)
    }

    /// Skips `size` bytes of immediate.
    fn skip(&mut self, size: u8) -> Result<(), DecodeError> {
        for _ in 0..size {
            self.byte()?;
        }
        Ok(())
    }

    /// Offset as u8; always at most 15 because `peek` enforces the limit.
    fn off(&self) -> u8 {
        self.pos as u8
    }
}

/// What a ModRM byte (with its SIB and displacement) said.
#[derive(Clone, Copy)]
struct ModRm {
    byte: u8,
}

impl ModRm {
    fn mode(self) -> u8 {
        self.byte >> 6
    }
    fn reg(self) -> u8 {
        (self.byte >> 3) & 7
    }
    fn rm(self) -> u8 {
        self.byte & 7
    }
}

/// Decoding state for one instruction.
struct Decoder<'a> {
    cur: Cursor<'a>,
    insn: Insn,
    rex_w: bool,
}

impl Decoder<'_> {
    /// Reads ModRM, SIB and displacement. With `force_reg` the ModRM is a register operand
    /// whatever its `mod` bits say.
    fn modrm(&mut self, force_reg: bool) -> Result<ModRm, DecodeError> {
        self.insn.modrm_offset = Some(self.cur.off());
        let m = ModRm {
            byte: self.cur.byte()?,
        };
        if force_reg || m.mode() == 3 {
            return Ok(m);
        }
        let mut disp_size = match m.mode() {
            1 => 1,
            2 => 4,
            _ => 0,
        };
        if m.rm() == 4 {
            let sib = self.cur.byte()?;
            if m.mode() == 0 && sib & 7 == 5 {
                disp_size = 4; // no base, disp32
            }
        } else if m.mode() == 0 && m.rm() == 5 {
            disp_size = 4;
            self.insn.rip_disp_offset = Some(self.cur.off());
        }
        if disp_size != 0 {
            self.insn.disp_offset = Some(self.cur.off());
            self.insn.disp_size = disp_size;
            self.insn.disp = self.cur.signed(disp_size)?;
        }
        Ok(m)
    }

    fn imm(&mut self, size: u8) -> Result<(), DecodeError> {
        if size == 0 {
            return Ok(());
        }
        self.insn.imm_offset = Some(self.cur.off());
        self.insn.imm_size = size;
        self.cur.skip(size)
    }

    /// Size of an `iz` immediate (or `relz` of `xbegin`).
    fn z_size(&self) -> u8 {
        if self.insn.prefixes.operand_size && !self.rex_w {
            2
        } else {
            4
        }
    }

    fn rel(&mut self, size: u8, kind: BranchKind) -> Result<(), DecodeError> {
        // With 66, Intel CPUs ignore the prefix on a near branch in 64-bit mode, while AMD's
        // take a 16-bit displacement (and truncate the target to 16 bits): the length and the
        // meaning depend on the vendor. No compiler emits it; refuse it.
        if self.insn.prefixes.operand_size && kind != BranchKind::Xbegin {
            return Err(self
                .cur
                .err("66-prefixed near branch: its length differs between Intel and AMD CPUs"));
        }
        let offset = self.cur.off();
        let disp = self.cur.signed(size)? as i32;
        self.insn.rel = Some(RelOperand {
            offset,
            size,
            kind,
            disp,
        });
        Ok(())
    }

    /// Decodes what follows the opcode byte according to `form`.
    fn operands(&mut self, form: Form) -> Result<Option<ModRm>, DecodeError> {
        let mut modrm = None;
        match form {
            Form::Invalid => return Err(self.cur.err("opcode invalid in 64-bit mode")),
            Form::Bare => {}
            Form::ModRm => modrm = Some(self.modrm(false)?),
            Form::ModRmReg => modrm = Some(self.modrm(true)?),
            Form::ModRmIb => {
                modrm = Some(self.modrm(false)?);
                self.imm(1)?;
            }
            Form::ModRmIz => {
                modrm = Some(self.modrm(false)?);
                self.imm(self.z_size())?;
            }
            Form::ModRmId => {
                modrm = Some(self.modrm(false)?);
                self.imm(4)?;
            }
            Form::Ib => self.imm(1)?,
            Form::Iw => self.imm(2)?,
            Form::Iz => self.imm(self.z_size())?,
            Form::Iv => {
                let size = if self.rex_w { 8 } else { self.z_size() };
                self.imm(size)?;
            }
            Form::Moffs => {
                let size = if self.insn.prefixes.address_size {
                    4
                } else {
                    8
                };
                self.insn.disp_offset = Some(self.cur.off());
                self.insn.disp_size = size;
                self.insn.disp = self.cur.signed(size)?;
            }
            Form::Enter => self.imm(3)?,
            Form::Group3Byte | Form::Group3Full => {
                let m = self.modrm(false)?;
                if m.reg() <= 1 {
                    let size = if form == Form::Group3Byte {
                        1
                    } else {
                        self.z_size()
                    };
                    self.imm(size)?;
                }
                modrm = Some(m);
            }
            Form::Rel8(kind) => self.rel(1, kind)?,
            Form::Rel32(kind) => self.rel(4, kind)?,
            Form::MovOrXbegin => {
                if self.cur.peek()? == 0xf8 {
                    self.insn.modrm_offset = Some(self.cur.off());
                    modrm = Some(ModRm {
                        byte: self.cur.byte()?,
                    });
                    self.rel(self.z_size(), BranchKind::Xbegin)?;
                } else {
                    modrm = Some(self.modrm(false)?);
                    self.imm(self.z_size())?;
                }
            }
            Form::VmreadOrExtrq => {
                modrm = Some(self.modrm(false)?);
                let p = self.insn.prefixes;
                let sse4a = match p.rep {
                    Some(0xf2) => true,
                    Some(_) => false,
                    None => p.operand_size,
                };
                if sse4a {
                    self.imm(2)?;
                }
            }
            Form::D3Now => {
                modrm = Some(self.modrm(false)?);
                self.cur.skip(1)?; // the opcode suffix
            }
        }
        Ok(modrm)
    }

    /// Decodes a VEX, EVEX or XOP instruction whose prefix byte has just been read.
    fn vector(&mut self, encoding: Encoding) -> Result<Option<ModRm>, DecodeError> {
        let p = self.insn.prefixes;
        if p.operand_size || p.rep.is_some() || p.lock || p.rex.is_some() {
            return Err(self
                .cur
                .err("VEX/EVEX/XOP after a 66, f2, f3, f0 or REX prefix"));
        }
        self.insn.encoding = encoding;
        let map = match encoding {
            Encoding::Vex if self.insn.opcode == 0xc5 => {
                self.cur.byte()?;
                1
            }
            Encoding::Vex | Encoding::Xop => {
                let map = self.cur.byte()? & 0x1f;
                self.cur.byte()?;
                map
            }
            Encoding::Evex => {
                let map = self.cur.byte()? & 0x07;
                self.cur.byte()?;
                self.cur.byte()?;
                map
            }
            Encoding::Legacy => 0,
        };
        self.insn.map = map;
        self.insn.opcode_offset = self.cur.off();
        let op = self.cur.byte()?;
        self.insn.opcode = op;
        let evex = encoding == Encoding::Evex;
        let form = match (encoding, map) {
            (Encoding::Vex | Encoding::Evex, 1) => vex_map1_form(op, evex),
            (Encoding::Vex | Encoding::Evex, 2) => Form::ModRm,
            (Encoding::Vex | Encoding::Evex, 3) => Form::ModRmIb,
            (Encoding::Evex, 5 | 6) => Form::ModRm,
            (Encoding::Xop, 8) => Form::ModRmIb,
            (Encoding::Xop, 9) => Form::ModRm,
            (Encoding::Xop, 10) => Form::ModRmId,
            _ => return Err(self.cur.err("unsupported VEX/EVEX/XOP opcode map")),
        };
        self.operands(form)
    }
}

/// Decodes the instruction at the start of `code` (64-bit mode).
///
/// The error's `offset` is 0 (the instruction's start); its reason says what is wrong:
/// truncated input, an opcode invalid in 64-bit mode, an unsupported encoding or an instruction
/// longer than 15 bytes.
pub fn decode(code: &[u8]) -> Result<Insn, DecodeError> {
    let mut d = Decoder {
        cur: Cursor { code, pos: 0 },
        insn: Insn {
            len: 0,
            rel: None,
            rip_disp_offset: None,
            kind: InsnKind::Other,
            encoding: Encoding::Legacy,
            prefixes: Prefixes::default(),
            map: 0,
            opcode_offset: 0,
            opcode: 0,
            modrm_offset: None,
            disp_offset: None,
            disp_size: 0,
            disp: 0,
            imm_offset: None,
            imm_size: 0,
        },
        rex_w: false,
    };

    // Prefixes. A REX prefix counts only if the opcode follows it immediately.
    let mut p = Prefixes::default();
    loop {
        let b = d.cur.peek()?;
        match b {
            0x66 => p.operand_size = true,
            0x67 => p.address_size = true,
            0xf0 => p.lock = true,
            0xf2 | 0xf3 => p.rep = Some(b),
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => p.segment = Some(b),
            0x40..=0x4f => {}
            _ => break,
        }
        p.rex = if b & 0xf0 == 0x40 { Some(b) } else { None };
        d.cur.pos += 1;
    }
    p.count = d.cur.off();
    d.insn.prefixes = p;
    d.rex_w = p.rex.is_some_and(|rex| rex & 0x08 != 0);

    d.insn.opcode_offset = d.cur.off();
    let op = d.cur.byte()?;
    d.insn.opcode = op;
    let modrm = match op {
        0x0f => {
            let op2 = d.cur.byte()?;
            let (map, form) = match op2 {
                0x38 => (2, Form::ModRm),
                0x3a => (3, Form::ModRmIb),
                _ => (1, map0f_form(op2)),
            };
            d.insn.map = map;
            if map == 1 {
                d.insn.opcode_offset = d.cur.off() - 1;
                d.insn.opcode = op2;
            } else {
                d.insn.opcode_offset = d.cur.off();
                d.insn.opcode = d.cur.byte()?;
            }
            d.operands(form)?
        }
        0xc4 | 0xc5 => d.vector(Encoding::Vex)?,
        0x62 => d.vector(Encoding::Evex)?,
        0x8f => {
            // pop Ev is /0; any other reg field is an XOP prefix (map >= 8) or invalid.
            let next = d.cur.peek()?;
            if next & 0x38 == 0 {
                d.operands(Form::ModRm)?
            } else if next & 0x1f >= 8 {
                d.vector(Encoding::Xop)?
            } else {
                return Err(d.cur.err("opcode invalid in 64-bit mode"));
            }
        }
        _ => d.operands(primary_form(op))?,
    };

    if d.insn.encoding == Encoding::Legacy && d.insn.map == 1 && d.insn.opcode == 0xff {
        // Intel's ud0 takes a ModRM byte, AMD's does not: a vendor-dependent length.
        return Err(DecodeError {
            offset: 0,
            reason: "ud0: its length differs between Intel and AMD CPUs",
        });
    }
    d.insn.len = d.cur.off();
    d.insn.kind = classify(&d.insn, modrm);
    Ok(d.insn)
}

/// The rough kind of a decoded instruction.
fn classify(insn: &Insn, modrm: Option<ModRm>) -> InsnKind {
    if let Some(rel) = insn.rel {
        return match rel.kind {
            BranchKind::Call => InsnKind::Call,
            BranchKind::Jmp => InsnKind::Jmp,
            BranchKind::Jcc => InsnKind::Jcc,
            BranchKind::Loop => InsnKind::Loop,
            BranchKind::Xbegin => InsnKind::Xbegin,
        };
    }
    if insn.encoding != Encoding::Legacy {
        return InsnKind::Other;
    }
    let reg = modrm.map(ModRm::reg);
    match (insn.map, insn.opcode, reg) {
        (0, 0x90, _) => {
            let rex_b = insn.prefixes.rex.is_some_and(|rex| rex & 1 != 0);
            if rex_b || insn.prefixes.rep == Some(0xf3) {
                InsnKind::Other // xchg r8, rax / pause
            } else {
                InsnKind::Nop
            }
        }
        (1, 0x1f, Some(0)) => InsnKind::Nop,
        (0, 0xc2 | 0xc3, _) => InsnKind::Ret,
        (0, 0xcc, _) => InsnKind::Int3,
        (0, 0xff, Some(2 | 3)) => InsnKind::CallIndirect,
        (0, 0xff, Some(4 | 5)) => InsnKind::JmpIndirect,
        (1, 0x0b | 0xb9, _) => InsnKind::Ud,
        _ => InsnKind::Other,
    }
}

/// An iterator over the instructions in a byte slice; see [`instructions`].
#[derive(Debug, Clone)]
pub struct Instructions<'a> {
    code: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for Instructions<'_> {
    type Item = Result<(usize, Insn), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.code.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let at = self.pos;
        match decode(rest) {
            Ok(insn) => {
                self.pos += usize::from(insn.len);
                Some(Ok((at, insn)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(DecodeError {
                    offset: at,
                    reason: e.reason,
                }))
            }
        }
    }
}

/// Walks the whole instructions in `code`, yielding each with its offset. After an error (whose
/// `offset` is the start of the instruction that failed) the iterator ends.
///
/// ```
/// use alt_runtime::x86_64::insn::instructions;
///
/// let code = [0x90, 0x48, 0x89, 0xc8, 0xc3]; // nop; mov rax, rcx; ret
/// let offsets: Vec<usize> = instructions(&code).map(|r| r.unwrap().0).collect();
/// assert_eq!(offsets, [0, 1, 4]);
/// ```
pub fn instructions(code: &[u8]) -> Instructions<'_> {
    Instructions {
        code,
        pos: 0,
        failed: false,
    }
}

/// Checks that `code` decodes into whole instructions ending exactly at its end, and returns how
/// many there are. An undecodable instruction, or one that crosses the end, is an error naming
/// its offset.
///
/// ```
/// use alt_runtime::x86_64::insn::ends_exactly;
///
/// assert_eq!(ends_exactly(&[0x0f, 0x1f, 0x00, 0x90]), Ok(2));
/// assert_eq!(ends_exactly(&[0x90, 0x0f, 0x1f]).unwrap_err().offset, 1);
/// ```
pub fn ends_exactly(code: &[u8]) -> Result<usize, DecodeError> {
    let mut count = 0;
    for item in instructions(code) {
        item?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(code: &[u8]) -> u8 {
        match decode(code) {
            Ok(insn) => insn.len,
            Err(e) => panic!("{code:02x?}: {e}"),
        }
    }

    #[test]
    fn immediates_follow_operand_size() {
        assert_eq!(len(&[0x05, 1, 2, 3, 4]), 5); // add eax, imm32
        assert_eq!(len(&[0x66, 0x05, 1, 2]), 4); // add ax, imm16
        assert_eq!(len(&[0x66, 0x48, 0x05, 1, 2, 3, 4]), 7); // rex.w wins
        assert_eq!(len(&[0xb8, 1, 2, 3, 4]), 5); // mov eax, imm32
        assert_eq!(len(&[0x66, 0xb8, 1, 2]), 4); // mov ax, imm16
        assert_eq!(len(&[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8]), 10); // mov rax, imm64
        assert_eq!(len(&[0x66, 0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8]), 11);
        assert_eq!(len(&[0xa1, 1, 2, 3, 4, 5, 6, 7, 8]), 9); // mov eax, moffs64
        assert_eq!(len(&[0x67, 0xa1, 1, 2, 3, 4]), 6); // mov eax, moffs32
        assert_eq!(len(&[0xc8, 0x10, 0x00, 0x01]), 4); // enter
        assert_eq!(len(&[0xc2, 0x08, 0x00]), 3); // ret imm16
        assert_eq!(len(&[0xf6, 0xc0, 0x01]), 3); // test al, 1
        assert_eq!(len(&[0xf6, 0xd0]), 2); // not al
        assert_eq!(len(&[0xf7, 0xc0, 1, 2, 3, 4]), 6); // test eax, imm32
        assert_eq!(len(&[0x66, 0xf7, 0xc0, 1, 2]), 5); // test ax, imm16
        assert_eq!(len(&[0xf7, 0xd8]), 2); // neg eax
    }

    #[test]
    fn vendor_dependent_lengths_are_refused() {
        // Intel: 66 e8 rel32 (6 bytes); AMD: 66 e8 rel16 (4 bytes). Likewise jmp, jcc, and
        // the rel8 forms (whose targets AMD truncates to 16 bits).
        for code in [
            &[0x66, 0xe8, 1, 2, 3, 4][..],
            &[0x66, 0xe9, 1, 2, 3, 4],
            &[0x66, 0x0f, 0x84, 1, 2, 3, 4],
            &[0x66, 0xeb, 1],
            &[0x66, 0x74, 1],
        ] {
            let e = decode(code).unwrap_err();
            assert!(e.reason.contains("Intel and AMD"), "{code:02x?}: {e}");
        }
        // ud0: Intel 0f ff /r, AMD 0f ff.
        let e = decode(&[0x0f, 0xff, 0xc0]).unwrap_err();
        assert!(e.reason.starts_with("ud0"), "{e}");
        // Unprefixed branches, ud1 and ud2 are fine; xbegin with 66 is rel16 everywhere.
        assert_eq!(len(&[0xe8, 1, 2, 3, 4]), 5);
        assert_eq!(len(&[0x0f, 0xb9, 0xc0]), 3);
        assert_eq!(len(&[0x0f, 0x0b]), 2);
        assert_eq!(len(&[0x66, 0xc7, 0xf8, 1, 2]), 5);
    }

    #[test]
    fn modrm_forms() {
        assert_eq!(len(&[0x8b, 0x04, 0x24]), 3); // mov eax, [rsp]
        assert_eq!(len(&[0x8b, 0x04, 0x25, 1, 2, 3, 4]), 7); // [disp32] via SIB
        assert_eq!(len(&[0x8b, 0x45, 0x08]), 3); // [rbp+8]
        assert_eq!(len(&[0x8b, 0x85, 1, 2, 3, 4]), 6); // [rbp+disp32]
        assert_eq!(len(&[0x8b, 0x44, 0x24, 0x08]), 4); // [rsp+8]
        assert_eq!(len(&[0x0f, 0x20, 0x00]), 3); // mov rax, cr0: mod ignored
        let rip = decode(&[0x48, 0x8b, 0x05, 0xf0, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(rip.len, 7);
        assert_eq!(rip.rip_disp_offset, Some(3));
        assert_eq!(rip.disp, -16);
        assert_eq!(rip.rip_target(0x1000), Some(0x1000 + 7 - 16));
    }

    #[test]
    fn vector_encodings() {
        // vmovdqu ymm0, [rip+disp32]
        let v = decode(&[0xc5, 0xfe, 0x6f, 0x05, 1, 2, 3, 4]).unwrap();
        assert_eq!(
            (v.len, v.rip_disp_offset, v.encoding),
            (8, Some(4), Encoding::Vex)
        );
        assert_eq!(len(&[0xc5, 0xf8, 0x77]), 3); // vzeroupper
                                                 // vpshufd xmm0, xmm1, 0x1b (VEX3)
        assert_eq!(len(&[0xc4, 0xe1, 0x79, 0x70, 0xc1, 0x1b]), 6);
        // vpblendd ymm0, ymm1, [rip+x], 3
        let v = decode(&[0xc4, 0xe3, 0x75, 0x02, 0x05, 1, 2, 3, 4, 3]).unwrap();
        assert_eq!((v.len, v.rip_disp_offset), (10, Some(5)));
        // vaddps zmm0, zmm1, [rax+0x40] (EVEX, compressed disp8)
        assert_eq!(len(&[0x62, 0xf1, 0x74, 0x48, 0x58, 0x40, 0x01]), 7);
        assert!(decode(&[0x66, 0xc5, 0xf8, 0x77]).is_err());
        assert!(decode(&[0x48, 0x62, 0xf1, 0x74, 0x48, 0x58, 0xc0]).is_err());
    }

    #[test]
    fn branches() {
        let j = decode(&[0xeb, 0xfe]).unwrap();
        assert_eq!(j.kind, InsnKind::Jmp);
        assert_eq!(j.rel.map(|r| (r.offset, r.size, r.disp)), Some((1, 1, -2)));
        assert_eq!(j.branch_target(0x10), Some(0x10));
        let jcc = decode(&[0x0f, 0x85, 0x00, 0x01, 0x00, 0x00]).unwrap();
        assert_eq!(jcc.kind, InsnKind::Jcc);
        assert_eq!(jcc.rel.map(|r| (r.offset, r.size)), Some((2, 4)));
        let lp = decode(&[0xe3, 0x05]).unwrap();
        assert_eq!(lp.rel.map(|r| r.kind), Some(BranchKind::Loop));
        let xb = decode(&[0xc7, 0xf8, 1, 2, 3, 4]).unwrap();
        assert_eq!(xb.kind, InsnKind::Xbegin);
        assert_eq!(xb.rel.map(|r| (r.offset, r.size)), Some((2, 4)));
        let xb16 = decode(&[0x66, 0xc7, 0xf8, 1, 2]).unwrap();
        assert_eq!(xb16.rel.map(|r| (r.offset, r.size)), Some((3, 2)));
        assert_eq!(decode(&[0xff, 0xd0]).unwrap().kind, InsnKind::CallIndirect);
        assert_eq!(
            decode(&[0xff, 0x25, 0, 0, 0, 0]).unwrap().kind,
            InsnKind::JmpIndirect
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(decode(&[0x90]).unwrap().kind, InsnKind::Nop);
        assert_eq!(decode(&[0x41, 0x90]).unwrap().kind, InsnKind::Other);
        assert_eq!(decode(&[0xf3, 0x90]).unwrap().kind, InsnKind::Other);
        assert_eq!(decode(&[0x0f, 0x1f, 0x00]).unwrap().kind, InsnKind::Nop);
        assert_eq!(decode(&[0xc3]).unwrap().kind, InsnKind::Ret);
        assert_eq!(decode(&[0xcc]).unwrap().kind, InsnKind::Int3);
        assert_eq!(decode(&[0x0f, 0x0b]).unwrap().kind, InsnKind::Ud);
    }

    #[test]
    fn errors() {
        for op in [
            0x06, 0x07, 0x0e, 0x16, 0x17, 0x1e, 0x1f, 0x27, 0x2f, 0x37, 0x3f, 0x60, 0x61, 0x82,
            0x9a, 0xce, 0xd4, 0xd5, 0xd6, 0xea,
        ] {
            let e = decode(&[op, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
            assert_eq!(e.reason, "opcode invalid in 64-bit mode", "{op:02x}");
        }
        assert_eq!(decode(&[]).unwrap_err().reason, "truncated instruction");
        assert_eq!(decode(&[0x66]).unwrap_err().reason, "truncated instruction");
        assert_eq!(
            decode(&[0xe8, 0, 0, 0]).unwrap_err().reason,
            "truncated instruction"
        );
        assert_eq!(
            decode(&[0x66; 20]).unwrap_err().reason,
            "instruction longer than 15 bytes"
        );
        // 14 prefixes + 1-byte opcode is fine; 11 prefixes + 5-byte call is not.
        let mut ok = [0x66u8; 15];
        ok[14] = 0x90;
        assert_eq!(len(&ok), 15);
        let mut long = [0x2eu8; 16];
        long[11..16].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn walking() {
        let code = [0x90, 0xe8, 0, 0, 0, 0, 0xc3];
        assert_eq!(ends_exactly(&code), Ok(3));
        assert_eq!(ends_exactly(&[]), Ok(0));
        let e = ends_exactly(&code[..5]).unwrap_err();
        assert_eq!(e.offset, 1);
        let mut it = instructions(&[0x90, 0x06, 0x90]);
        assert_eq!(it.next().unwrap().unwrap().0, 0);
        assert_eq!(it.next().unwrap().unwrap_err().offset, 1);
        assert!(it.next().is_none());
    }

    #[test]
    fn never_panics_on_short_or_odd_input() {
        // Every 1- and 2-byte string, and every prefix of some long ones.
        for a in 0..=255u8 {
            let _ = decode(&[a]);
            for b in 0..=255u8 {
                let _ = decode(&[a, b]);
                let _ = decode(&[a, b, 0x84, 0x24]);
            }
        }
    }
}
