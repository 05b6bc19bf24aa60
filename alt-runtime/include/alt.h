/*
 * alt.h: alternatives from C and assembly, in alt's table ABI (x86-64 and AArch64).
 *
 * A *site* is default code padded to the length of its longest replacement; a table entry in
 * the `alt_instr` section says "if capability KEY holds, put this replacement there"; the
 * replacement code lives in `alt_replacement`. The layout is the one the Rust runtime reads
 * (alt-runtime/src/table.rs): 12 bytes per entry,
 *
 *     .long site - .          self-relative offset of the site
 *     .long replacement - .   self-relative offset of the replacement (or of the call target)
 *     .short key              capability id (bits 0-11) and flags (ALT_FLAG_*)
 *     .byte site_len          default code plus padding
 *     .byte replacement_len   0 for a direct call
 *
 * so C code linked into a Rust program is patched by `alt::process::patch_self()` (hosted) or
 * by a kernel's own patching pass together with the Rust sites, and `alt-tablegen inspect`,
 * `plan` and `apply` read it in any ELF file. Several entries for one site are alternatives in
 * priority order: the first whose condition holds wins (ALT_ALTERNATIVE_2 writes them in the
 * order given).
 *
 * From C, in an asm statement (like Linux's ALTERNATIVE()):
 *
 *     // x86-64: the portable sequence by default, one POPCNT where every CPU has it.
 *     asm(ALT_ALTERNATIVE("call generic_popcnt", "popcnt %%rdi, %%rax", ALT_CAP_POPCNT)
 *         : "=a"(r) : "D"(x) : "rcx", "rdx", "rsi", "r8", "r9", "r10", "r11", "cc");
 *
 *     // AArch64: a workaround only where some CPU needs it.
 *     asm volatile(ALT_ALTERNATIVE("nop", "dmb ish", ALT_CAP_ERRATUM_ARM64_1418040));
 *
 * From assembly (.S files, through cpp):
 *
 *     alt_alternative_start
 *         <default instructions>
 *     alt_alternative_else
 *         <replacement instructions>
 *     alt_alternative_end ALT_CAP_ERRATUM_ARM64_843419
 *
 * The key is an ALT_CAP_* id, optionally ALT_NOT(id) (the entry holds when the capability is
 * absent). Rules the runtime checks before it writes anything (a table that breaks one is
 * refused whole, naming the entry): the site and replacement are whole instructions (on
 * AArch64 whole 4-byte words), the replacement is no longer than the site, sites do not
 * overlap, and every PC-relative operand of a replacement can be re-targeted from where the
 * replacement was assembled to the site (x86-64: rel8/rel32 branches and RIP-relative
 * operands; AArch64: B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, ADR, ADRP; literal loads are refused).
 *
 * The padding is one-byte NOPs on x86-64 (the runtime rewrites them into long NOPs) and NOP
 * words on AArch64. After writing AArch64 code, make it visible to instruction fetch with
 * alt_sync_icache() below (DC CVAU, DSB ISH, IC IVAU, DSB ISH, ISB, relaxed by CTR_EL0.IDC and
 * DIC exactly as alt_runtime::aarch64::cache::sync_sequence computes it).
 *
 * The capability ids below are alt_runtime::capability's (tests/alt_h.rs checks every one).
 * A C example that uses this header: alt-runtime/include/alt_example.c.
 */
#ifndef ALT_H
#define ALT_H

/* ---- capability ids (alt_runtime::capability; never renumbered) ---------------------- */

#define ALT_CAP_SSE3                         0x000 /* sse3 */
#define ALT_CAP_SSSE3                        0x001 /* ssse3 */
#define ALT_CAP_SSE4_1                       0x002 /* sse4.1 */
#define ALT_CAP_SSE4_2                       0x003 /* sse4.2 */
#define ALT_CAP_POPCNT                       0x004 /* popcnt */
#define ALT_CAP_LZCNT                        0x005 /* lzcnt */
#define ALT_CAP_BMI1                         0x006 /* bmi1 */
#define ALT_CAP_BMI2                         0x007 /* bmi2 */
#define ALT_CAP_MOVBE                        0x008 /* movbe */
#define ALT_CAP_FMA                          0x009 /* fma */
#define ALT_CAP_AVX                          0x00a /* avx */
#define ALT_CAP_AVX2                         0x00b /* avx2 */
#define ALT_CAP_AVX512F                      0x00c /* avx512f */
#define ALT_CAP_AVX512BW                     0x00d /* avx512bw */
#define ALT_CAP_AVX512VL                     0x00e /* avx512vl */
#define ALT_CAP_ERMS                         0x00f /* erms */
#define ALT_CAP_FSRM                         0x010 /* fsrm */
#define ALT_CAP_RDTSCP                       0x011 /* rdtscp */
#define ALT_CAP_CLFLUSHOPT                   0x012 /* clflushopt */
#define ALT_CAP_CLWB                         0x013 /* clwb */
#define ALT_CAP_RDRAND                       0x014 /* rdrand */
#define ALT_CAP_HYPERVISOR                   0x015 /* hypervisor */
#define ALT_CAP_AVX512DQ                     0x016 /* avx512dq */
#define ALT_CAP_AVX512CD                     0x017 /* avx512cd */
#define ALT_CAP_F16C                         0x018 /* f16c */
#define ALT_CAP_AES                          0x019 /* aes */
#define ALT_CAP_PCLMULQDQ                    0x01a /* pclmulqdq */
#define ALT_CAP_SHA                          0x01b /* sha */
#define ALT_CAP_RDSEED                       0x01c /* rdseed */
#define ALT_CAP_ADX                          0x01d /* adx */
#define ALT_CAP_CMPXCHG16B                   0x01e /* cmpxchg16b */
#define ALT_CAP_FSGSBASE                     0x01f /* fsgsbase */
#define ALT_CAP_RDPID                        0x020 /* rdpid */
#define ALT_CAP_SERIALIZE                    0x021 /* serialize */
#define ALT_CAP_XSAVE                        0x022 /* xsave */
#define ALT_CAP_OSXSAVE                      0x023 /* osxsave */
#define ALT_CAP_CLFLUSH                      0x024 /* clflush */
#define ALT_CAP_HYBRID                       0x025 /* hybrid */
#define ALT_CAP_LFENCE_SERIALIZING           0x026 /* lfence_serializing */

#define ALT_CAP_ERRATUM_AMD_DIV0             0x040 /* erratum_amd_div0 */
#define ALT_CAP_ERRATUM_CLFLUSH_MONITOR      0x041 /* erratum_clflush_monitor */
#define ALT_CAP_ERRATUM_MONITOR              0x042 /* erratum_monitor */
#define ALT_CAP_ERRATUM_SYSRET_SS_ATTRS      0x043 /* erratum_sysret_ss_attrs */
#define ALT_CAP_ERRATUM_AMD_E400             0x044 /* erratum_amd_e400 */
#define ALT_CAP_ERRATUM_AMD_TLB_MMATCH       0x045 /* erratum_amd_tlb_mmatch */
#define ALT_CAP_ERRATUM_FXSAVE_LEAK          0x046 /* erratum_fxsave_leak */
#define ALT_CAP_ERRATUM_ZENBLEED             0x047 /* erratum_zenbleed */
#define ALT_CAP_ERRATUM_NULL_SEG             0x048 /* erratum_null_seg */
#define ALT_CAP_ERRATUM_ARM64_835769         0x060 /* erratum_arm64_835769 */
#define ALT_CAP_ERRATUM_ARM64_843419         0x061 /* erratum_arm64_843419 */
#define ALT_CAP_ERRATUM_ARM64_832075         0x062 /* erratum_arm64_832075 */
#define ALT_CAP_ERRATUM_ARM64_834220         0x063 /* erratum_arm64_834220 */
#define ALT_CAP_ERRATUM_ARM64_1319367        0x064 /* erratum_arm64_1319367 */
#define ALT_CAP_ERRATUM_ARM64_1286807        0x065 /* erratum_arm64_1286807 */
#define ALT_CAP_ERRATUM_ARM64_1463225        0x066 /* erratum_arm64_1463225 */
#define ALT_CAP_ERRATUM_ARM64_1418040        0x067 /* erratum_arm64_1418040 */
#define ALT_CAP_ERRATUM_ARM64_1165522        0x068 /* erratum_arm64_1165522 */
#define ALT_CAP_ERRATUM_ARM64_845719         0x069 /* erratum_arm64_845719 */
#define ALT_CAP_ERRATUM_ARM64_824069         0x06a /* erratum_arm64_824069 */
#define ALT_CAP_ERRATUM_ARM64_819472         0x06b /* erratum_arm64_819472 */
#define ALT_CAP_ERRATUM_ARM64_826319         0x06c /* erratum_arm64_826319 */
#define ALT_CAP_ERRATUM_ARM64_827319         0x06d /* erratum_arm64_827319 */
#define ALT_CAP_ERRATUM_ARM64_1530923        0x06e /* erratum_arm64_1530923 */
#define ALT_CAP_ERRATUM_ARM64_2441007        0x06f /* erratum_arm64_2441007 */
#define ALT_CAP_ERRATUM_ARM64_1742098        0x070 /* erratum_arm64_1742098 */
#define ALT_CAP_ERRATUM_ARM64_3194386        0x071 /* erratum_arm64_3194386 */
#define ALT_CAP_ERRATUM_ARM64_1542419        0x072 /* erratum_arm64_1542419 */
#define ALT_CAP_ERRATUM_QCOM_FALKOR_E1003    0x073 /* erratum_qcom_falkor_e1003 */
#define ALT_CAP_ERRATUM_QCOM_FALKOR_E1009    0x074 /* erratum_qcom_falkor_e1009 */

/* ---- flags of the key (alt_runtime::table::AltFlags) ----------------------------------- */

/* The entry holds when the capability is absent. */
#define ALT_FLAG_NOT 0x8000
/* The site becomes a direct call (x86-64 `call rel32`, AArch64 `BL`) to the target. */
#define ALT_FLAG_DIRECT_CALL 0x4000
/* An entry keyed ALT_NOT(cap) holds when `cap` is absent. */
#define ALT_NOT(cap) ((cap) | ALT_FLAG_NOT)

/* ---- the architecture's padding --------------------------------------------------------- */

#define ALT_STR_(...) #__VA_ARGS__
#define ALT_STR(...) ALT_STR_(__VA_ARGS__)

#if defined(__x86_64__)
/* One-byte NOPs; the runtime rewrites runs of them into the recommended long NOPs. */
#define ALT_PAD(n) .fill (n), 1, 0x90
#define ALT_CODE_ALIGN
#define ALT_CALL_LEN 5
#elif defined(__aarch64__)
/* NOP instructions (0xd503201f), emitted as instructions so that disassemblers and the
 * AArch64 mapping symbols see code, not data; lengths are multiples of 4. */
#define ALT_PAD(n) .rept (n) / 4; nop; .endr
#define ALT_CODE_ALIGN .balign 4
#define ALT_CALL_LEN 4
#else
#error "alt.h: x86-64 and AArch64 only"
#endif

/* max(0, a - b), for assembler expressions (a comparison is -1 when true). */
#define ALT_PAD_LEN(a, b) (-(((a) - (b)) > 0) * ((a) - (b)))
/* max(a, b). */
#define ALT_MAX(a, b) ((b) - (((a) > (b)) * ((a) - (b))))

#define ALT_ENTRY_ASM(site, site_end, repl, repl_len, key)                                     \
    ".pushsection alt_instr,\"aR\",@progbits\n"                                                  \
    ".balign 4\n"                                                                                \
    ".long " #site " - .\n"                                                                      \
    ".long " #repl " - .\n"                                                                      \
    ".short " key "\n"                                                                           \
    ".byte " #site_end " - " #site "\n"                                                          \
    ".byte " repl_len "\n"                                                                       \
    ".popsection\n"

#ifndef __ASSEMBLER__

/*
 * ALT_ALTERNATIVE(oldinstr, newinstr, key): asm text for one site with one alternative.
 * `oldinstr` runs unless `key` holds on every CPU the runtime decided for (features: all CPUs
 * have it; errata: some CPU has it), in which case `newinstr` is copied in, re-targeted and
 * padded. The replacement is emitted first so every length is known when the site is padded.
 */
#define ALT_ALTERNATIVE(oldinstr, newinstr, key)                                                 \
    ".pushsection alt_replacement,\"axR\",@progbits\n"                                           \
    ALT_STR(ALT_CODE_ALIGN) "\n"                                                                 \
    "663:\n\t" newinstr "\n"                                                                     \
    "664:\n"                                                                                     \
    ".popsection\n"                                                                              \
    "661:\n\t" oldinstr "\n"                                                                     \
    "662:\n\t" ALT_STR(ALT_PAD(ALT_PAD_LEN(664b - 663b, 662b - 661b))) "\n"                      \
    "665:\n"                                                                                     \
    ALT_ENTRY_ASM(661b, 665b, 663b, "664b - 663b", ALT_STR(key))

/*
 * ALT_ALTERNATIVE_2(oldinstr, new1, key1, new2, key2): two alternatives for one site, in
 * priority order: `new1` if `key1` holds, else `new2` if `key2` holds, else `oldinstr`.
 */
#define ALT_ALTERNATIVE_2(oldinstr, new1, key1, new2, key2)                                      \
    ".pushsection alt_replacement,\"axR\",@progbits\n"                                           \
    ALT_STR(ALT_CODE_ALIGN) "\n"                                                                 \
    "663:\n\t" new1 "\n"                                                                         \
    "664:\n"                                                                                     \
    ALT_STR(ALT_CODE_ALIGN) "\n"                                                                 \
    "666:\n\t" new2 "\n"                                                                         \
    "667:\n"                                                                                     \
    ".popsection\n"                                                                              \
    "661:\n\t" oldinstr "\n"                                                                     \
    "662:\n\t" ALT_STR(ALT_PAD(ALT_PAD_LEN(ALT_MAX(664b - 663b, 667b - 666b), 662b - 661b))) "\n" \
    "665:\n"                                                                                     \
    ALT_ENTRY_ASM(661b, 665b, 663b, "664b - 663b", ALT_STR(key1))                                \
    ALT_ENTRY_ASM(661b, 665b, 666b, "667b - 666b", ALT_STR(key2))

/*
 * ALT_CALL(oldinstr, target, key): the site becomes a direct call to the symbol `target` when
 * `key` holds (x86-64 `call rel32`, AArch64 `BL`), padded; otherwise `oldinstr` stays. The
 * site is at least ALT_CALL_LEN bytes. The asm statement must declare what the call clobbers.
 */
#define ALT_CALL(oldinstr, target, key)                                                          \
    "661:\n\t" oldinstr "\n"                                                                     \
    "662:\n\t" ALT_STR(ALT_PAD(ALT_PAD_LEN(ALT_CALL_LEN, 662b - 661b))) "\n"                     \
    "665:\n"                                                                                     \
    ALT_ENTRY_ASM(661b, 665b, target, "0", ALT_STR(((key) | ALT_FLAG_DIRECT_CALL)))

/* ---- AArch64: making written instructions visible to instruction fetch ------------------ */

/* One step of the maintenance after writing instructions (alt_runtime::aarch64::cache). */
enum alt_cache_op_kind {
    ALT_DC_CVAU = 1, /* DC CVAU, Xt for every line of [addr, addr + len) */
    ALT_DSB_ISH = 2, /* DSB ISH */
    ALT_IC_IVAU = 3, /* IC IVAU, Xt for every line of [addr, addr + len) */
    ALT_ISB = 4,     /* ISB */
};

struct alt_cache_op {
    enum alt_cache_op_kind kind;
    unsigned long addr; /* first line (DC/IC) */
    unsigned long len;  /* whole lines (DC/IC) */
    unsigned long line; /* line size in bytes (DC/IC) */
};

#define ALT_CTR_EL0_IDC (1UL << 28)
#define ALT_CTR_EL0_DIC (1UL << 29)

static inline void alt_round_to_lines_(unsigned long addr, unsigned long len, unsigned long line,
                                       struct alt_cache_op *op)
{
    unsigned long mask = line - 1;
    unsigned long start = addr & ~mask;
    unsigned __int128 end = (unsigned __int128)addr + len;
    unsigned __int128 top = (unsigned __int128)1 << 64;
    if (end > top)
        end = top;
    end = (end + mask) & ~(unsigned __int128)mask;
    unsigned __int128 rounded = end - start;
    op->addr = start;
    op->len = rounded >= top ? ~mask : (unsigned long)rounded;
    op->line = line;
}

/*
 * The maintenance sequence for `len` bytes of instructions written at `addr` on a system whose
 * CTR_EL0 reads `ctr`, into `out` (room for 5 steps); returns the number of steps. The same
 * sequence as alt_runtime::aarch64::cache::sync_sequence: DC CVAU unless IDC, DSB ISH, IC IVAU
 * and DSB ISH unless DIC, ISB; nothing for an empty range. Line sizes from DminLine (bits 19:16)
 * and IminLine (bits 3:0), log2 of 4-byte words.
 */
static inline int alt_cache_sequence(unsigned long ctr, unsigned long addr, unsigned long len,
                                     struct alt_cache_op out[5])
{
    int n = 0;
    if (len == 0)
        return 0;
    if (!(ctr & ALT_CTR_EL0_IDC)) {
        out[n].kind = ALT_DC_CVAU;
        alt_round_to_lines_(addr, len, 4UL << ((ctr >> 16) & 0xf), &out[n]);
        n++;
    }
    out[n].kind = ALT_DSB_ISH;
    out[n].addr = out[n].len = out[n].line = 0;
    n++;
    if (!(ctr & ALT_CTR_EL0_DIC)) {
        out[n].kind = ALT_IC_IVAU;
        alt_round_to_lines_(addr, len, 4UL << (ctr & 0xf), &out[n]);
        n++;
        out[n].kind = ALT_DSB_ISH;
        out[n].addr = out[n].len = out[n].line = 0;
        n++;
    }
    out[n].kind = ALT_ISB;
    out[n].addr = out[n].len = out[n].line = 0;
    n++;
    return n;
}

#if defined(__aarch64__)
/* This CPU's CTR_EL0 (Linux lets EL0 read it, trapping and sanitising where CPUs differ). */
static inline unsigned long alt_read_ctr_el0(void)
{
    unsigned long ctr;
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    return ctr;
}

/*
 * Makes `len` bytes of instructions just written at `addr` visible to instruction fetch on
 * this CPU (every other CPU still needs its own ISB before it runs them). Returns the number of
 * steps executed.
 */
static inline int alt_sync_icache(const void *addr, unsigned long len)
{
    struct alt_cache_op ops[5];
    int n = alt_cache_sequence(alt_read_ctr_el0(), (unsigned long)addr, len, ops);
    for (int i = 0; i < n; i++) {
        unsigned long a;
        switch (ops[i].kind) {
        case ALT_DC_CVAU:
            for (a = ops[i].addr; a - ops[i].addr < ops[i].len; a += ops[i].line)
                __asm__ volatile("dc cvau, %0" : : "r"(a) : "memory");
            break;
        case ALT_IC_IVAU:
            for (a = ops[i].addr; a - ops[i].addr < ops[i].len; a += ops[i].line)
                __asm__ volatile("ic ivau, %0" : : "r"(a) : "memory");
            break;
        case ALT_DSB_ISH:
            __asm__ volatile("dsb ish" : : : "memory");
            break;
        case ALT_ISB:
            __asm__ volatile("isb" : : : "memory");
            break;
        }
    }
    return n;
}
#endif /* __aarch64__ */

#else /* __ASSEMBLER__ */

/* The same sites in assembly: start, default code, else, replacement, end KEY. */
.macro alt_alternative_start
661:
.endm

.macro alt_alternative_else
662:
.pushsection alt_replacement,"axR",@progbits
ALT_CODE_ALIGN
663:
.endm

.macro alt_alternative_end key
664:
.popsection
ALT_PAD(ALT_PAD_LEN(664b - 663b, 662b - 661b))
665:
.pushsection alt_instr,"aR",@progbits
.balign 4
.long 661b - .
.long 663b - .
.short \key
.byte 665b - 661b
.byte 664b - 663b
.popsection
.endm

/* A direct-call site in assembly: the default code between start and end, the call target. */
.macro alt_call_end target, key
662:
ALT_PAD(ALT_PAD_LEN(ALT_CALL_LEN, 662b - 661b))
665:
.pushsection alt_instr,"aR",@progbits
.balign 4
.long 661b - .
.long \target - .
.short (\key) | ALT_FLAG_DIRECT_CALL
.byte 665b - 661b
.byte 0
.popsection
.endm

#endif /* __ASSEMBLER__ */

#endif /* ALT_H */
