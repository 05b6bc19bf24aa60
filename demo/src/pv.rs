//! The paravirt demo: native operations on an emulated interrupt flag, a cycle counter and a
//! "hypercall" ([`native`]), and (feature `table`, on by default) the operations table
//! [`PV_OPS`] of `examples/paravirt.rs` and `examples/threads.rs` over them, its counting backend
//! [`COUNTING`] and its [`workload`].
//!
//! The test kernel takes [`native::cycles`] and [`native::halt`] for its own table (whose flag
//! operations act on the real RFLAGS) and builds this crate without `table`: a program has one
//! `PV_OPS`.

/// The native implementations: what an operation does without a hypervisor. Each is an
/// `extern "C"` function, so it can be a table's `native:` function directly.
pub mod native {
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The interrupt-enable bit of the flags word (bit 9, as in RFLAGS).
    pub const IF: u64 = 0x200;

    /// The emulated flags word: [`IF`] set means "interrupts enabled". One for the whole
    /// program: the flag operations are not per thread.
    pub static EMU_FLAGS: AtomicU64 = AtomicU64::new(IF);

    /// The emulated flags word.
    pub extern "C" fn save_flags() -> u64 {
        EMU_FLAGS.load(Ordering::Relaxed)
    }

    /// Sets the emulated flags word.
    pub extern "C" fn restore_flags(flags: u64) {
        EMU_FLAGS.store(flags, Ordering::Relaxed)
    }

    /// Clears the emulated interrupt flag (the whole word).
    pub extern "C" fn irq_disable() {
        EMU_FLAGS.store(0, Ordering::Relaxed)
    }

    /// Sets the emulated interrupt flag (the word becomes [`IF`]).
    pub extern "C" fn irq_enable() {
        EMU_FLAGS.store(IF, Ordering::Relaxed)
    }

    /// The time-stamp counter.
    pub extern "C" fn cycles() -> u64 {
        // SAFETY: rdtsc exists on every x86-64 CPU and has no side effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// A "hypercall": a pure function of its arguments.
    pub extern "C" fn hypercall(nr: u64, arg: u64) -> u64 {
        nr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ arg
    }

    /// Waits a little: nothing, natively.
    pub extern "C" fn io_delay() {}

    /// Waits for something to happen: a spin-loop hint, natively.
    pub extern "C" fn halt() {
        core::hint::spin_loop()
    }
}

#[cfg(feature = "table")]
pub use table::*;

#[cfg(feature = "table")]
mod table {
    use core::hint::black_box;
    use core::sync::atomic::{AtomicU64, Ordering};

    use alt::paravirt::OpImpl;

    use super::native;

    alt::paravirt_ops! {
        /// Interrupt-flag style operations, a cycle counter and a hypercall.
        pub table PV_OPS {
            /// The emulated flags word.
            fn save_flags() -> u64 {
                native: native::save_flags,
                // SAFETY: a plain load of the flags word (an AtomicU64: aligned, always valid),
                // as the native function's relaxed load; only the result register changes.
                unsafe inline: ["mov {ret}, qword ptr [rip + {if_word}]"],
                clobbers: [rax],
                symbols: { if_word = native::EMU_FLAGS },
            }
            /// Sets the emulated flags word.
            fn restore_flags(flags: u64) {
                native: native::restore_flags,
                // SAFETY: a plain store to the flags word, as the native function's relaxed
                // store.
                unsafe inline: ["mov qword ptr [rip + {if_word}], {flags}"],
                clobbers: [rax],
                symbols: { if_word = native::EMU_FLAGS },
            }
            /// Clears the emulated interrupt flag.
            fn irq_disable() {
                native: native::irq_disable,
                // SAFETY: a plain store to the flags word, as the native function's relaxed
                // store.
                unsafe inline: ["mov qword ptr [rip + {if_word}], 0"],
                clobbers: [rax],
                symbols: { if_word = native::EMU_FLAGS },
            }
            /// Sets the emulated interrupt flag.
            fn irq_enable() {
                native: native::irq_enable,
                // SAFETY: a plain store to the flags word, as the native function's relaxed
                // store.
                unsafe inline: ["mov qword ptr [rip + {if_word}], 0x200"],
                clobbers: [rax],
                symbols: { if_word = native::EMU_FLAGS },
            }
            /// The time-stamp counter.
            fn cycles() -> u64 {
                native: native::cycles,
                // SAFETY: RDTSC writes rdx:rax only, both declared; the result is assembled
                // in rax.
                unsafe inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
                clobbers: [rax, rdx],
            }
            /// A "hypercall": a pure function of its arguments.
            fn hypercall(nr: u64, arg: u64) -> u64 { native: native::hypercall, clobbers: C }
            /// Waits a little (nothing, natively).
            fn io_delay() { native: native::io_delay, clobbers: C }
            /// Halts until the next interrupt (a spin-loop hint, natively).
            fn halt() { native: native::halt, clobbers: [rax] }
        }
    }

    static COUNT_FLAGS: AtomicU64 = AtomicU64::new(0);
    static COUNT_CYCLES: AtomicU64 = AtomicU64::new(0);
    static COUNT_HYPERCALLS: AtomicU64 = AtomicU64::new(0);

    unsafe extern "C" fn counting_save_flags() -> u64 {
        COUNT_FLAGS.fetch_add(1, Ordering::Relaxed);
        native::save_flags()
    }
    unsafe extern "C" fn counting_restore_flags(flags: u64) {
        COUNT_FLAGS.fetch_add(1, Ordering::Relaxed);
        native::restore_flags(flags)
    }
    unsafe extern "C" fn counting_cycles() -> u64 {
        COUNT_CYCLES.fetch_add(1, Ordering::Relaxed);
        native::cycles()
    }
    unsafe extern "C" fn counting_hypercall(nr: u64, arg: u64) -> u64 {
        COUNT_HYPERCALLS.fetch_add(1, Ordering::Relaxed);
        native::hypercall(nr, arg)
    }

    /// Counts flag operations, cycle reads and hypercalls ([`counts`]); the I/O delay does
    /// nothing; `halt` is left unset (its sites trap).
    pub const COUNTING: PvOpsBackend = PvOpsBackend {
        name: "counting",
        save_flags: OpImpl::Function(counting_save_flags),
        restore_flags: OpImpl::Function(counting_restore_flags),
        irq_disable: OpImpl::Native,
        irq_enable: OpImpl::Native,
        cycles: OpImpl::Function(counting_cycles),
        hypercall: OpImpl::Function(counting_hypercall),
        io_delay: OpImpl::Nop,
        halt: OpImpl::Unset,
    };

    /// What [`COUNTING`]'s functions counted since the last [`reset_counts`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Counts {
        /// `save_flags` and `restore_flags` calls.
        pub flags: u64,
        /// `cycles` calls.
        pub cycles: u64,
        /// `hypercall` calls.
        pub hypercalls: u64,
    }

    /// What [`COUNTING`]'s functions counted.
    pub fn counts() -> Counts {
        Counts {
            flags: COUNT_FLAGS.load(Ordering::Relaxed),
            cycles: COUNT_CYCLES.load(Ordering::Relaxed),
            hypercalls: COUNT_HYPERCALLS.load(Ordering::Relaxed),
        }
    }

    /// Sets every count to 0.
    pub fn reset_counts() {
        COUNT_FLAGS.store(0, Ordering::Relaxed);
        COUNT_CYCLES.store(0, Ordering::Relaxed);
        COUNT_HYPERCALLS.store(0, Ordering::Relaxed);
    }

    /// The paravirt workload, ten operation calls a round: a checksum of everything observable
    /// except the cycle counts' values, the same unpatched and under either backend. Values
    /// live in registers across the operations, so a site that changed a register it promised
    /// to keep would change the checksum. It uses the one emulated flags word: one thread at a
    /// time.
    #[inline(never)]
    pub fn workload(rounds: u64) -> u64 {
        let mut acc: u64 = 0xcbf2_9ce4_8422_2325;
        let mut monotonic = true;
        for i in 0..rounds {
            let saved = PV_OPS.save_flags();
            PV_OPS.irq_disable();
            let inside = PV_OPS.save_flags();
            let t0 = PV_OPS.cycles();
            let h = PV_OPS.hypercall(i, acc);
            let t1 = PV_OPS.cycles();
            monotonic &= t1 >= t0 || i == 0;
            PV_OPS.io_delay();
            PV_OPS.restore_flags(saved);
            PV_OPS.irq_enable();
            let after = PV_OPS.save_flags();
            acc = (acc ^ h ^ saved ^ (inside << 1) ^ (after << 2)).wrapping_mul(0x0100_0000_01b3);
            acc = black_box(acc);
        }
        acc ^ u64::from(monotonic)
    }

    /// Halts when `really`: never called with `true` (under [`COUNTING`] `halt` traps); its
    /// site shows what an unset operation becomes.
    #[inline(never)]
    pub fn halt_if(really: bool) {
        if really {
            PV_OPS.halt();
        }
    }
}
