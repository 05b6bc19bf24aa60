//! # alt-tablegen
//!
//! Build-time table generator and inspector for **alt**: find paravirt call sites from
//! relocations, write their table as a relocatable ELF object linked beside the code (no second
//! link pass), and inspect, verify and plan the tables of a built binary.
//!
//! The table layouts are those of [`alt_runtime::table`]; nothing here redefines them.
//!
//! ## Modules
//!
//! - [`read`]: mapped inputs (ELF x86-64 objects, `.a`/`.rlib` archives, final binaries linked
//!   with `--emit-relocs`) and the error type, which names file, member, section and offset.
//! - [`scan`]: references to given symbols in executable sections, each classified by the
//!   instruction that holds it ([`scan::Form`]).
//! - [`emit`]: the `alt_pv_<table>` object.
//! - [`inspect`]: `inspect`, `verify` and `plan` on a linked binary.
//! - [`effects`]: the register-effects half of `verify`: every variant of every site changes
//!   only what the site declares to the compiler.
//! - [`cpuspec`]: what `--cpu` describes (QEMU models, AArch64 cores and MIDRs, sysfs trees,
//!   CPUID dumps with every logical CPU), decided by the runtime's per-CPU policy.
//! - [`apply`]: a patched copy of a linked image for a CPU, planned by the runtime's planner.
//! - [`build`]: the build-script flow ([`build::Build`]).
//!
//! ## `scan` JSON schema
//!
//! `alt-tablegen scan --symbol NAME... --json FILE...` prints one object:
//!
//! ```text
//! {
//!   "sites": [ {
//!     "file": string,            input file
//!     "member": string | null,   archive member
//!     "section": string,         section name
//!     "offset": int,             offset of the instruction's first byte in the section
//!     "address": int,            its virtual address; == offset for relocatable inputs
//!     "length": int,             instruction length (0 if undecodable)
//!     "symbol": string,          requested symbol referred to
//!     "addend": int,             byte offset into the symbol the instruction refers to
//!     "form": string,            call_rip | call_abs32 | jmp_rip | call_rel32 | jmp_rel32 |
//!                                load | store | address | other | undecodable
//!     "patchable": bool,         form is one of the first five
//!     "op": int | null,          addend / 8 for call_rip, call_abs32, jmp_rip
//!     "bytes": string,           instruction bytes, lower-case hex
//!     "reloc_offset": int,       offset of the relocated field in the section
//!     "reloc_type": string       e.g. "R_X86_64_PC32"
//!   } ... ],
//!   "summary": { "sites": int, "patchable": int, "not_patchable": int,
//!                "by_form": { form: int, ... } }
//! }
//! ```
//!
//! For a PC-relative relocation (`R_X86_64_PC32`, `PLT32`, `GOTPCREL`...) the field holds
//! `S + A - P`, so the offset into the symbol is `A + (end of instruction - field)`:
//! `call *pv_ops+16(%rip)` has `A = 12` and `addend` 16. For an absolute one it is `A`.
//!
//! ## C code and `-fPIC`
//!
//! Without `-fPIC` (`-fno-pic`, or the toolchain's PIE default), `pv_ops.b(x)` is
//! `call *pv_ops+8(%rip)`: `call_rip`, op 1, patchable. With `-fPIC` it is a GOT load
//! (`mov pv_ops@GOTPCREL(%rip), %rax`, reported as `load` with addend 0) followed by
//! `call *8(%rax)`, which has no relocation: nothing to patch.
//!
//! ## Linking the table
//!
//! Pass the emitted object to the linker directly: objects on the command line are always
//! linked, while an archive member that defines nothing referenced is dropped. See [`emit`]
//! and [`build::LinkMode`].
//!
//! `alt-tablegen/README.md` describes the CLI, `emit`'s limits and the checks of `verify`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod apply;
pub mod build;
pub mod cpuspec;
pub mod effects;
pub mod emit;
pub mod inspect;
pub mod read;
pub mod scan;

pub use read::{Error, ErrorKind, Input, Location, Machine, Object, ObjectKind};
