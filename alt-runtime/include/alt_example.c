/*
 * alt_example.c: C functions whose hot instructions are alternatives (alt.h), for x86-64 and
 * AArch64. Build and look at the tables, plan them for a CPU, or write a patched copy:
 *
 *     cc -O2 -I alt-runtime/include alt-runtime/include/alt_example.c -o alt_example
 *     alt-tablegen inspect alt_example
 *     alt-tablegen plan --cpu Haswell alt_example
 *     alt-tablegen apply --cpu Haswell alt_example alt_example.haswell
 *     qemu-x86_64 -cpu Haswell ./alt_example.haswell     # the same output, with POPCNT inline
 *
 *     aarch64-linux-gnu-gcc -O2 -static -I alt-runtime/include alt-runtime/include/alt_example.c
 *     alt-tablegen apply --cpu cortex-a53 a.out a.out.a53 && qemu-aarch64 -cpu cortex-a53 a.out.a53
 *
 * Linked into a Rust program that uses `alt`, these sites are patched with the Rust ones.
 * tests/alt_h.rs builds this file and runs it unpatched and patched under qemu; the printed
 * results are the same whatever was chosen.
 */
#include <stdio.h>

#include "alt.h"

#if defined(__x86_64__)

/* Number of set bits: a branch-free sequence by default, one POPCNT where every CPU has it. */
unsigned alt_example_popcount32(unsigned x)
{
    unsigned r, t;
    __asm__(ALT_ALTERNATIVE(
                /* default: x - ((x >> 1) & 0x5555...) and so on, in two registers */
                "mov %[x], %[t]\n\t"
                "shr $1, %[t]\n\t"
                "and $0x55555555, %[t]\n\t"
                "mov %[x], %[r]\n\t"
                "sub %[t], %[r]\n\t"
                "mov %[r], %[t]\n\t"
                "shr $2, %[t]\n\t"
                "and $0x33333333, %[r]\n\t"
                "and $0x33333333, %[t]\n\t"
                "add %[t], %[r]\n\t"
                "mov %[r], %[t]\n\t"
                "shr $4, %[t]\n\t"
                "add %[t], %[r]\n\t"
                "and $0x0f0f0f0f, %[r]\n\t"
                "imul $0x01010101, %[r], %[r]\n\t"
                "shr $24, %[r]",
                /* where every CPU has POPCNT */
                "popcnt %[x], %[r]",
                ALT_CAP_POPCNT)
            : [r] "=&r"(r), [t] "=&r"(t)
            : [x] "r"(x)
            : "cc");
    return r;
}

/* A speculation barrier only where LFENCE is dispatch-serialising; nothing elsewhere. */
void alt_example_fence(void)
{
    __asm__ volatile(ALT_ALTERNATIVE("", "lfence", ALT_CAP_LFENCE_SERIALIZING) ::: "memory");
}

/* Two alternatives in priority order: SHLX where every CPU has BMI2; otherwise the second
 * entry, keyed "BMI2 absent", holds, so the `shl %cl` default is always rewritten (into the
 * same shift spelled `sal`): the first entry that holds wins. */
unsigned long alt_example_shift(unsigned long x, unsigned long n)
{
    unsigned long r = x;
    __asm__(ALT_ALTERNATIVE_2("mov %[n], %%rcx\n\tshl %%cl, %[r]",
                              "shlx %[n], %[x], %[r]", ALT_CAP_BMI2,
                              "mov %[n], %%rcx\n\tsal %%cl, %[r]", ALT_NOT(ALT_CAP_BMI2))
            : [r] "+&r"(r)
            : [x] "r"(x), [n] "r"(n)
            : "rcx", "cc");
    return r;
}

static const char *alt_example_arch = "x86-64";

#elif defined(__aarch64__)

/* Count trailing zeros of a nonzero value: RBIT + CLZ by default; where Cortex-A53 erratum
 * 843419 applies, an equivalent sequence without RBIT (an illustration of the form, not that
 * erratum's workaround, which is a linker option). */
unsigned long alt_example_ctz(unsigned long x)
{
    unsigned long r, t;
    __asm__(ALT_ALTERNATIVE("rbit %[r], %[x]\n\tclz %[r], %[r]",
                            "neg %[t], %[x]\n\tand %[t], %[t], %[x]\n\t"
                            "clz %[t], %[t]\n\tmov %[r], #63\n\tsub %[r], %[r], %[t]",
                            ALT_CAP_ERRATUM_ARM64_843419)
            : [r] "=&r"(r), [t] "=&r"(t)
            : [x] "r"(x));
    return r;
}

/* A barrier where the Cortex-A76/Neoverse-N1 timer erratum applies; a NOP elsewhere. */
void alt_example_fence(void)
{
    __asm__ volatile(ALT_ALTERNATIVE("nop", "dmb ish", ALT_CAP_ERRATUM_ARM64_1418040) ::: "memory");
}

static const char *alt_example_arch = "aarch64";

#endif

int main(void)
{
    unsigned long sum = 0;
#if defined(__x86_64__)
    static const unsigned inputs[] = {0, 1, 0xff, 0x80000001u, 0xdeadbeefu, 0xffffffffu};
    for (unsigned i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        unsigned c = alt_example_popcount32(inputs[i]);
        printf("popcount32(%#x) = %u\n", inputs[i], c);
        sum = sum * 31 + c;
    }
    for (unsigned long n = 0; n < 64; n += 9) {
        unsigned long s = alt_example_shift(0x0123456789abcdefUL, n);
        printf("shift(%lu) = %#lx\n", n, s);
        sum = sum * 31 + s;
    }
#elif defined(__aarch64__)
    for (unsigned long x = 1; x != 0; x <<= 7) {
        unsigned long c = alt_example_ctz(x);
        printf("ctz(%#lx) = %lu\n", x, c);
        sum = sum * 31 + c;
    }
#endif
    alt_example_fence();
    printf("%s checksum %lu\n", alt_example_arch, sum);
    return 0;
}
