/*
 * C code that calls paravirt operations through the Rust table PV_OPS. Nothing here is
 * annotated: every `PV_OPS.op(...)` is a plain indirect call, `call *PV_OPS+8*op(%rip)`, and
 * alt-tablegen finds each one from its relocation against PV_OPS when build.rs runs. At
 * start-up the runtime rewrites these 6-byte sites like the Rust ones: the native inline
 * sequence when it fits in 6 bytes (mix, cpu_relax), otherwise a direct call. The c_tail_*
 * functions end in tail calls (`jmp *PV_OPS+8*op(%rip)`), rewritten to `jmp rel32` or the
 * inline sequence followed by `ret`.
 *
 * Every function is global: a table entry reaches its site through a global symbol of the
 * site's section (see alt-tablegen's README).
 */
#include "pv_ops.h"

/* The same computation as rust_workload in src/main.rs: the two checksums must agree. */
uint64_t c_workload(uint64_t rounds)
{
    uint64_t acc = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < rounds; i++) {
        uint64_t saved = PV_OPS.save_flags();
        PV_OPS.irq_disable();
        uint64_t inside = PV_OPS.save_flags();
        uint64_t h = PV_OPS.hypercall(i, acc);
        uint64_t m = PV_OPS.mix(h, i);
        PV_OPS.cpu_relax();
        PV_OPS.restore_flags(saved);
        PV_OPS.irq_enable();
        uint64_t after = PV_OPS.save_flags();
        acc = (acc ^ m ^ saved ^ (inside << 1) ^ (after << 2)) * 0x100000001b3ull;
    }
    return acc;
}

/* The emulated flags word before, inside and after a disable/enable pair. */
uint64_t c_flags_probe(void)
{
    uint64_t before = PV_OPS.save_flags();
    PV_OPS.irq_disable();
    uint64_t inside = PV_OPS.save_flags();
    PV_OPS.irq_enable();
    return before | (inside << 16) | (PV_OPS.save_flags() << 32);
}

/* A call in tail position kept a call: build.rs compiles with -fno-optimize-sibling-calls, so
 * only the c_tail_* functions below, which ask for it, become tail calls. */
uint64_t c_save_flags(void)
{
    return PV_OPS.save_flags();
}

/* Calls in tail position compiled as tail calls, whatever the global flags say: each becomes
 * `jmp *PV_OPS+8*op(%rip)`. The runtime rewrites those too: `jmp rel32` to the implementation,
 * the native inline sequence followed by `ret` where both fit, `ret` for a nop. */
#define TAIL_CALLS __attribute__((optimize("optimize-sibling-calls")))

TAIL_CALLS uint64_t c_tail_mix(uint64_t a, uint64_t b)
{
    return PV_OPS.mix(a, b);
}

TAIL_CALLS uint64_t c_tail_hypercall(uint64_t nr, uint64_t arg)
{
    return PV_OPS.hypercall(nr, arg);
}

TAIL_CALLS void c_tail_relax(void)
{
    PV_OPS.cpu_relax();
}
