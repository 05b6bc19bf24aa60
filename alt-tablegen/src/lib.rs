//! alt-tablegen: build-time table generator and inspector for alt.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod build;
pub mod emit;
pub mod inspect;
pub mod read;
pub mod scan;

pub use read::{Error, ErrorKind, Input, Location, Object, ObjectKind};
