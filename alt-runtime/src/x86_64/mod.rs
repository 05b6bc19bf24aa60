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
    /// written and not a stale prefetch (`cpuid`, which is architecturally serialising). Does
    /// nothing when built for another architecture.
    #[inline]
    pub fn serialize() {
        // cpuid leaf 0 is available on every x86-64 CPU and has no effect beyond serialising.
        #[cfg(target_arch = "x86_64")]
        core::arch::x86_64::__cpuid(0);
    }
}
