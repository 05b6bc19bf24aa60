//! Carrying out a plan, and reverting it.
//!
//! [`apply`] first re-reads every site that will change and refuses, writing nothing, if any
//! site no longer holds the bytes the plan was made from (expected bytes). It then hands all
//! changes to the [`Writer`] in one batch, reads them back, and returns a [`Patched`] record that
//! holds the report and the original bytes. [`Patched::revert`] checks that every site still
//! holds what was written, then restores the originals exactly.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::plan::{MemoryError, Plan};
use crate::report::{Report, SiteReport};
use crate::writer::{Chunk, WriteError, WriteStats, Writer};

/// Why patching or reverting stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// A site does not hold the bytes expected (the original when patching, what was written
    /// when reverting). Nothing was written.
    UnexpectedBytes {
        /// Address of the site.
        addr: u64,
        /// The bytes expected.
        expected: Vec<u8>,
        /// The bytes found.
        found: Vec<u8>,
    },
    /// A site could not be read. Nothing was written.
    Memory(MemoryError),
    /// The writer failed.
    Write(WriteError),
    /// A site did not read back as written.
    ReadBack {
        /// Address of the site.
        addr: u64,
    },
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::UnexpectedBytes {
                addr,
                expected,
                found,
            } => write!(
                f,
                "site at {addr:#x} holds unexpected bytes (expected {}, found {}); nothing written",
                crate::report::Hex(expected),
                crate::report::Hex(found)
            ),
            PatchError::Memory(e) => write!(f, "{e}; nothing written"),
            PatchError::Write(e) => write!(f, "{e}"),
            PatchError::ReadBack { addr } => {
                write!(f, "site at {addr:#x} did not read back as written")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PatchError {}

/// Sites as patched: what each held before and what was written, and the report.
#[derive(Clone, Debug)]
pub struct Patched {
    report: Report,
}

impl Patched {
    /// What was done.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Mutable access to the report, to attach names or timing.
    pub fn report_mut(&mut self) -> &mut Report {
        &mut self.report
    }

    /// Restores every changed site to its original bytes.
    ///
    /// Every site must still hold what was written; otherwise nothing is written and the error
    /// names the site, and `self` is handed back so that the caller keeps the originals.
    pub fn revert<W: Writer>(self, writer: &mut W) -> Result<WriteStats, (Self, PatchError)> {
        let changed: Vec<&SiteReport> = self.report.sites.iter().filter(|s| s.changed()).collect();
        if let Err(e) = check_bytes(writer, changed.iter().map(|s| (s.addr, &s.after[..]))) {
            return Err((self, e));
        }
        let chunks: Vec<Chunk<'_>> = changed
            .iter()
            .map(|s| Chunk {
                addr: s.addr,
                bytes: &s.before,
            })
            .collect();
        let stats = match writer.write(&chunks) {
            Ok(s) => s,
            Err(e) => return Err((self, PatchError::Write(e))),
        };
        if let Err(e) = read_back(writer, &chunks) {
            return Err((self, e));
        }
        Ok(stats)
    }
}

/// Carries out a plan through a writer.
pub fn apply<W: Writer>(plan: Plan, writer: &mut W) -> Result<Patched, PatchError> {
    let changed = plan.sites.iter().filter(|s| s.new != s.original);
    check_bytes(writer, changed.map(|s| (s.addr, &s.original[..])))?;
    let chunks: Vec<Chunk<'_>> = plan
        .sites
        .iter()
        .filter(|s| s.new != s.original)
        .map(|s| Chunk {
            addr: s.addr,
            bytes: &s.new,
        })
        .collect();
    let stats = writer.write(&chunks).map_err(PatchError::Write)?;
    read_back(writer, &chunks)?;
    Ok(Patched {
        report: Report::from_plan(plan, stats),
    })
}

fn check_bytes<'a, W: Writer>(
    writer: &W,
    sites: impl Iterator<Item = (u64, &'a [u8])>,
) -> Result<(), PatchError> {
    for (addr, expected) in sites {
        let mut found = vec![0; expected.len()];
        writer.read(addr, &mut found).map_err(PatchError::Memory)?;
        if found != expected {
            return Err(PatchError::UnexpectedBytes {
                addr,
                expected: expected.to_vec(),
                found,
            });
        }
    }
    Ok(())
}

fn read_back<W: Writer>(writer: &W, chunks: &[Chunk<'_>]) -> Result<(), PatchError> {
    for c in chunks {
        let mut found = vec![0; c.bytes.len()];
        writer
            .read(c.addr, &mut found)
            .map_err(PatchError::Memory)?;
        if found != c.bytes {
            return Err(PatchError::ReadBack { addr: c.addr });
        }
    }
    Ok(())
}
