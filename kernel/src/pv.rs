//! A paravirt operations table of the kernel's own, declared with `alt::paravirt_ops!`, its two
//! backends, and the boot-time patching of its call sites through the no_std API
//! (`plan_paravirt` + `paravirt::apply` with the kernel's alias writer).
//!
//! The operations act on the real machine: `irq_save`/`irq_restore` read and write RFLAGS (IF
//! included) with `pushfq`/`popfq`, `cycles` reads the time-stamp counter, `io_delay` writes to
//! the POST port 0x80 (the classic ISA delay), `halt` waits (never called: its site shows what an
//! unset operation becomes). The **native** backend takes the native implementations (inline
//! where the table has a sequence); the **alt** backend calls its own counting functions for the
//! flags and the cycle counter, makes `io_delay` a nop and leaves `halt` unset (its site becomes
//! a trap). The workload's results are the same under both.

use core::sync::atomic::{AtomicU64, Ordering};

use alt::paravirt::OpImpl;

extern "C" fn native_irq_save() -> u64 {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack (push, then pop); no other effect.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) flags, options(preserves_flags)) };
    flags
}

extern "C" fn native_irq_restore(flags: u64) {
    // SAFETY: writes RFLAGS with a value `irq_save` returned on this CPU (the operation's
    // contract), so IF, DF and the other system flags are restored as they were.
    unsafe { core::arch::asm!("push {}", "popfq", in(reg) flags) };
}

extern "C" fn native_cycles() -> u64 {
    // SAFETY: rdtsc exists on every x86-64 CPU and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

extern "C" fn native_io_delay() {
    // SAFETY: a write to the POST diagnostic port 0x80, which nothing in this machine decodes
    // (the classic I/O delay); no effect on memory.
    unsafe {
        core::arch::asm!("out 0x80, al", in("al") 0u8, options(nomem, nostack, preserves_flags))
    };
}

extern "C" fn native_halt() {
    core::hint::spin_loop()
}

alt::paravirt_ops! {
    /// Interrupt-flag save/restore on the real RFLAGS, a cycle counter and an I/O delay.
    pub table PV_OPS {
        /// RFLAGS (IF is bit 9).
        fn irq_save() -> u64 {
            native: native_irq_save,
            // SAFETY: pushes RFLAGS and pops it into the result: the stack is balanced and only
            // rax changes.
            unsafe inline: ["pushfq", "pop {ret}"],
            clobbers: [rax],
        }
        /// Restores RFLAGS saved by `irq_save`.
        fn irq_restore(flags: u64) {
            native: native_irq_restore,
            // SAFETY: loads RFLAGS from the argument, as the native function does; the stack is
            // balanced and no register changes (RFLAGS is what the operation is for).
            unsafe inline: ["push {flags}", "popfq"],
            clobbers: [rax],
        }
        /// The time-stamp counter.
        fn cycles() -> u64 {
            native: native_cycles,
            // SAFETY: RDTSC writes rdx:rax only, both declared; the result is assembled in rax.
            unsafe inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
            clobbers: [rax, rdx],
        }
        /// Waits a little: a write to port 0x80, natively.
        fn io_delay() {
            native: native_io_delay,
            // SAFETY: a write to the unused diagnostic port 0x80, which the kernel runs at the
            // privilege level for; no register changes.
            unsafe inline: ["out 0x80, al"],
            clobbers: [rax],
        }
        /// Waits for something to happen (a spin-loop hint, natively). Never called.
        fn halt() { native: native_halt, clobbers: [rax] }
    }
}

/// Flag operations and cycle reads through the alt backend's functions.
pub static ALT_FLAG_OPS: AtomicU64 = AtomicU64::new(0);
/// Cycle-counter reads through the alt backend's function.
pub static ALT_CYCLE_READS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn alt_irq_save() -> u64 {
    ALT_FLAG_OPS.fetch_add(1, Ordering::Relaxed);
    native_irq_save()
}

unsafe extern "C" fn alt_irq_restore(flags: u64) {
    ALT_FLAG_OPS.fetch_add(1, Ordering::Relaxed);
    native_irq_restore(flags)
}

unsafe extern "C" fn alt_cycles() -> u64 {
    ALT_CYCLE_READS.fetch_add(1, Ordering::Relaxed);
    native_cycles()
}

/// The second backend: counting functions, `io_delay` a nop, `halt` unset.
pub const ALT: PvOpsBackend = PvOpsBackend {
    name: "alt",
    irq_save: OpImpl::Function(alt_irq_save),
    irq_restore: OpImpl::Function(alt_irq_restore),
    cycles: OpImpl::Function(alt_cycles),
    io_delay: OpImpl::Nop,
    halt: OpImpl::Unset,
};

/// The backend named on the command line (`alt.pv=native|alt`; native by default).
pub fn backend_from_cmdline(cmdline: &str) -> Result<PvOpsBackend, &str> {
    let mut backend = PvOpsBackend::NATIVE;
    for w in cmdline.split_ascii_whitespace() {
        if let Some(name) = w.strip_prefix("alt.pv=") {
            backend = match name {
                "native" => PvOpsBackend::NATIVE,
                "alt" => ALT,
                _ => return Err(w),
            };
        }
    }
    Ok(backend)
}

/// IF (interrupts enabled) and bit 1 (always set) of RFLAGS: what the workload may depend on.
const FLAGS_MASK: u64 = 0x202;

/// The paravirt part of the workload: values that are the same whatever each site holds (and
/// whether it was patched). Values live in registers across the sites, so a site that changed
/// a register it promised to keep would change the result.
#[inline(never)]
pub fn run(rounds: u64) -> [u64; 4] {
    let mut monotonic = true;
    let mut saved_bits = 0;
    let mut after_bits = 0;
    let mut acc = 0u64;
    for i in 0..rounds {
        let i = core::hint::black_box(i);
        let flags = PV_OPS.irq_save();
        let t0 = PV_OPS.cycles();
        PV_OPS.io_delay();
        let t1 = PV_OPS.cycles();
        PV_OPS.irq_restore(flags);
        let after = PV_OPS.irq_save();
        monotonic &= t1 >= t0;
        saved_bits |= flags & FLAGS_MASK;
        after_bits |= after & FLAGS_MASK;
        acc = (acc ^ i ^ (flags & FLAGS_MASK)).wrapping_mul(0x0100_0000_01b3);
        if core::hint::black_box(false) {
            PV_OPS.halt();
        }
    }
    [u64::from(monotonic), saved_bits, after_bits, acc]
}
