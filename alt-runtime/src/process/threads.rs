//! The hosted [`Rendezvous`]: [`Threads`].

use std::time::Instant;

use crate::os::rendezvous::{stop_other_threads, StopError, StopOptions, Stopped};
use crate::rendezvous::{Rendezvous, RendezvousError, Spans};

/// The hosted [`Rendezvous`]: every other thread of the process waits in a signal handler
/// ([`crate::os::rendezvous`]) while the driver writes a batch, none of them strictly inside a
/// site being rewritten; when the caller is the only thread, nothing is signalled at all.
///
/// Every function of [`crate::process`] uses it; a program that drives the
/// [driver](crate::driver) itself can too:
///
/// ```no_run
/// # fn demo(prepared: alt_runtime::driver::Prepared) -> Result<(), Box<dyn std::error::Error>> {
/// use alt_runtime::os::linux::MprotectWriter;
/// use alt_runtime::os::rendezvous::StopOptions;
/// use alt_runtime::process::Threads;
///
/// let mut threads = Threads::new(StopOptions::new());
/// let patched = prepared.apply(&mut MprotectWriter::new(), &mut threads)?;
/// println!("{:?}", threads.last()); // how long the others were stopped
/// # drop(patched); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Threads {
    options: StopOptions,
    stopped: Option<(Stopped, Instant)>,
    last: Option<StopRecord>,
}

/// What one stop and release cost, and whom they concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StopRecord {
    /// The caller was the only thread: nothing was signalled.
    pub alone: bool,
    /// How many threads were stopped.
    pub threads: usize,
    /// How many were left running because they block the signal (only with
    /// [`StopOptions::assume_blocking_threads_run_no_sites`]).
    pub skipped: usize,
    /// How many times the rendezvous was tried (more than 1 when a thread was inside a site).
    pub tries: u32,
    /// Nanoseconds from the call to every other thread waiting.
    pub stop_ns: u64,
    /// Nanoseconds the others waited while the batch was written.
    pub held_ns: u64,
    /// Nanoseconds the release took (`membarrier`, waking every thread).
    pub release_ns: u64,
}

impl Threads {
    /// A rendezvous with these options.
    pub fn new(options: StopOptions) -> Self {
        Self {
            options,
            stopped: None,
            last: None,
        }
    }

    /// The last complete stop and release, if any.
    pub fn last(&self) -> Option<StopRecord> {
        self.last
    }
}

// SAFETY: `stop` returns `Ok` only with a `Stopped` guard, under which every other thread of
// the process waits in the handler with its instruction pointer outside `sites` (or is left
// running under the caller's `assume_blocking_threads_run_no_sites` promise), or when the caller
// is the only thread; the guard's release makes every thread, the caller included, serialise
// before it runs on.
unsafe impl Rendezvous for Threads {
    fn stop(&mut self, sites: &dyn Spans) -> Result<(), RendezvousError> {
        // Dropping a guard left by a caller that did not release is the release.
        self.stopped = None;
        let start = Instant::now();
        let stopped = stop_other_threads(&self.options, sites).map_err(|e| refusal(&e))?;
        let now = Instant::now();
        self.last = Some(StopRecord {
            alone: stopped.alone(),
            threads: stopped.thread_count(),
            skipped: stopped.skipped_count(),
            tries: stopped.tries(),
            stop_ns: nanos(now - start),
            held_ns: 0,
            release_ns: 0,
        });
        self.stopped = Some((stopped, now));
        Ok(())
    }

    fn release(&mut self) {
        let Some((stopped, since)) = self.stopped.take() else {
            return;
        };
        let start = Instant::now();
        stopped.release();
        let end = Instant::now();
        if let Some(last) = &mut self.last {
            last.held_ns = nanos(start - since);
            last.release_ns = nanos(end - start);
        }
    }
}

fn nanos(d: core::time::Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// A refusal of the rendezvous, in the terms of the API users call ([`super::PatchOptions`]).
pub(crate) fn refusal(e: &StopError) -> RendezvousError {
    let reason = match e {
        StopError::Busy => {
            "another thread is patching this object right now, or this is a re-entrant call"
        }
        StopError::InvalidSignal { .. } => {
            "the signal given with PatchOptions::signal is not a real-time signal"
        }
        StopError::ForeignHandler { .. } => {
            "the signal given with PatchOptions::signal has a handler of the program's (or is \
             ignored); choose a free real-time signal"
        }
        StopError::NoFreeSignal => {
            "no free real-time signal to stop the other threads with (SIGRTMAX-3 down to \
             SIGRTMIN+4 all have handlers, are ignored or are blocked in this thread); free one \
             and name it with PatchOptions::signal"
        }
        StopError::BlocksSignal { .. } => {
            "a thread keeps the rendezvous signal blocked, so it cannot be stopped; unblock it \
             there or choose another signal with PatchOptions::signal, or, if that thread never \
             runs a site (qemu-user's helper thread), say so with the unsafe \
             PatchOptions::assume_blocking_threads_run_no_sites"
        }
        StopError::Timeout { .. } => {
            "a thread did not stop in time (stopped by a debugger, waiting in vfork, or, under \
             qemu-user, blocking the rendezvous signal)"
        }
        StopError::InsideForbidden { .. } => {
            "a thread was inside a site being rewritten on every try"
        }
        StopError::Unstable { .. } => "threads kept being created while they were being stopped",
        StopError::TooManyThreads { .. } => "too many threads to stop",
        StopError::Os { .. } => "a system call failed while stopping the other threads",
    };
    let mut r = RendezvousError::new(reason);
    match *e {
        StopError::BlocksSignal { tid, .. } | StopError::Timeout { tid, .. } => {
            r.who = Some(tid as u64)
        }
        StopError::InsideForbidden { tid, ip, .. } => {
            r.who = Some(tid as u64);
            r.addr = Some(ip);
        }
        StopError::Os { errno, .. } => r.os_error = Some(errno),
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_options_users_call_and_the_thread() {
        let e = refusal(&StopError::BlocksSignal {
            tid: 4321,
            signal: 61,
        });
        let text = alloc::format!("{e}");
        assert!(
            text.contains("PatchOptions::assume_blocking_threads_run_no_sites"),
            "{text}"
        );
        assert!(text.ends_with("(thread 4321)"), "{text}");
        assert!(!text.contains("StopOptions"), "{text}");
        let e = refusal(&StopError::InsideForbidden {
            tid: 7,
            ip: 0x1234,
            tries: 16,
        });
        assert_eq!(
            alloc::format!("{e}"),
            "a thread was inside a site being rewritten on every try (thread 7) at 0x1234"
        );
    }

    #[test]
    fn a_lone_thread_is_not_signalled() {
        // The unit-test harness runs tests on threads: only a child process is alone.
        // SAFETY: fork in a test; the child calls only async-signal-safe code before _exit...
        // except the rendezvous itself, which allocates nothing on the fast path.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut t = Threads::new(StopOptions::new());
            let site = 0..1;
            let ok = t.stop(&[site]).is_ok();
            t.release();
            let last = t.last().unwrap_or_default();
            let code = if ok
                && last.alone
                && last.threads == 0
                && crate::os::rendezvous::chosen_signal().is_none()
            {
                0
            } else {
                1
            };
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
    }
}
