//! x86-64 instruction knowledge: NOPs, instruction lengths, relocation of moved code, CPUID.
//!
//! Everything here except the `cpuid` probe's native source is plain data and functions, so host
//! tools can use it on any machine.
