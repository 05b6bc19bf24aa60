/*
 * The C view of the Rust operations table `PV_OPS` (declared with `alt::paravirt_ops!` in
 * src/main.rs). The macro makes `PV_OPS` a `#[no_mangle]` static whose slots are a `#[repr(C)]`
 * struct of `unsafe extern "C" fn` pointers, one per operation, in declaration order: field N
 * of `struct pv_ops` below is operation N, and a call `PV_OPS.name(...)` compiles (without
 * -fPIC) to `call *PV_OPS+8*N(%rip)`, the site form alt-tablegen records and the runtime patches.
 *
 * Keep the fields in the Rust declaration order. Checked: `PV_OPS_COUNT` here against
 * `PvOps::OPS` (a const assertion in src/main.rs), the size below, and the field names and their
 * order against `PvOps::OP_NAMES` (a unit test in src/main.rs reads this file).
 */
#ifndef PV_OPS_H
#define PV_OPS_H

#include <stdint.h>

#define PV_OPS_COUNT 7

struct pv_ops {
    uint64_t (*save_flags)(void);               /* op 0 */
    void (*restore_flags)(uint64_t flags);      /* op 1 */
    void (*irq_disable)(void);                  /* op 2 */
    void (*irq_enable)(void);                   /* op 3 */
    uint64_t (*mix)(uint64_t a, uint64_t b);    /* op 4 */
    uint64_t (*hypercall)(uint64_t nr, uint64_t arg); /* op 5 */
    void (*cpu_relax)(void);                    /* op 6 */
};

_Static_assert(sizeof(struct pv_ops) == PV_OPS_COUNT * sizeof(void (*)(void)),
               "struct pv_ops must be PV_OPS_COUNT function pointers, nothing else");

extern struct pv_ops PV_OPS;

uint64_t c_workload(uint64_t rounds);
uint64_t c_flags_probe(void);
uint64_t c_save_flags(void);

#endif
