//! AArch64 relocation against encodings built here from the Arm ARM field layouts.

use alt_runtime::aarch64::reloc::{
    branch_target, classify, relocate_block, relocate_insn, InsnClass, RelocError, RelocErrorKind,
};

// --- Encoders, one per form, from the manual's field layouts --------------------------------------

fn field(value: i64, bits: u32) -> u32 {
    (value as u32) & ((1u32 << bits) - 1)
}

/// `B`: `0 00101 imm26`.
fn b(imm26: i64) -> u32 {
    0x1400_0000 | field(imm26, 26)
}

/// `BL`: `1 00101 imm26`.
fn bl(imm26: i64) -> u32 {
    0x9400_0000 | field(imm26, 26)
}

/// `B.cond`: `0101010 0 imm19 0 cond`.
fn b_cond(cond: u32, imm19: i64) -> u32 {
    0x5400_0000 | (field(imm19, 19) << 5) | cond
}

/// `BC.cond`: `0101010 0 imm19 1 cond`.
fn bc_cond(cond: u32, imm19: i64) -> u32 {
    b_cond(cond, imm19) | (1 << 4)
}

/// `CBZ`/`CBNZ`: `sf 011010 op imm19 Rt`.
fn cbz(sf: u32, rt: u32, imm19: i64) -> u32 {
    (sf << 31) | 0x3400_0000 | (field(imm19, 19) << 5) | rt
}

fn cbnz(sf: u32, rt: u32, imm19: i64) -> u32 {
    cbz(sf, rt, imm19) | (1 << 24)
}

/// `TBZ`/`TBNZ`: `b5 011011 op b40 imm14 Rt`.
fn tbz(bit: u32, rt: u32, imm14: i64) -> u32 {
    ((bit >> 5) << 31) | 0x3600_0000 | ((bit & 0x1f) << 19) | (field(imm14, 14) << 5) | rt
}

fn tbnz(bit: u32, rt: u32, imm14: i64) -> u32 {
    tbz(bit, rt, imm14) | (1 << 24)
}

/// `ADR`/`ADRP`: `op immlo 10000 immhi Rd`.
fn adr(rd: u32, imm21: i64) -> u32 {
    let imm = field(imm21, 21);
    0x1000_0000 | ((imm & 3) << 29) | ((imm >> 2) << 5) | rd
}

fn adrp(rd: u32, imm21: i64) -> u32 {
    adr(rd, imm21) | (1 << 31)
}

/// Load register (literal): `opc 011 V 00 imm19 Rt`.
fn ldr_lit(opc: u32, v: u32, rt: u32, imm19: i64) -> u32 {
    (opc << 30) | 0x1800_0000 | (v << 26) | (field(imm19, 19) << 5) | rt
}

const NOP: u32 = 0xd503_201f;
const RET: u32 = 0xd65f_03c0;
const ISB: u32 = 0xd503_3fdf;
const DSB_ISH: u32 = 0xd503_3b9f;

const MIB: i64 = 1 << 20;

#[test]
fn encoders_agree_with_known_words() {
    assert_eq!(b(0), 0x1400_0000); // b .
    assert_eq!(bl(2), 0x9400_0002); // bl .+8
    assert_eq!(b(-1), 0x17ff_ffff); // b .-4
    assert_eq!(b_cond(0, 0), 0x5400_0000); // b.eq .
    assert_eq!(b_cond(1, 2), 0x5400_0041); // b.ne .+8
    assert_eq!(cbz(1, 0, 0), 0xb400_0000); // cbz x0, .
    assert_eq!(cbnz(0, 1, 1), 0x3500_0021); // cbnz w1, .+4
    assert_eq!(tbz(0, 0, 0), 0x3600_0000); // tbz w0, #0, .
    assert_eq!(tbnz(63, 2, 1), 0xb7f8_0022); // tbnz x2, #63, .+4
    assert_eq!(adr(0, 0), 0x1000_0000); // adr x0, .
    assert_eq!(adrp(0, 0), 0x9000_0000); // adrp x0, #0
    assert_eq!(ldr_lit(1, 0, 0, 0), 0x5800_0000); // ldr x0, .
    assert_eq!(ldr_lit(0, 0, 0, 0), 0x1800_0000); // ldr w0, .
    assert_eq!(ldr_lit(2, 0, 0, 0), 0x9800_0000); // ldrsw x0, .
    assert_eq!(ldr_lit(3, 0, 0, 0), 0xd800_0000); // prfm pldl1keep, .
    assert_eq!(ldr_lit(2, 1, 0, 0), 0x9c00_0000); // ldr q0, .
}

#[test]
fn classify_every_form() {
    let cases = [
        (b(5), InsnClass::B),
        (bl(-5), InsnClass::Bl),
        (b_cond(0xb, 3), InsnClass::BCond),
        (bc_cond(0xb, 3), InsnClass::BCond),
        (cbz(0, 3, 3), InsnClass::Cbz),
        (cbz(1, 3, 3), InsnClass::Cbz),
        (cbnz(0, 3, 3), InsnClass::Cbnz),
        (cbnz(1, 3, 3), InsnClass::Cbnz),
        (tbz(3, 4, 5), InsnClass::Tbz),
        (tbz(40, 4, 5), InsnClass::Tbz),
        (tbnz(40, 4, 5), InsnClass::Tbnz),
        (adr(7, -9), InsnClass::Adr),
        (adrp(7, -9), InsnClass::Adrp),
        (ldr_lit(0, 0, 1, 4), InsnClass::LiteralLoad),
        (ldr_lit(1, 0, 1, 4), InsnClass::LiteralLoad),
        (ldr_lit(2, 0, 1, 4), InsnClass::LiteralLoad),
        (ldr_lit(3, 0, 1, 4), InsnClass::LiteralLoad),
        (ldr_lit(0, 1, 1, 4), InsnClass::LiteralLoad),
        (ldr_lit(1, 1, 1, 4), InsnClass::LiteralLoad),
        (ldr_lit(2, 1, 1, 4), InsnClass::LiteralLoad),
        // cbbge w5, w3, #-1024 (FEAT_CMPBR; word from LLVM's MC tests)
        (0x7423_a005, InsnClass::CompareBranch),
        (NOP, InsnClass::Other),
        (RET, InsnClass::Other),
        (ISB, InsnClass::Other),
        (DSB_ISH, InsnClass::Other),
        (0xd280_0020, InsnClass::Other),         // mov x0, #1
        (0xf940_0020, InsnClass::Other),         // ldr x0, [x1]
        (0x8b02_0020, InsnClass::Other),         // add x0, x1, x2
        (0xd63f_0020, InsnClass::Other),         // blr x1
        (ldr_lit(3, 1, 1, 4), InsnClass::Other), // V=1 opc=11: unallocated
    ];
    for (insn, class) in cases {
        assert_eq!(classify(insn), class, "{insn:#010x}");
    }
}

#[test]
fn branch_target_reads_every_field() {
    let pc = 0x4000_1000u64;
    assert_eq!(branch_target(b(-3), pc), Some(pc - 12));
    assert_eq!(branch_target(bl(0x1234), pc), Some(pc + 0x48d0));
    assert_eq!(branch_target(b_cond(2, -1), pc), Some(pc - 4));
    assert_eq!(branch_target(cbnz(1, 9, 0x100), pc), Some(pc + 0x400));
    assert_eq!(branch_target(tbnz(33, 9, -0x2000), pc), Some(pc - 0x8000));
    assert_eq!(branch_target(adr(1, -3), pc), Some(pc - 3));
    assert_eq!(branch_target(adr(1, 0xf_ffff), pc), Some(pc + 0xf_ffff));
    assert_eq!(branch_target(adrp(1, -1), pc + 0x234), Some(0x4000_0000));
    assert_eq!(branch_target(ldr_lit(1, 0, 0, 2), pc), Some(pc + 8));
    assert_eq!(branch_target(NOP, pc), None);
}

/// A form under test: its encoder (displacement in field units), the unit in bytes, the field
/// width, and the mask of the bits that must not change.
struct Form {
    name: &'static str,
    make: fn(i64) -> u32,
    unit: i64,
    bits: u32,
    keep: u32,
}

fn forms() -> [Form; 10] {
    [
        Form {
            name: "B",
            make: b,
            unit: 4,
            bits: 26,
            keep: 0xfc00_0000,
        },
        Form {
            name: "BL",
            make: bl,
            unit: 4,
            bits: 26,
            keep: 0xfc00_0000,
        },
        Form {
            name: "B.cond",
            make: |d| b_cond(0xc, d),
            unit: 4,
            bits: 19,
            keep: 0xff00_001f,
        },
        Form {
            name: "BC.cond",
            make: |d| bc_cond(0x3, d),
            unit: 4,
            bits: 19,
            keep: 0xff00_001f,
        },
        Form {
            name: "CBZ w",
            make: |d| cbz(0, 17, d),
            unit: 4,
            bits: 19,
            keep: 0xff00_001f,
        },
        Form {
            name: "CBNZ x",
            make: |d| cbnz(1, 30, d),
            unit: 4,
            bits: 19,
            keep: 0xff00_001f,
        },
        Form {
            name: "TBZ #5",
            make: |d| tbz(5, 3, d),
            unit: 4,
            bits: 14,
            keep: 0xfff8_001f,
        },
        Form {
            name: "TBNZ #44",
            make: |d| tbnz(44, 29, d),
            unit: 4,
            bits: 14,
            keep: 0xfff8_001f,
        },
        Form {
            name: "ADR",
            make: |d| adr(12, d),
            unit: 1,
            bits: 21,
            keep: 0x9f00_001f,
        },
        Form {
            name: "ADRP",
            make: |d| adrp(12, d),
            unit: 4096,
            bits: 21,
            keep: 0x9f00_001f,
        },
    ]
}

fn max_disp(form: &Form) -> i64 {
    ((1i64 << (form.bits - 1)) - 1) * form.unit
}

fn min_disp(form: &Form) -> i64 {
    -(1i64 << (form.bits - 1)) * form.unit
}

fn at(base: u64, delta: i64) -> u64 {
    base.wrapping_add(delta as u64)
}

#[test]
fn every_form_is_retargeted_forward_and_backward() {
    let from = 0x8000_0000u64;
    for form in forms() {
        for (disp, moved) in [
            (3i64, 0x40i64),
            (3, -0x40),
            (-7, 0x1000),
            (-7, -0x1000),
            (0, 0x7ffc),
        ] {
            // Keep the move in range for the narrowest field (TBZ: ±32 KiB).
            let insn = (form.make)(disp);
            let to = at(from, moved);
            let new =
                relocate_insn(insn, from, to).unwrap_or_else(|e| panic!("{}: {e}", form.name));
            assert_eq!(
                branch_target(new, to),
                branch_target(insn, from),
                "{} disp {disp} moved {moved:#x}",
                form.name
            );
            assert_eq!(
                new & form.keep,
                insn & form.keep,
                "{}: other fields changed",
                form.name
            );
            assert_eq!(classify(new), classify(insn));
            if form.name != "ADRP" {
                // Byte/word displacement forms: the exact expected word.
                let expected = (form.make)(disp - moved / form.unit);
                assert_eq!(new, expected, "{} disp {disp} moved {moved:#x}", form.name);
            }
        }
    }
}

#[test]
fn range_edges_and_one_past() {
    let from = 0x10_0000_0000u64;
    for form in forms() {
        let max = max_disp(&form);
        let min = min_disp(&form);
        // The original sits at `from` with a displacement of `d0` bytes and is moved so that its
        // new displacement is `want`: to = from + d0 - want. ADR counts bytes, so `d0` is chosen
        // to keep `to` 4-byte aligned.
        let aligned_d0 = |want: i64| {
            if form.unit == 1 {
                want.rem_euclid(4)
            } else {
                0
            }
        };
        for want in [max, min] {
            let d0 = aligned_d0(want);
            let insn = (form.make)(d0 / form.unit);
            let target = branch_target(insn, from).unwrap();
            let to = at(from, d0 - want);
            let new =
                relocate_insn(insn, from, to).unwrap_or_else(|e| panic!("{}: {e}", form.name));
            assert_eq!(
                new,
                (form.make)(want / form.unit),
                "{} edge {want:#x}",
                form.name
            );
            assert_eq!(branch_target(new, to), Some(target));
        }
        // One unit past each end is an error naming the target and the new address.
        for want in [max + form.unit, min - form.unit] {
            let d0 = aligned_d0(want);
            let d0 = if d0 == 0 { 0 } else { d0 - 4 }; // ADR: -1 for one below min
            let insn = (form.make)(d0 / form.unit);
            let to = at(from, d0 - want);
            assert_eq!(to % 4, 0);
            assert_eq!(
                relocate_insn(insn, from, to),
                Err(RelocError {
                    index: 0,
                    kind: RelocErrorKind::OutOfRange {
                        class: classify(insn),
                        target: branch_target(insn, from).unwrap(),
                        pc: to
                    }
                }),
                "{} one past {want:#x}",
                form.name
            );
        }
    }
}

#[test]
fn ranges_are_the_documented_ones() {
    let f = forms();
    assert_eq!(max_disp(&f[0]), 128 * MIB - 4);
    assert_eq!(min_disp(&f[1]), -128 * MIB);
    assert_eq!(max_disp(&f[2]), MIB - 4);
    assert_eq!(min_disp(&f[5]), -MIB);
    assert_eq!(max_disp(&f[6]), 32 * 1024 - 4);
    assert_eq!(min_disp(&f[7]), -32 * 1024);
    assert_eq!(max_disp(&f[8]), MIB - 1);
    assert_eq!(min_disp(&f[9]), -4 * 1024 * MIB);
}

#[test]
fn adrp_uses_pages_of_from_and_to() {
    // Moving within one page changes nothing, even though the byte distance is not zero.
    let insn = adrp(3, 5);
    assert_eq!(relocate_insn(insn, 0x1000_0004, 0x1000_0ffc), Ok(insn));
    // Moving 4 bytes across a page boundary moves the page offset by one.
    assert_eq!(
        relocate_insn(insn, 0x1000_0ffc, 0x1000_1000),
        Ok(adrp(3, 4))
    );
    assert_eq!(
        relocate_insn(insn, 0x1000_1000, 0x1000_0ffc),
        Ok(adrp(3, 6))
    );
    // Different page offsets: from page 0x1234_5000 (+0xffc), to page 0x1234_7000 (+0x004).
    // Target page 0x1234_6000 = from page + 1 = to page - 1.
    let insn = adrp(0, 1);
    let new = relocate_insn(insn, 0x1234_5ffc, 0x1234_7004).unwrap();
    assert_eq!(new, adrp(0, -1));
    assert_eq!(branch_target(new, 0x1234_7004), Some(0x1234_6000));
}

#[test]
fn literal_loads_are_refused_even_in_place() {
    for insn in [
        ldr_lit(0, 0, 1, 4),
        ldr_lit(1, 0, 1, -4),
        ldr_lit(2, 0, 1, 4),
        ldr_lit(3, 0, 1, 4),
        ldr_lit(0, 1, 1, 4),
        ldr_lit(1, 1, 1, 4),
        ldr_lit(2, 1, 1, 4),
    ] {
        for to in [0x2000, 0x1000] {
            assert_eq!(
                relocate_insn(insn, 0x1000, to),
                Err(RelocError {
                    index: 0,
                    kind: RelocErrorKind::UnsupportedLiteral
                }),
                "{insn:#010x}"
            );
        }
    }
    assert_eq!(
        relocate_insn(0x7423_a005, 0x1000, 0x2000).unwrap_err().kind,
        RelocErrorKind::UnsupportedPcRelative
    );
}

#[test]
fn non_pc_relative_instructions_are_unchanged() {
    for insn in [
        NOP,
        RET,
        ISB,
        DSB_ISH,
        0xd280_0020,
        0xf940_0020,
        0x8b02_0020,
        0xd63f_0020,
    ] {
        assert_eq!(
            relocate_insn(insn, 0x1000, 0x7fff_0000),
            Ok(insn),
            "{insn:#010x}"
        );
    }
}

#[test]
fn misaligned_addresses_are_refused() {
    let err = RelocError {
        index: 0,
        kind: RelocErrorKind::Misaligned,
    };
    assert_eq!(relocate_insn(b(1), 0x1002, 0x2000), Err(err));
    assert_eq!(relocate_insn(NOP, 0x1000, 0x2001), Err(err));
    let mut code = [NOP, b(1)];
    assert_eq!(relocate_block(&mut code, 0x1000, 0x2003), Err(err));
    assert_eq!(code, [NOP, b(1)]);
}

#[test]
fn block_keeps_inside_targets_and_retargets_outside_ones() {
    let from = 0x40_0000u64;
    let to = 0x48_0000u64; // 512 KiB later: inside every form's range except TBZ
    let mut code = [
        cbz(1, 0, 3),   // 0: -> index 3 (inside, forward)
        b_cond(1, 5),   // 1: -> index 6, the end of the block (inside)
        adr(2, -4),     // 2: -> index 1 (inside, backward)
        tbnz(7, 4, -3), // 3: -> index 0 (inside, backward)
        bl(0x1000),     // 4: -> a function outside the block
        adrp(5, 0),     // 5: ADRP: always re-targeted
    ];
    let before = code;
    relocate_block(&mut code, from, to).unwrap();
    assert_eq!(code[0], before[0]);
    assert_eq!(code[1], before[1]);
    assert_eq!(code[2], before[2]);
    assert_eq!(code[3], before[3]);
    // BL: target from + 16 + 0x4000 stays put; new PC is to + 16.
    assert_eq!(code[4], bl(0x1000 - (0x8_0000 / 4)));
    assert_eq!(branch_target(code[4], to + 16), Some(from + 16 + 0x4000));
    // ADRP x5, #0 at from+20 named page 0x40_0000; from to+20 that is 0x80 pages back.
    assert_eq!(code[5], adrp(5, -0x80));
    assert_eq!(branch_target(code[5], to + 20), Some(from));
}

#[test]
fn block_retargets_just_outside_the_block() {
    let from = 0x40_0000u64;
    let to = 0x40_1000u64;
    // index 0: B to one word past the end (outside); index 1: B to one word before the start.
    let mut code = [b(3), b(-2)];
    relocate_block(&mut code, from, to).unwrap();
    assert_eq!(branch_target(code[0], to), Some(from + 12));
    assert_eq!(branch_target(code[1], to + 4), Some(from - 4));
    // ADR to the byte just past the end (inside), and one byte further (outside).
    let mut code = [adr(0, 4), adr(0, 5)];
    relocate_block(&mut code, from, to).unwrap();
    assert_eq!(code[0], adr(0, 4));
    assert_eq!(branch_target(code[1], to + 4), Some(from + 9));
}

#[test]
fn block_errors_name_the_index_and_leave_code_untouched() {
    let from = 0x10_0000u64;
    let to = 0x20_0000u64;
    let original = [b(0x100), NOP, cbz(0, 1, 0x40), ldr_lit(1, 0, 0, 2), RET];
    let mut code = original;
    assert_eq!(
        relocate_block(&mut code, from, to),
        Err(RelocError {
            index: 3,
            kind: RelocErrorKind::UnsupportedLiteral
        })
    );
    assert_eq!(code, original);

    // TBZ at index 2 jumps outside; a 1 MiB move is far beyond ±32 KiB.
    let original = [NOP, b(-4), tbz(3, 1, 0x20), RET];
    let mut code = original;
    let err = relocate_block(&mut code, from, to).unwrap_err();
    assert_eq!(
        err,
        RelocError {
            index: 2,
            kind: RelocErrorKind::OutOfRange {
                class: InsnClass::Tbz,
                target: from + 8 + 0x80,
                pc: to + 8
            }
        }
    );
    assert_eq!(code, original);
    let message = err.to_string();
    assert!(message.contains("instruction 2"), "{message}");
    assert!(message.contains("TBZ"), "{message}");
    assert!(message.contains("0x100088"), "{message}");
}

#[test]
fn empty_block_is_fine() {
    let mut code: [u32; 0] = [];
    assert_eq!(relocate_block(&mut code, 0x1000, 0x2000), Ok(()));
}

/// A deterministic sweep: many displacements and moves per form; each result either keeps the
/// target or is an out-of-range error, exactly when the new displacement does not fit.
#[test]
fn sweep_matches_an_independent_range_check() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Far from 0 and 2^64, so the independent check needs no wrapping arithmetic.
    let from = 0x0000_4000_0000_0000u64;
    for form in forms() {
        let span = 1i64 << (form.bits - 1);
        for _ in 0..2000 {
            let disp = (next() % (2 * span as u64)) as i64 - span; // any encodable value
                                                                   // Moves up to ~4x the form's range, 4-byte aligned.
            let moved = ((next() % (8 * span as u64 * form.unit as u64)) as i64
                - 4 * span * form.unit)
                & !3;
            let insn = (form.make)(disp);
            let to = at(from, moved);
            let target = branch_target(insn, from).unwrap();
            let new_disp: i128 = if form.name == "ADRP" {
                ((target as i128) - ((to & !0xfff) as i128)) >> 12
            } else {
                ((target as i128) - (to as i128)) / form.unit as i128
            };
            let fits = new_disp >= -(span as i128) && new_disp < span as i128;
            match relocate_insn(insn, from, to) {
                Ok(new) => {
                    assert!(fits, "{}: {insn:#x} {moved:#x} accepted", form.name);
                    assert_eq!(branch_target(new, to), Some(target));
                    assert_eq!(new & form.keep, insn & form.keep);
                }
                Err(e) => {
                    assert!(!fits, "{}: {insn:#x} {moved:#x}: {e}", form.name);
                    assert!(matches!(e.kind, RelocErrorKind::OutOfRange { .. }));
                }
            }
        }
    }
}

/// Address arithmetic is modulo 2^64, as the hardware's is: a branch just below address 0
/// (the top of the address space) is reached from just above it.
#[test]
fn displacements_wrap_like_the_hardware() {
    let insn = b(-1); // at 0: branch to 0xffff_ffff_ffff_fffc
    assert_eq!(branch_target(insn, 0), Some(u64::MAX - 3));
    let new = relocate_insn(insn, 0, 8).unwrap();
    assert_eq!(new, b(-3));
    assert_eq!(branch_target(new, 8), Some(u64::MAX - 3));
}
