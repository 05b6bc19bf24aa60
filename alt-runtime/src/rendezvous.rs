//! Stopping the other CPUs or threads while text is written.
//!
//! Rewriting code another CPU or thread may be executing is not safe: it could run half of the
//! old bytes and half of the new. Kernels patch at boot before other CPUs run, or stop them
//! first (Linux's and Xen's `stop_machine`: every CPU spins in a known place while one writes).
//! The [driver](crate::driver) asks a [`Rendezvous`] to stop everyone else right before the
//! first byte changes and to release them right after the writing CPU synchronised; each
//! released CPU or thread must synchronise its own instruction stream
//! ([`crate::isa::Isa::sync_cpu`]) before it runs patched code.
//!
//! - [`Alone`]: nothing else runs (early boot, one CPU, or a caller that knows).
//! - A kernel's own (the test kernel's CPUs spin at a rendezvous in code that holds no site).
//! - Hosted Linux: `process` stops the process's other threads with a signal.

use core::fmt;

pub use crate::memory::Spans;

/// Why the others could not be stopped. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RendezvousError {
    /// What went wrong.
    pub reason: &'static str,
    /// The thread or CPU concerned, if one is.
    pub who: Option<u64>,
    /// An address concerned (an instruction pointer inside a site), if one is.
    pub addr: Option<u64>,
    /// The operating system's error number, where there is one.
    pub os_error: Option<i32>,
}

impl RendezvousError {
    /// An error with only a reason.
    pub const fn new(reason: &'static str) -> Self {
        Self {
            reason,
            who: None,
            addr: None,
            os_error: None,
        }
    }
}

impl fmt::Display for RendezvousError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)?;
        if let Some(who) = self.who {
            write!(f, " (thread {who})")?;
        }
        if let Some(addr) = self.addr {
            write!(f, " at {addr:#x}")?;
        }
        if let Some(e) = self.os_error {
            write!(f, " (os error {e})")?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RendezvousError {}

/// Stops and releases everyone else around a batch of writes.
///
/// # Safety
///
/// An implementation promises what [`Rendezvous::stop`] says: when it returns `Ok`, no other
/// CPU or thread executes the text, or is strictly inside one of the sites, until
/// [`Rendezvous::release`]; and each synchronises its instruction stream before it next runs
/// patched code. The driver writes text on that promise.
pub unsafe trait Rendezvous {
    /// Stops every other CPU or thread that could run the text, each at a point that is not
    /// strictly inside one of `sites` (the ranges about to be rewritten; a site's first byte is
    /// a fine place to wait). On error no one is left stopped.
    fn stop(&mut self, sites: &dyn Spans) -> Result<(), RendezvousError>;

    /// Lets the others run again. Each must synchronise its instruction stream before it runs
    /// patched code. Called once after every successful [`Rendezvous::stop`].
    fn release(&mut self);
}

/// Nothing else runs: the caller guarantees that no other CPU or thread executes or writes the
/// text while it is patched, and that each synchronises before it next runs patched code.
#[derive(Clone, Copy, Debug, Default)]
pub struct Alone(());

impl Alone {
    /// A rendezvous with no one to stop.
    ///
    /// # Safety
    ///
    /// No other CPU or thread may execute the text being written while a batch is written
    /// (or be inside one of its sites), and each must synchronise its instruction stream
    /// before it next runs patched code.
    pub const unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: `Alone::new`'s contract: there is no one else.
unsafe impl Rendezvous for Alone {
    fn stop(&mut self, _sites: &dyn Spans) -> Result<(), RendezvousError> {
        Ok(())
    }

    fn release(&mut self) {}
}

// SAFETY: forwards to `R`, which keeps the promise.
unsafe impl<R: Rendezvous + ?Sized> Rendezvous for &mut R {
    fn stop(&mut self, sites: &dyn Spans) -> Result<(), RendezvousError> {
        (**self).stop(sites)
    }

    fn release(&mut self) {
        (**self).release()
    }
}
