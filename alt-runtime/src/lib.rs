//! # alt-runtime
//!
//! The run-time half of **alt**: boot-time (or start-up) alternatives and paravirt patching.
//!
//! Code compiled by the `alt` macros carries, at every patchable *site*, a safe default sequence
//! padded with NOPs, and a table entry per alternative. At start-up this crate
//!
//! 1. probes the CPUs and decides the system's [capabilities](capability) (features every CPU has,
//!    errata any CPU has),
//! 2. reads the [tables](table) and makes a [plan]: one decision per site, after validating every
//!    entry (nothing is written if any entry is wrong),
//! 3. writes every site at once through a [writer] (the replacement relocated to its new
//!    address, or a fresh direct call, the rest NOP-filled) while a [rendezvous] keeps every
//!    other CPU or thread away, synchronises, and
//! 4. returns a [report] of what it chose and why, in a record that can also
//!    [revert](driver::Patched::revert) every site to its exact original bytes.
//!
//! The [driver] does all of it in a few calls, for kernels and processes alike.
//!
//! The crate is `no_std`. The `alloc` feature enables plans and reports; `std` (the default)
//! adds hosted Linux support: probing every online CPU, patching the process's own text with
//! `mprotect`, and the `ALT_CLEARCPUID` override.
//!
//! Host tools (such as `alt-tablegen`) use this crate with default features off: the table
//! layouts, capability names and instruction encodings are plain data and functions that compile
//! on any host.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod aarch64;
#[cfg(feature = "alloc")]
pub mod bytes;
pub mod c_header;
pub mod capability;
pub mod cpu;
#[cfg(feature = "alloc")]
pub mod driver;
pub mod errata;
pub mod identity;
#[cfg(feature = "alloc")]
pub mod isa;
pub mod linker;
pub mod memory;
#[cfg(feature = "std")]
pub mod os;
pub mod overrides;
#[cfg(feature = "alloc")]
pub mod paravirt;
#[cfg(feature = "alloc")]
pub mod patch;
#[cfg(feature = "alloc")]
pub mod plan;
pub mod policy;
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub mod process;
pub mod rendezvous;
#[cfg(feature = "alloc")]
pub mod report;
mod short;
#[cfg(feature = "alloc")]
pub mod sites;
#[cfg(feature = "std")]
pub mod sysfs;
pub mod table;
pub mod writer;
pub mod x86_64;

pub use capability::{Capability, CapabilityKind, CapabilitySet, Errata, Features};
pub use table::{AltEntry, AltFlags, Clobbers, PvEntry};

/// Helpers for the unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use core::fmt;

    /// A fixed buffer that `core::fmt` writes into, so `Display` can be tested without `alloc`.
    pub(crate) struct FmtBuf {
        b: [u8; 512],
        n: usize,
    }

    impl Default for FmtBuf {
        fn default() -> Self {
            Self { b: [0; 512], n: 0 }
        }
    }

    impl FmtBuf {
        pub(crate) fn as_str(&self) -> &str {
            core::str::from_utf8(&self.b[..self.n]).unwrap()
        }
    }

    impl fmt::Write for FmtBuf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.n + s.len();
            self.b
                .get_mut(self.n..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }
}
