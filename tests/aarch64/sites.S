/*
 * The sites of the AArch64 execution test (tests/aarch64_qemu.rs), one leaf function each,
 * `long sN(long x)`. Every replacement uses a PC-relative form that leaves its block or
 * reaches data (B, BL, B.cond, CBZ, TBZ/TBNZ, ADR, ADRP), so it only works where the runtime's
 * relocation re-targeted it. Default and replacement compute the same result by different
 * code and record which one ran in tags[N] (0 = default, 1 = first replacement, 2 = second).
 * Keys are errata, so the CPU's MIDR decides.
 */
#include "alt.h"

    .data
    .globl tags
tags:
    .zero 16
    .balign 8
data_word:
    .quad 0x1122334455667788
    .balign 4096
far_data:
    .quad 0x0badc0ffee0ddf00

    .text

/* tags[n] = v (uses x9, x10) */
.macro tag n, v
    adrp x9, tags
    add x9, x9, :lo12:tags
    mov w10, #\v
    strb w10, [x9, #\n]
.endm

/* S1: B leaving the block. x * 4. */
    .globl s1
    .type s1, %function
s1:
    alt_alternative_start
    b s1_default
    alt_alternative_else
    b s1_repl
    alt_alternative_end ALT_CAP_ERRATUM_ARM64_843419
s1_default:
    tag 1, 0
    add x0, x0, x0
    add x0, x0, x0
    ret
s1_repl:
    tag 1, 1
    lsl x0, x0, #2
    ret

/* S2: BL leaving the block, from a function that saves LR. x + 7. */
    .globl s2
    .type s2, %function
s2:
    stp x29, x30, [sp, #-16]!
    alt_alternative_start
    bl s2_default
    alt_alternative_else
    bl s2_repl
    alt_alternative_end ALT_NOT(ALT_CAP_ERRATUM_ARM64_843419)
    ldp x29, x30, [sp], #16
    ret
s2_default:
    tag 2, 0
    add x0, x0, #7
    ret
s2_repl:
    tag 2, 1
    mov x1, #7
    add x0, x1, x0
    ret

/* S3: B.cond leaving the block. |x|. */
    .globl s3
    .type s3, %function
s3:
    alt_alternative_start
    cmp x0, #0
    b.lt s3_neg_default
    b s3_pos_default
    alt_alternative_else
    cmp x0, #0
    b.lt s3_neg_repl
    b s3_pos_repl
    alt_alternative_end ALT_CAP_ERRATUM_ARM64_1319367
s3_neg_default:
    tag 3, 0
    neg x0, x0
    ret
s3_pos_default:
    tag 3, 0
    ret
s3_neg_repl:
    tag 3, 1
    mov x1, #0
    sub x0, x1, x0
    ret
s3_pos_repl:
    tag 3, 1
    ret

/* S4: CBZ leaving the block. x == 0 ? 100 : x. */
    .globl s4
    .type s4, %function
s4:
    alt_alternative_start
    cbz x0, s4_zero_default
    b s4_other_default
    alt_alternative_else
    cbz x0, s4_zero_repl
    b s4_other_repl
    alt_alternative_end ALT_CAP_ERRATUM_ARM64_3194386
s4_zero_default:
    tag 4, 0
    mov x0, #100
    ret
s4_other_default:
    tag 4, 0
    ret
s4_zero_repl:
    tag 4, 1
    mov x0, #50
    add x0, x0, x0
    ret
s4_other_repl:
    tag 4, 1
    ret

/* S5: TBZ / TBNZ leaving the block. x with bit 3 cleared. */
    .globl s5
    .type s5, %function
s5:
    alt_alternative_start
    tbz x0, #3, s5_clear_default
    b s5_set_default
    alt_alternative_else
    tbnz x0, #3, s5_set_repl
    b s5_clear_repl
    alt_alternative_end ALT_CAP_ERRATUM_ARM64_1542419
s5_clear_default:
    tag 5, 0
    ret
s5_set_default:
    tag 5, 0
    sub x0, x0, #8
    ret
s5_set_repl:
    tag 5, 1
    eor x0, x0, #8
    ret
s5_clear_repl:
    tag 5, 1
    ret

/* S6: ADR to data. x + data_word. */
    .globl s6
    .type s6, %function
s6:
    alt_alternative_start
    adr x1, data_word
    ldr x1, [x1]
    b s6_default
    alt_alternative_else
    adr x1, data_word
    ldr x1, [x1]
    b s6_repl
    alt_alternative_end ALT_CAP_ERRATUM_ARM64_832075
s6_default:
    tag 6, 0
    add x0, x0, x1
    ret
s6_repl:
    tag 6, 1
    add x0, x1, x0
    ret

/* S7: ADRP to data on another page. x ^ far_data. */
    .globl s7
    .type s7, %function
s7:
    alt_alternative_start
    adrp x1, far_data
    ldr x1, [x1, :lo12:far_data]
    b s7_default
    alt_alternative_else
    adrp x1, far_data
    add x1, x1, :lo12:far_data
    ldr x1, [x1]
    b s7_repl
    alt_alternative_end ALT_NOT(ALT_CAP_ERRATUM_ARM64_3194386)
s7_default:
    tag 7, 0
    eor x0, x0, x1
    ret
s7_repl:
    tag 7, 1
    eor x0, x1, x0
    ret

/* The callees of S8 (two alternatives, in C) and S9 (a direct call, in C): x + 1, x * 3. */
    .globl s8_default, s8_first, s8_second, s9_default, s9_direct
s8_default:
    tag 8, 0
    add x0, x0, #1
    ret
s8_first:
    tag 8, 1
    mov x1, #1
    add x0, x0, x1
    ret
s8_second:
    tag 8, 2
    sub x0, x0, #-1
    ret
s9_default:
    tag 9, 0
    add x1, x0, x0
    add x0, x1, x0
    ret
s9_direct:
    tag 9, 1
    mov x1, #3
    mul x0, x0, x1
    ret

/* S10: an erratum no emulated CPU has (Qualcomm Falkor E1003): always the default. x - 1. */
    .globl s10
    .type s10, %function
s10:
    alt_alternative_start
    b s10_default
    alt_alternative_else
    b s10_repl
    alt_alternative_end ALT_CAP_ERRATUM_QCOM_FALKOR_E1003
s10_default:
    tag 10, 0
    sub x0, x0, #1
    ret
s10_repl:
    tag 10, 1
    add x0, x0, #-1
    ret
