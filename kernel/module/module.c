/*
 * A module of the test kernel: code compiled apart from the kernel, with alternatives of its
 * own (alt.h) and calls through the kernel's paravirt table PV_OPS (found by alt-tablegen from
 * their relocations), loaded after boot and patched with the decisions made at boot.
 *
 * Built by kernel/build.rs into one relocatable object (module.ko); loaded, relocated and
 * patched by kernel/src/module.rs.
 */
#include "alt.h"

/* The kernel's operations table (kernel/src/pv.rs), in slot order. */
extern void *PV_OPS[];
typedef unsigned long (*irq_save_fn)(void);
typedef void (*irq_restore_fn)(unsigned long);
typedef unsigned long (*cycles_fn)(void);

/* Which variant each alternatives site ran: bit 0 if POPCNT (patched where every CPU has
 * it), bit 1 if AVX-512F (no tested model has it: the default stays), bit 2 unless POPCNT (a
 * negated entry). */
unsigned long mod_variants(void)
{
    unsigned int a, b, c;
    asm volatile(ALT_ALTERNATIVE("xor %k0, %k0", "mov $1, %k0", ALT_CAP_POPCNT) : "=r"(a));
    asm volatile(ALT_ALTERNATIVE("xor %k0, %k0", "mov $2, %k0", ALT_CAP_AVX512F) : "=r"(b));
    asm volatile(ALT_ALTERNATIVE("xor %k0, %k0", "mov $4, %k0", ALT_NOT(ALT_CAP_POPCNT))
                 : "=r"(c));
    return a | b | c;
}

/* The target of a direct call. */
unsigned long mod_seven(void)
{
    return 7;
}

/* 7 where the site became a direct call to mod_seven (POPCNT), 0 otherwise. */
unsigned long mod_called(void)
{
    unsigned long r;
    asm volatile(ALT_CALL("xor %%eax, %%eax", mod_seven, ALT_CAP_POPCNT)
                 : "=a"(r)
                 :
                 : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    return r;
}

/* Paravirt operations through the kernel's table: RFLAGS' IF and bit 1, and whether the
 * counter went forward (bit 16), the same under every backend. */
unsigned long mod_pv(void)
{
    unsigned long flags = ((irq_save_fn)PV_OPS[0])();
    unsigned long t0 = ((cycles_fn)PV_OPS[2])();
    unsigned long t1 = ((cycles_fn)PV_OPS[2])();
    ((irq_restore_fn)PV_OPS[1])(flags);
    return (flags & 0x202) | ((unsigned long)(t1 >= t0) << 16);
}
