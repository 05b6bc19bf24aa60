//! x86-64 instruction knowledge: NOPs, instruction lengths, relocation of moved code, CPUID.
//!
//! Everything here except the native CPUID source is plain data and functions, so host tools can
//! use it on any machine.

pub mod cpuid;
#[cfg(feature = "alloc")]
pub mod dump;
pub mod hypervisor;
pub mod insn;
pub mod nops;
pub mod relocate;
