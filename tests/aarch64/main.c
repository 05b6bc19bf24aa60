/*
 * The AArch64 execution test's program (tests/aarch64_qemu.rs): freestanding (no libc, so the
 * image is small and every PC-relative form reaches), static, run under qemu-aarch64.
 *
 *   main                      prints this CPU's MIDR_EL1, REVIDR_EL1 and CTR_EL0, then each
 *                             site's results on fixed inputs and which variant ran:
 *                             "sN r0 r1 ... variant V"
 *   main --patch ADDR:HEX...  first writes those bytes over its own text (mprotect, copy,
 *                             mprotect back) and runs alt_sync_icache on each range, printing
 *                             "synced ADDR LEN STEPS"; then as above
 *   main --cache CTR ADDR LEN ...
 *                             prints alt_cache_sequence for each triple
 *
 * S8 (two alternatives) and S9 (a direct call) are written in C with alt.h's ALT_ALTERNATIVE_2
 * and ALT_CALL; the other sites are in sites.S.
 */
#include "alt.h"

extern unsigned char tags[16];
long s1(long), s2(long), s3(long), s4(long), s5(long), s6(long), s7(long), s10(long);
void s9_direct(void);

/* ---- system calls ------------------------------------------------------------------ */

static long syscall3(long nr, long a, long b, long c)
{
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}

static void out(const char *s, unsigned long n) { syscall3(64, 1, (long)s, (long)n); }

static unsigned long slen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

static void puts_(const char *s) { out(s, slen(s)); }

static void hex(unsigned long v)
{
    char b[19];
    b[0] = '0';
    b[1] = 'x';
    int n = 2;
    int started = 0;
    for (int i = 60; i >= 0; i -= 4) {
        int d = (v >> i) & 0xf;
        if (d || started || i == 0) {
            b[n++] = "0123456789abcdef"[d];
            started = 1;
        }
    }
    out(b, n);
}

static void dec(long v)
{
    char b[21];
    int n = 21;
    unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
    do {
        b[--n] = '0' + u % 10;
        u /= 10;
    } while (u);
    if (v < 0)
        b[--n] = '-';
    out(b + n, 21 - n);
}

static int eq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static unsigned long parse_hex(const char **p)
{
    const char *s = *p;
    unsigned long v = 0;
    if (s[0] == '0' && s[1] == 'x')
        s += 2;
    for (;;) {
        char c = *s;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            break;
        v = v * 16 + d;
        s++;
    }
    *p = s;
    return v;
}

/* ---- S8 and S9, from C ------------------------------------------------------------- */

#define CALLEE_CLOBBERS "x1", "x9", "x10", "x30", "memory", "cc"

long s8(long x)
{
    register long x0 __asm__("x0") = x;
    __asm__ volatile(ALT_ALTERNATIVE_2("bl s8_default",
                                       "bl s8_first", ALT_CAP_ERRATUM_ARM64_1742098,
                                       "bl s8_second", ALT_CAP_ERRATUM_ARM64_835769)
                     : "+r"(x0)
                     :
                     : CALLEE_CLOBBERS);
    return x0;
}

long s9(long x)
{
    register long x0 __asm__("x0") = x;
    __asm__ volatile(ALT_CALL("bl s9_default", s9_direct, ALT_NOT(ALT_CAP_ERRATUM_ARM64_1319367))
                     : "+r"(x0)
                     :
                     : CALLEE_CLOBBERS);
    return x0;
}

/* ---- run-time patching ------------------------------------------------------------- */

static int patch(const char *arg)
{
    const char *p = arg;
    unsigned long addr = parse_hex(&p);
    if (*p++ != ':')
        return -1;
    unsigned char bytes[256];
    unsigned long n = 0;
    while (p[0] && p[1] && n < sizeof bytes) {
        const char pair[3] = {p[0], p[1], 0};
        const char *q = pair;
        bytes[n++] = (unsigned char)parse_hex(&q);
        p += 2;
    }
    unsigned long page = addr & ~4095UL;
    unsigned long span = (addr + n + 4095 - page) & ~4095UL;
    if (syscall3(226, page, span, 7) != 0) /* mprotect RWX */
        return -2;
    for (unsigned long i = 0; i < n; i++)
        ((volatile unsigned char *)addr)[i] = bytes[i];
    if (syscall3(226, page, span, 5) != 0) /* mprotect R-X */
        return -3;
    int steps = alt_sync_icache((const void *)addr, n);
    puts_("synced ");
    hex(addr);
    puts_(" ");
    dec(n);
    puts_(" ");
    dec(steps);
    puts_("\n");
    return 0;
}

/* ---- main ------------------------------------------------------------------------- */

typedef long (*site_fn)(long);

int main(int argc, char **argv)
{
    if (argc > 1 && eq(argv[1], "--cache")) {
        for (int i = 2; i + 2 < argc; i += 3) {
            const char *a = argv[i], *b = argv[i + 1], *c = argv[i + 2];
            struct alt_cache_op ops[5];
            int n = alt_cache_sequence(parse_hex(&a), parse_hex(&b), parse_hex(&c), ops);
            for (int k = 0; k < n; k++) {
                dec(ops[k].kind);
                puts_(" ");
                hex(ops[k].addr);
                puts_(" ");
                hex(ops[k].len);
                puts_(" ");
                hex(ops[k].line);
                puts_(";");
            }
            puts_("\n");
        }
        return 0;
    }
    if (argc > 1 && eq(argv[1], "--patch")) {
        for (int i = 2; i < argc; i++) {
            int e = patch(argv[i]);
            if (e) {
                puts_("patch failed: ");
                puts_(argv[i]);
                puts_("\n");
                return 10 - e;
            }
        }
    }
    unsigned long midr, revidr, ctr;
    __asm__ volatile("mrs %0, midr_el1" : "=r"(midr));
    __asm__ volatile("mrs %0, revidr_el1" : "=r"(revidr));
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    puts_("midr ");
    hex(midr);
    puts_(" revidr ");
    hex(revidr);
    puts_(" ctr ");
    hex(ctr);
    puts_("\n");

    static const site_fn sites[] = {0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10};
    static const long inputs[] = {-5, 0, 3, 8, 12, 1L << 40};
    for (int s = 1; s <= 10; s++) {
        tags[s] = 0xff;
        puts_("s");
        dec(s);
        for (unsigned i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
            puts_(" ");
            dec(sites[s](inputs[i]));
        }
        puts_(" variant ");
        dec(tags[s]);
        puts_("\n");
    }
    return 0;
}

__asm__(".text\n"
        ".globl _start\n"
        ".type _start, %function\n"
        "_start:\n"
        "    mov x29, #0\n"
        "    mov x30, #0\n"
        "    ldr x0, [sp]\n"
        "    add x1, sp, #8\n"
        "    bl main\n"
        "    mov x8, #94\n" /* exit_group */
        "    svc #0\n");
