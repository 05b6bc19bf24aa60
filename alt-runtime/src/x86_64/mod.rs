//! x86-64 instruction knowledge: NOPs, instruction lengths, relocation of moved code, CPUID.
//!
//! Everything here except the native CPUID source is plain data and functions, so host tools can
//! use it on any machine.

pub mod cpuid;
#[cfg(feature = "alloc")]
pub mod dump;
pub mod hypervisor;
pub mod insn;
#[cfg(feature = "alloc")]
mod isa;
pub mod nops;
pub mod relocate;

#[cfg(feature = "alloc")]
pub use isa::X86_64;
pub use serialize_cpu::serialize;

mod serialize_cpu {
    /// Serialises the instruction stream of the calling CPU, so that it executes the bytes just
    /// written and not a stale prefetch. Does nothing when built for another architecture.
    ///
    /// Hosted Linux: `iretq` to the next instruction, as Linux's own `sync_core()` does on CPUs
    /// without `SERIALIZE` (IRET is architecturally serialising on every x86-64 CPU and, unlike
    /// CPUID, which hypervisors always intercept, normally runs without leaving a virtual
    /// machine: a CPUID is a VM exit, 5-10 us on this project's VM against 0.04 us). Not where
    /// the process may run on a CET shadow stack (IRET would then check a shadow-stack frame
    /// that is not there): `cpuid` then, as everywhere else (a kernel, no_std).
    #[inline]
    pub fn serialize() {
        #[cfg(all(target_arch = "x86_64", feature = "std", target_os = "linux"))]
        if !on_shadow_stack() {
            iret_to_self();
            return;
        }
        // cpuid leaf 0 is available on every x86-64 CPU and has no effect beyond serialising.
        #[cfg(target_arch = "x86_64")]
        core::arch::x86_64::__cpuid(0);
    }

    /// Whether the process may run on a user shadow stack: `arch_prctl(ARCH_SHSTK_STATUS)` of
    /// the first caller, made directly so that `errno` stays untouched (this runs in signal
    /// handlers), and kept: the C library enables shadow stacks for the whole process at start
    /// (threads inherit them) and locks the choice. `EINVAL` (a kernel without shadow-stack
    /// support) means none; any other failure (a seccomp filter's errno) counts as one.
    #[cfg(all(target_arch = "x86_64", feature = "std", target_os = "linux"))]
    pub(super) fn on_shadow_stack() -> bool {
        use core::sync::atomic::{AtomicU8, Ordering::Relaxed};
        /// 0: not asked yet; 1: no shadow stack; 2: maybe one.
        static ANSWER: AtomicU8 = AtomicU8::new(0);
        match ANSWER.load(Relaxed) {
            1 => return false,
            2 => return true,
            _ => {}
        }
        const ARCH_SHSTK_STATUS: u64 = 0x5005;
        const ARCH_SHSTK_SHSTK: u64 = 1;
        let mut features: u64 = 0;
        let rc: i64;
        // SAFETY: arch_prctl(ARCH_SHSTK_STATUS, &features) writes one u64 at the pointer, which
        // is `features`, or fails; `syscall` clobbers rcx and r11 only.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") libc::SYS_arch_prctl => rc,
                in("rdi") ARCH_SHSTK_STATUS,
                in("rsi") &mut features as *mut u64,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            )
        };
        let none = rc == -i64::from(libc::EINVAL) || (rc == 0 && features & ARCH_SHSTK_SHSTK == 0);
        ANSWER.store(if none { 1 } else { 2 }, Relaxed);
        !none
    }

    /// `iretq` to the next instruction, with the frame built below the red zone.
    #[cfg(all(target_arch = "x86_64", feature = "std", target_os = "linux"))]
    fn iret_to_self() {
        // SAFETY: builds an interrupt frame (SS, RSP, RFLAGS, CS, RIP) of this thread's own
        // values 128 bytes below the stack pointer (past the red zone, which may hold the
        // caller's data) and returns through it to the label: same privilege, same stack,
        // same flags; the stack pointer ends where it started.
        unsafe {
            core::arch::asm!(
                "lea rsp, [rsp - 128]",
                "mov {t:e}, ss",
                "push {t}",
                "lea {t}, [rsp + 8]",
                "push {t}",
                "pushfq",
                "mov {t:e}, cs",
                "push {t}",
                "lea {t}, [rip + 2f]",
                "push {t}",
                "iretq",
                "2:",
                "lea rsp, [rsp + 128]",
                t = out(reg) _,
            )
        };
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn serialize_returns_to_the_next_instruction_with_the_stack_as_it_was() {
        let (before, after): (u64, u64);
        // SAFETY: reads the stack pointer.
        unsafe { core::arch::asm!("mov {}, rsp", out(reg) before, options(nomem, nostack)) };
        for _ in 0..1000 {
            super::serialize();
        }
        // SAFETY: as above.
        unsafe { core::arch::asm!("mov {}, rsp", out(reg) after, options(nomem, nostack)) };
        assert_eq!(before, after);
    }

    #[cfg(all(feature = "std", target_os = "linux"))]
    #[test]
    fn no_shadow_stack_here() {
        // Rust objects carry no SHSTK marking, so the C library never enables one for them.
        assert!(!super::serialize_cpu::on_shadow_stack());
    }
}
