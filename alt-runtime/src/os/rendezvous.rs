//! Stopping every other thread of this process at a known point, so that one thread can rewrite
//! code the others may run: the hosted form of the kernels' `stop_machine`.
//!
//! ```no_run
//! use alt_runtime::os::rendezvous::{stop_other_threads, StopOptions};
//!
//! let sites = [0x40_1000u64..0x40_1005];
//! // Prepare everything before: while the others are stopped, take no lock another thread may
//! // hold (no allocation, no stdio).
//! let stopped = stop_other_threads(&StopOptions::new(), &sites)?;
//! // Every other thread waits in a signal handler, none with its instruction pointer in `sites`.
//! // ... write the sites here ...
//! stopped.release(); // (also on drop) each thread serialises before it runs on
//! # Ok::<(), alt_runtime::os::rendezvous::StopError>(())
//! ```
//!
//! # How
//!
//! 1. The calling thread takes the process-wide rendezvous (a second call while one is in
//!    progress, or while a [`Stopped`] guard lives, gets [`StopError::Busy`]) and blocks every
//!    signal but the synchronous ones until the guard is dropped. If it is the only thread of
//!    the process, that is all: nothing is signalled ([`Stopped::alone`]). Otherwise it takes
//!    the signal the options name, or the first free one from [`default_signal`]
//!    (`SIGRTMAX - 3`) down (no handler but ours, not blocked by the caller; each copy of the
//!    runtime in a process takes its own, [`chosen_signal`]), installs its handler once (it
//!    stays installed), and registers for
//!    `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` once where the kernel has it.
//!    Everything that may allocate happens here, before any thread is stopped.
//! 2. It lists `/proc/self/task` and sends every thread but itself the signal with
//!    `rt_tgsigqueueinfo`, carrying the attempt's generation and the thread's slot.
//! 3. The handler records the interrupted instruction pointer in its slot (one compare-and-swap
//!    on the slot's word, which only succeeds for the current generation: a signal left over
//!    from an earlier attempt does nothing), counts itself in, and waits on a futex. It uses only
//!    atomics and raw system calls, and saves and restores `errno`.
//! 4. The caller waits on a futex for the arrivals, bounded by [`StopOptions::timeout`]. A
//!    thread that has not arrived after 1 ms has its `/proc/self/task/TID/status` read: a zombie
//!    is dropped (it runs nothing); one whose `SigBlk` holds the signal is watched, and refused
//!    with [`StopError::BlocksSignal`] once it has been asleep with it blocked for 10 ms (a
//!    runnable one may just not have been scheduled yet, and is decided at the deadline).
//!    Blocking every signal including the C library's own (32 up to `SIGRTMIN`) is the C
//!    library creating a thread or spawning a process, for a moment: not a refusal. A thread
//!    still on its way out of the handler of the previous attempt is not asked either.
//! 5. It lists `/proc/self/task` again and stops any thread created meanwhile, until a listing
//!    shows no thread it has not stopped and has as many entries as the kernel's thread count
//!    read before it (a listing can end early when a thread exits during it). Once every listed
//!    thread waits in the handler, nothing is left that could create one.
//! 6. It checks each stopped thread's instruction pointer against the forbidden ranges. A thread
//!    inside one is told to leave the handler and run on (the others stay stopped), is signalled
//!    again a moment later (10 us, doubling up to 1.28 ms), and checked again; threads it created
//!    meanwhile are stopped too. After 8 looks everyone is released for a moment (the thread may
//!    wait for one that was stopped) and the whole rendezvous starts again; up to
//!    [`StopOptions::max_tries`] looks in all ([`StopError::InsideForbidden`]). Only releasing
//!    everyone and starting over would not do: a long instruction at a site's start (`rdtsc`,
//!    an interrupted `rep movsb`) is where a thread calling the site in a loop is most often
//!    interrupted, try after try.
//! 7. [`Stopped::release`] calls `membarrier(..SYNC_CORE)` if registered, serialises the caller
//!    (also a caller that was alone), and wakes everyone; each handler executes a serialising
//!    instruction ([`crate::x86_64::serialize`]) after it sees
//!    the release and before it returns. Returning from a signal handler is not enough by itself:
//!    x86-64 Linux returns to user space with `sysret` when the restored registers allow it (a
//!    thread stopped in a system call has `rcx == rip`, `r11 == rflags`), and `sysret` is not
//!    serialising.
//!
//! Any failure releases every thread that was stopped before it returns: no thread is left
//! stopped, and the caller writes nothing because it has no guard.
//!
//! # What a program must allow
//!
//! - A signal must be free: one from `SIGRTMAX - 3` down to `SIGRTMIN + 4` with no handler of
//!   the program's own, not ignored, not blocked by the caller; or name one with
//!   [`StopOptions::signal`] (a real-time signal; the two highest cannot be delivered under
//!   qemu-user 7.2).
//! - Its threads must not keep the signal blocked (a moment is fine); a thread that does is named.
//! - Interrupted system calls: the handler is installed with `SA_RESTART`, but the calls that
//!   `signal(7)` lists as never restarted (`poll`, `epoll_wait`, `select`, `nanosleep`, ...) return
//!   `EINTR` in a thread that was stopped, as they do under any signal.
//! - The caller must not create threads while it holds a [`Stopped`] guard, must not forget the
//!   guard (`mem::forget` leaves every other thread waiting forever), and must call from ordinary
//!   code, not from a signal handler.
//!
//! # qemu-user
//!
//! Under `qemu-x86_64`, `/proc/self/task` also lists qemu's own helper thread (its RCU thread).
//! It is a host thread that never runs guest code and blocks every signal for its whole life:
//! `SigBlk` shows `fffffffe7ffbfa77` (all but `SIGILL`, `SIGFPE`, `SIGSEGV`, `SIGKILL`, `SIGSTOP`
//! and glibc's two internal signals), `comm` and `Name` are `qemu-x86_64` like every other
//! thread's, and `stat` holds nothing that tells it apart. No reliable test separates it from a
//! program thread that blocks every signal (worker threads of many libraries do), nor from a
//! guest thread for which qemu blocks every host signal while it creates a thread. So it is not
//! guessed: the rendezvous refuses it like any thread that blocks the signal (after 10 ms: it
//! sleeps with every real-time signal blocked), and a program that knows better says so with
//! the `unsafe` [`StopOptions::assume_blocking_threads_run_no_sites`], which leaves it running
//! once it has kept the signal blocked for the whole timeout (and, in later calls, at once if
//! it still blocks it). Not earlier: under qemu a guest thread creating a thread shows the same
//! mask as the helper and sleeps while it waits for its child. Also under qemu, `SigBlk` shows the host's
//! numbering of the signals (qemu 7.2 delivers guest signal 61 as host signal 63), so a guest
//! thread that blocks the signal is not seen as such; it is named when the timeout expires
//! ([`StopError::Timeout`]).
//!
//! # Limits
//!
//! Only the innermost interrupted instruction pointer is checked. A thread that had been
//! interrupted inside a site by another signal, and is running that signal's handler when it is
//! stopped, resumes inside the site when that handler returns; so do return addresses, which is
//! why a site's return address must be an instruction boundary in every variant. A thread blocked
//! in `vfork` (until its child execs or exits) takes no signal and is reported by the timeout.
//!
//! See `docs/threads.md` for the design and what it learnt from Linux and Xen.

use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;

use crate::memory::Spans;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};
use core::time::Duration;
use std::boxed::Box;
use std::time::Instant;
use std::vec::Vec;

/// The first signal tried unless [`StopOptions::signal`] names one: `SIGRTMAX - 3`.
///
/// glibc keeps the lowest real-time signals for itself, programs that use real-time signals
/// usually count up from `SIGRTMIN`, and qemu-user 7.2 cannot deliver `SIGRTMAX` or
/// `SIGRTMAX - 1`. If it is taken (a handler of the program's, `SIG_IGN`, another copy of the
/// runtime in the same process, or blocked in the calling thread), the next lower one is tried,
/// down to `SIGRTMIN + 4` ([`chosen_signal`] says which one this copy uses).
pub fn default_signal() -> i32 {
    libc::SIGRTMAX() - 3
}

/// The signal this copy of the runtime chose for its rendezvous when the options name none
/// (`None` until a rendezvous with other threads needed one). Each copy of the runtime in a
/// process (an executable and a `cdylib` each link their own) has its own handler on its own
/// signal.
pub fn chosen_signal() -> Option<i32> {
    match CHOSEN.load(Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// The lowest signal [`default_signal`]'s search goes down to: `SIGRTMIN + 4`.
fn lowest_candidate() -> i32 {
    libc::SIGRTMIN() + 4
}

/// How a rendezvous waits and which signal it uses.
#[derive(Clone, Debug)]
pub struct StopOptions {
    signal: Option<i32>,
    timeout: Duration,
    max_tries: u32,
    skip_blocking: bool,
}

impl Default for StopOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl StopOptions {
    /// How long a signalled thread may take to arrive, by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// How many times the stopped threads are looked at when one is inside a forbidden range
    /// (each time, those inside run on for a moment and are stopped again).
    pub const DEFAULT_MAX_TRIES: u32 = 100;

    /// The first free signal, a one-second timeout, 100 tries, blocking threads refused.
    pub fn new() -> Self {
        Self {
            signal: None,
            timeout: Self::DEFAULT_TIMEOUT,
            max_tries: Self::DEFAULT_MAX_TRIES,
            skip_blocking: false,
        }
    }

    /// Uses `signal` (a real-time signal, `SIGRTMIN()..=SIGRTMAX()`) instead of the first free
    /// one from [`default_signal`] down; a handler of the program's on it is then an error
    /// ([`StopError::ForeignHandler`]).
    pub fn signal(mut self, signal: i32) -> Self {
        self.signal = Some(signal);
        self
    }

    /// How long each signalled thread may take to arrive before the call fails with
    /// [`StopError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times the stopped threads are looked at while some thread is stopped inside a
    /// forbidden range (at least once): each time, the threads inside are let run on for a
    /// moment (10 us, doubling up to 1.28 ms; the others stay stopped) and stopped again.
    pub fn max_tries(mut self, tries: u32) -> Self {
        self.max_tries = tries.max(1);
        self
    }

    /// Leaves running, instead of refusing, every thread that keeps the signal blocked for the
    /// whole timeout (its `SigBlk` holds it, or every real-time signal, at every look); in later
    /// calls such a thread is left running at once if it still blocks the signal.
    /// [`Stopped::skipped_count`] says how many were left running. The first call waits the
    /// whole timeout for each such thread.
    ///
    /// This exists for qemu-user, whose helper thread blocks every signal and never runs guest
    /// code (see the module documentation).
    ///
    /// # Safety
    ///
    /// No thread that blocks the signal may run, or be about to run, code in the forbidden
    /// ranges or code the caller rewrites while it holds the [`Stopped`] guard, nor create a
    /// thread that does.
    pub unsafe fn assume_blocking_threads_run_no_sites(mut self) -> Self {
        self.skip_blocking = true;
        self
    }

    /// The signal given with [`StopOptions::signal`], if any (otherwise a free one is chosen,
    /// see [`chosen_signal`]).
    pub fn signal_number(&self) -> Option<i32> {
        self.signal
    }
}

/// Why the other threads could not be stopped. No thread is left stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopError {
    /// A rendezvous is already in progress in this process (a re-entrant call, or one while a
    /// [`Stopped`] guard lives).
    Busy,
    /// The signal is not a real-time signal the program may use.
    InvalidSignal {
        /// The signal number.
        signal: i32,
    },
    /// The program has its own handler for the signal, or ignores it.
    ForeignHandler {
        /// The signal number.
        signal: i32,
    },
    /// No signal was named and every candidate (from [`default_signal`] down to
    /// `SIGRTMIN + 4`) has a handler that is not this copy's, is ignored, or is blocked in the
    /// calling thread.
    NoFreeSignal,
    /// The thread keeps the signal blocked, so it cannot be stopped.
    BlocksSignal {
        /// Its thread id.
        tid: i32,
        /// The signal number.
        signal: i32,
    },
    /// The thread was sent the signal but did not arrive in time.
    Timeout {
        /// Its thread id.
        tid: i32,
        /// The signal number.
        signal: i32,
        /// How long it was waited for.
        timeout: Duration,
        /// Its state letter from `/proc/self/task/TID/status` at the deadline (`R`, `S`, `D`,
        /// `T`, `t`, ...), or `?` if it could not be read.
        state: char,
    },
    /// A thread was stopped inside a forbidden range on every try.
    InsideForbidden {
        /// Its thread id (at the last try).
        tid: i32,
        /// Its instruction pointer (at the last try).
        ip: u64,
        /// How many times the rendezvous was tried.
        tries: u32,
    },
    /// Threads kept appearing: `/proc/self/task` showed new threads on every listing.
    Unstable {
        /// How many times it was listed.
        listings: u32,
    },
    /// More threads than a rendezvous can track (2^24).
    TooManyThreads {
        /// How many slots were needed.
        count: usize,
    },
    /// A system call failed.
    Os {
        /// What was called.
        call: &'static str,
        /// `errno`.
        errno: i32,
    },
}

/// `SIGRTMAX-3` for the signal numbers near the top, or the plain number.
struct SignalName(i32);

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let below = libc::SIGRTMAX() - self.0;
        if (0..=8).contains(&below) {
            write!(f, "signal {} (SIGRTMAX-{below})", self.0)
        } else {
            write!(f, "signal {}", self.0)
        }
    }
}

impl fmt::Display for StopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Busy => f.write_str(
                "a thread rendezvous is already in progress in this process (re-entrant call, \
                 or one while a Stopped guard lives)",
            ),
            Self::InvalidSignal { signal } => write!(
                f,
                "{} is not a real-time signal (SIGRTMIN()..=SIGRTMAX()) that the rendezvous may use",
                SignalName(signal)
            ),
            Self::ForeignHandler { signal } => write!(
                f,
                "{} already has a handler (or is ignored) that is not the rendezvous's: the \
                 program uses it; choose another signal with StopOptions::signal",
                SignalName(signal)
            ),
            Self::NoFreeSignal => f.write_str(
                "no free real-time signal for the rendezvous: SIGRTMAX-3 down to SIGRTMIN+4 all \
                 have handlers of their own, are ignored or are blocked in this thread; free one \
                 or choose one with StopOptions::signal",
            ),
            Self::BlocksSignal { tid, signal } => write!(
                f,
                "thread {tid} blocks {}, so it cannot be stopped to rewrite code; unblock the \
                 signal in that thread or choose another with StopOptions::signal; no thread was \
                 left stopped",
                SignalName(signal)
            ),
            Self::Timeout {
                tid,
                signal,
                timeout,
                state,
            } => write!(
                f,
                "thread {tid} did not stop within {} ms of being sent {} (state {state}); no \
                 thread was left stopped",
                timeout.as_millis(),
                SignalName(signal)
            ),
            Self::InsideForbidden { tid, ip, tries } => write!(
                f,
                "thread {tid} was stopped at {ip:#x}, inside code being rewritten, at the last of \
                 {tries} tries (a thread stopped inside is let run on and stopped again); no \
                 thread was left stopped"
            ),
            Self::Unstable { listings } => write!(
                f,
                "threads kept appearing: /proc/self/task showed new threads on each of {listings} \
                 listings"
            ),
            Self::TooManyThreads { count } => {
                write!(f, "{count} threads are more than a rendezvous can track")
            }
            Self::Os { call, errno } => write!(
                f,
                "{call} failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

impl std::error::Error for StopError {}

/// A thread that waits in the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoppedThread {
    /// Its thread id.
    pub tid: i32,
    /// Where it was interrupted, and where it will resume.
    pub ip: u64,
}

/// Every other thread of the process waits in the signal handler while this lives. Dropping it
/// releases them, as [`release`](Self::release) does.
///
/// It is neither `Send` nor `Sync`: the thread that stopped the others releases them.
#[must_use = "dropping the guard releases the threads at once"]
pub struct Stopped {
    gen: u64,
    /// `None`: the caller was the only thread; nobody was signalled.
    arena: Option<&'static Arena>,
    used: usize,
    skipped: usize,
    tries: u32,
    listings: u32,
    // Dropped after `Drop::drop` has released the threads, in this order: the caller takes
    // signals again only once the others run.
    _busy: BusyGuard,
    _mask: CallerMask,
    _not_send: PhantomData<*mut ()>,
}

impl Stopped {
    /// Releases every stopped thread. Each executes a serialising instruction before it runs
    /// on, after `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` where the kernel has it,
    /// and so does the caller (also one that was [`alone`](Self::alone)).
    pub fn release(self) {
        drop(self);
    }

    /// The stopped threads, in the order they were stopped. Allocates nothing.
    pub fn threads(&self) -> impl Iterator<Item = StoppedThread> + '_ {
        let slots = self.arena.map_or(&[][..], |a| &a.slots[..self.used]);
        slots.iter().filter_map(|slot| {
            let word = slot.word.load(Acquire);
            (word & ARRIVED != 0).then(|| StoppedThread {
                tid: slot.tid.load(Relaxed),
                ip: word & !ARRIVED,
            })
        })
    }

    /// How many threads are stopped.
    pub fn thread_count(&self) -> usize {
        self.threads().count()
    }

    /// How many threads were left running because they block the signal (only with
    /// [`StopOptions::assume_blocking_threads_run_no_sites`]).
    pub fn skipped_count(&self) -> usize {
        self.skipped
    }

    /// How many times the stopped threads were looked at (more than 1 when a thread was inside
    /// a forbidden range and was let run on).
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// How many times `/proc/self/task` was listed in the successful try (more than 2 when
    /// threads were created during the rendezvous).
    pub fn listings(&self) -> u32 {
        self.listings
    }

    /// Whether the caller was the only thread of the process: nothing was signalled and no
    /// handler installed (the fast path).
    pub fn alone(&self) -> bool {
        self.arena.is_none()
    }
}

impl fmt::Debug for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopped")
            .field("threads", &self.thread_count())
            .field("skipped", &self.skipped)
            .field("tries", &self.tries)
            .field("listings", &self.listings)
            .field("alone", &self.alone())
            .finish()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        match self.arena {
            Some(arena) => release(arena, self.used, self.gen, true),
            // Alone: nobody to wake; the caller still serialises (an `iretq`, 0.04 us).
            None => arch::serialize_instruction_stream(),
        }
    }
}

/// Installs the handler for the options' signal and registers for
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, as the first
/// [`stop_other_threads`] would. Registering is slow in a process that already has threads (the
/// kernel waits for an RCU grace period), so call this early, while the process has one thread,
/// if the first stop should be quick.
pub fn prepare(options: &StopOptions) -> Result<(), StopError> {
    let _busy = BusyGuard::take()?;
    let mask = CallerMask::query()?;
    signal_for(options, &mask)?;
    membarrier_registered();
    Ok(())
}

/// Whether releases use `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` (registering
/// for it on first use). Without it, the serialising instruction in each handler is all.
pub fn membarrier_sync_core() -> bool {
    membarrier_registered()
}

/// Stops every other thread of the process in a signal handler, with none of them stopped at an
/// instruction pointer inside `forbidden`, and returns the guard that releases them.
///
/// The calling thread is never stopped; it blocks every signal but the synchronous ones
/// (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGTRAP`) until the guard is dropped, so that no
/// handler of the program's runs a site while it is written and no other copy of the runtime
/// stops it while it holds the others. When it is the only thread of the process, nothing is
/// signalled and no handler is installed ([`Stopped::alone`]). See the module documentation for
/// how it works, what a program must allow, and how it fails.
pub fn stop_other_threads<S: Spans + ?Sized>(
    options: &StopOptions,
    forbidden: &S,
) -> Result<Stopped, StopError> {
    let busy = BusyGuard::take()?;
    let mask = CallerMask::block_all()?;
    // The C library's word first (one load, no system call: what every program pays at
    // start-up); else the kernel's count, which a listing cut short cannot fool; the listing
    // where it is unreadable.
    let alone = c_library_single_threaded()
        || match threads_in_group() {
            Some(n) => n <= 1,
            None => count_threads()? <= 1,
        };
    if alone {
        // Nobody else can run, or create a thread: this one is busy here.
        membarrier_registered(); // cheap now, slow once threads exist
        return Ok(Stopped {
            gen: 0,
            arena: None,
            used: 0,
            skipped: 0,
            tries: 1,
            listings: 1,
            _busy: busy,
            _mask: mask,
            _not_send: PhantomData,
        });
    }
    let signal = signal_for(options, &mask)?;
    membarrier_registered();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    OWNER_PID.store(pid, Relaxed);
    start_generations();

    // Everything that allocates happens here, before any thread is stopped.
    let mut capacity = (count_threads()? * 2 + 16).max(64);
    let mut plan = Plan::new(capacity, signal, pid, options);
    let (mut tries, mut attempts) = (0, 0);
    loop {
        let gen = NEXT_GEN.fetch_add(1, Relaxed) & GEN_MASK;
        let _unwinding = ReleaseOnUnwind(gen);
        let budget = (options.max_tries - tries).min(LOOKS_PER_ATTEMPT);
        let stopped = plan
            .stop_all(gen)
            .and_then(|()| plan.move_out_of(gen, forbidden, budget));
        match stopped {
            Ok(looks) => {
                return Ok(Stopped {
                    gen,
                    arena: Some(plan.arena),
                    used: plan.used,
                    skipped: plan.skipped,
                    tries: tries + looks,
                    listings: plan.listings,
                    _busy: busy,
                    _mask: mask,
                    _not_send: PhantomData,
                })
            }
            Err(Failure::NeedCapacity) => {
                plan.release(gen, false);
                capacity *= 2;
                if capacity > 1 << INDEX_BITS {
                    return Err(StopError::TooManyThreads { count: capacity });
                }
                plan = Plan::new(capacity, signal, pid, options);
                continue;
            }
            Err(Failure::Inside { thread, looks }) => {
                plan.release(gen, false);
                tries += looks;
                if tries >= options.max_tries {
                    return Err(StopError::InsideForbidden {
                        tid: thread.tid,
                        ip: thread.ip,
                        tries,
                    });
                }
                // It may wait for a thread that was stopped: let everyone run for a moment.
                std::thread::sleep(Duration::from_micros(50u64 << attempts.min(6)));
                attempts += 1;
            }
            Err(Failure::Error(e)) => {
                plan.release(gen, false);
                return Err(e);
            }
        }
    }
}

/// How many times one attempt looks at the stopped threads, letting those inside a forbidden
/// range run on, before it releases everyone (a thread may not leave the range before a
/// stopped thread does something) and starts again.
const LOOKS_PER_ATTEMPT: u32 = 8;

// ---------------------------------------------------------------------------------------------
// Shared state between the caller and the handler: atomics only.

/// Taken by the caller for the whole rendezvous, from the first check to the release.
static BUSY: AtomicBool = AtomicBool::new(false);
/// The process id whose signals the handler accepts (set on every call: a forked child has its
/// own).
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
/// The slots; replaced by a larger one between attempts when threads outgrow it, never freed.
static ARENA: AtomicPtr<Arena> = AtomicPtr::new(core::ptr::null_mut());
/// The generation of the next attempt (each attempt has its own, so stale signals are ignored).
/// 0 until the first attempt, which starts it at an arbitrary value: another copy of the
/// runtime counts from elsewhere, so a signal of its that reached our handler (only possible
/// while both install a handler on the same signal at once) matches no slot of ours.
static NEXT_GEN: AtomicU64 = AtomicU64::new(0);
/// The signal this copy chose (0: none yet); see [`chosen_signal`].
static CHOSEN: AtomicI32 = AtomicI32::new(0);
/// Futex: the low 32 bits of the last released generation. Handlers of an attempt wait while it
/// is behind their generation.
static RELEASED: AtomicU32 = AtomicU32::new(0);
/// Futex: how many times a thread has arrived, ever. The caller waits on it for arrivals.
static ARRIVALS: AtomicU32 = AtomicU32::new(0);
/// Futex: bumped on every release and every kick. Handlers wait on it, and look again at
/// [`RELEASED`] and their slot each time it moves.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// The last released attempt (caller only, under [`BUSY`]): its arena, slots used, generation.
static LAST_ARENA: AtomicPtr<Arena> = AtomicPtr::new(core::ptr::null_mut());
static LAST_USED: AtomicUsize = AtomicUsize::new(0);
static LAST_GEN: AtomicU64 = AtomicU64::new(0);
/// `membarrier` registration: 0 not tried, 1 registered, 2 unavailable.
static MEMBARRIER: AtomicU8 = AtomicU8::new(0);
/// Threads refused or skipped for blocking the signal in an earlier call: asked first next
/// time, so that a thread that keeps it blocked is not sent one more signal per call.
static SUSPECTS: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];
/// Threads skipped (with `assume_blocking_threads_run_no_sites`) after blocking the signal for a
/// whole timeout: skipped at once if they still block it.
static SKIPPED: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];

fn remember(list: &[AtomicI32; 8], tid: i32) {
    if !list.iter().any(|t| t.load(Relaxed) == tid) {
        list[tid as usize % list.len()].store(tid, Relaxed);
    }
}

fn remembered(list: &[AtomicI32; 8], tid: i32) -> bool {
    list.iter().any(|t| t.load(Relaxed) == tid)
}

/// A slot's word: `SENT | generation` while a thread has been signalled and has not arrived,
/// `ARRIVED | ip` once it waits in the handler, `KICKED` once it was told to run on (it was
/// inside a forbidden range; it is signalled again in another slot), 0 when unused.
const SENT: u64 = 1 << 63;
const ARRIVED: u64 = 1 << 62;
const KICKED: u64 = 1 << 61;
/// The signal's value carries `generation << INDEX_BITS | slot`.
const INDEX_BITS: u32 = 24;
const GEN_MASK: u64 = (1 << 40) - 1;

/// How long a thread may sleep with the signal blocked before it is refused (or skipped): a
/// thread inside another signal handler blocks it for a moment.
const BLOCKED_GRACE: Duration = Duration::from_millis(10);
/// How often the caller wakes while it waits, to notice threads that exited.
const WAIT_SLICE: Duration = Duration::from_millis(1);
/// How often it looks again at threads that block the signal.
const BLOCKED_POLL: Duration = Duration::from_micros(200);
/// How long a signalled thread may take before its status is read (to find zombies and
/// threads that block the signal well before the timeout).
const PROBE_AFTER: Duration = Duration::from_millis(1);
/// How many listings of `/proc/self/task` one attempt may need.
const MAX_LISTINGS: u32 = 64;

struct Slot {
    word: AtomicU64,
    tid: AtomicI32,
    /// The generation in which the slot's thread last left the handler.
    left: AtomicU64,
}

struct Arena {
    slots: Box<[Slot]>,
}

/// Releases the threads of an attempt if the caller unwinds in the middle of it (nothing in it
/// is meant to panic; a stuck process would be the price).
struct ReleaseOnUnwind(u64);

impl Drop for ReleaseOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            RELEASED.store(self.0 as u32, Release);
            wake_handlers();
        }
    }
}

/// Releases the rendezvous flag when dropped.
struct BusyGuard(());

impl BusyGuard {
    fn take() -> Result<Self, StopError> {
        BUSY.compare_exchange(false, true, Acquire, Relaxed)
            .map(|_| Self(()))
            .map_err(|_| StopError::Busy)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        BUSY.store(false, Release);
    }
}

/// An arena with at least `capacity` slots: the current one, or a new one (leaked on purpose:
/// a late handler may still read the one it replaces).
fn arena_with(capacity: usize) -> &'static Arena {
    let current = ARENA.load(Acquire);
    // SAFETY: arenas are leaked, never freed, so the pointer stays valid.
    if let Some(arena) = unsafe { current.as_ref() } {
        if arena.slots.len() >= capacity {
            return arena;
        }
    }
    let slots = (0..capacity)
        .map(|_| Slot {
            word: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            left: AtomicU64::new(0),
        })
        .collect();
    let arena: &'static Arena = Box::leak(Box::new(Arena { slots }));
    ARENA.store(arena as *const Arena as *mut Arena, Release);
    arena
}

/// Starts the generations at an arbitrary value on first use (caller, under [`BUSY`]).
fn start_generations() {
    if NEXT_GEN.load(Relaxed) != 0 {
        return;
    }
    // This copy's own address and the time stamp: different in every copy and every run.
    let seed = (&NEXT_GEN as *const AtomicU64 as u64) ^ arch::timestamp().rotate_left(29);
    let start = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24) & GEN_MASK | 1;
    // Every handler compares with the last released generation: one behind the first.
    RELEASED.store(start.wrapping_sub(1) as u32, Release);
    NEXT_GEN.store(start, Relaxed);
}

/// The signal the options name, or this copy's chosen one, or the first free candidate; with
/// this copy's handler installed on it.
fn signal_for(options: &StopOptions, mask: &CallerMask) -> Result<i32, StopError> {
    if let Some(signal) = options.signal {
        if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) {
            return Err(StopError::InvalidSignal { signal });
        }
        install_handler(signal)?;
        return Ok(signal);
    }
    let chosen = CHOSEN.load(Relaxed);
    if chosen != 0 && handler_is_ours(chosen)? {
        return Ok(chosen);
    }
    for signal in (lowest_candidate()..=default_signal()).rev() {
        if mask.held_before(signal) {
            continue; // this thread blocks it: the program waits for it with sigwait, say
        }
        match install_handler(signal) {
            Ok(()) => {
                CHOSEN.store(signal, Relaxed);
                return Ok(signal);
            }
            Err(StopError::ForeignHandler { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StopError::NoFreeSignal)
}

/// The calling thread's signal mask while it stops the others: every signal blocked but the
/// synchronous ones; the mask it had is put back on drop.
struct CallerMask {
    before: libc::sigset_t,
    /// Whether this changed the mask (else it only read it).
    changed: bool,
}

impl CallerMask {
    fn block_all() -> Result<Self, StopError> {
        // SAFETY: local signal sets; changes only this thread's mask.
        unsafe {
            let mut all: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            for s in [
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGILL,
                libc::SIGFPE,
                libc::SIGTRAP,
            ] {
                libc::sigdelset(&mut all, s);
            }
            let mut before: libc::sigset_t = core::mem::zeroed();
            match libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut before) {
                0 => Ok(Self {
                    before,
                    changed: true,
                }),
                errno => Err(StopError::Os {
                    call: "pthread_sigmask",
                    errno,
                }),
            }
        }
    }

    fn query() -> Result<Self, StopError> {
        // SAFETY: a query of this thread's mask into a local set.
        unsafe {
            let mut before: libc::sigset_t = core::mem::zeroed();
            match libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut before) {
                0 => Ok(Self {
                    before,
                    changed: false,
                }),
                errno => Err(StopError::Os {
                    call: "pthread_sigmask",
                    errno,
                }),
            }
        }
    }

    /// Whether the thread blocked `signal` before the rendezvous.
    fn held_before(&self, signal: i32) -> bool {
        // SAFETY: a valid set.
        unsafe { libc::sigismember(&self.before, signal) == 1 }
    }
}

impl Drop for CallerMask {
    fn drop(&mut self) {
        if self.changed {
            // SAFETY: restores the mask this thread had.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &self.before, core::ptr::null_mut())
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The caller's side.

enum Failure {
    /// More threads than slots: grow (allocating) and try again.
    NeedCapacity,
    /// A thread was still inside a forbidden range at the last of `looks`.
    Inside {
        thread: StoppedThread,
        looks: u32,
    },
    Error(StopError),
}

impl From<StopError> for Failure {
    fn from(e: StopError) -> Self {
        Self::Error(e)
    }
}

/// One rendezvous's preallocated state: the slots, the thread ids seen, and the threads that
/// block the signal.
struct Plan {
    arena: &'static Arena,
    /// Every thread id listed in this attempt (and the caller's), sorted.
    known: Vec<i32>,
    /// Threads that arrived in the last attempt and had not left the handler when this one
    /// began, sorted: they block the signal only until they leave, and then take it at once.
    inside_before: Vec<i32>,
    /// Threads seen blocking the signal in this attempt.
    blocked: Vec<Blocked>,
    /// Threads told to run on out of a forbidden range, to be signalled again.
    rerun: Vec<i32>,
    used: usize,
    skipped: usize,
    listings: u32,
    signal: i32,
    /// `SigBlk` bits of the C library's own signals (32 up to `SIGRTMIN()`): a program cannot
    /// block them through the C library, which blocks them only for a moment of its own
    /// (creating a thread, `posix_spawn`).
    libc_internal: u64,
    pid: i32,
    uid: u32,
    me: i32,
    timeout: Duration,
    skip_blocking: bool,
}

/// A thread seen blocking the signal.
#[derive(Clone, Copy)]
struct Blocked {
    tid: i32,
    /// When it was first seen blocking it.
    since: Instant,
    /// The slot it was sent the signal in; `None`: not sent (it blocked it in an earlier call).
    slot: Option<usize>,
}

/// What the status file says about a thread.
enum Probe {
    /// It exited, or is a zombie: it runs nothing.
    Gone,
    Live {
        /// `SigBlk` holds the signal.
        blocks_signal: bool,
        /// `SigBlk` holds the C library's own signals: inside the C library for a moment.
        libc_internal: bool,
        /// The state letter (`R`, `S`, `D`, ...).
        state: u8,
    },
}

impl Plan {
    fn new(capacity: usize, signal: i32, pid: i32, options: &StopOptions) -> Self {
        let internal = (32..libc::SIGRTMIN()).fold(0u64, |m, s| m | 1 << (s - 1));
        Self {
            arena: arena_with(capacity),
            known: Vec::with_capacity(capacity),
            inside_before: Vec::with_capacity(capacity),
            blocked: Vec::with_capacity(capacity),
            rerun: Vec::with_capacity(capacity),
            used: 0,
            skipped: 0,
            listings: 0,
            signal,
            libc_internal: internal,
            pid,
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            me: gettid(),
            timeout: options.timeout,
            skip_blocking: options.skip_blocking,
        }
    }

    /// Stops every thread but the caller in attempt `gen`, until a listing shows no new thread.
    /// Allocates nothing.
    fn stop_all(&mut self, gen: u64) -> Result<(), Failure> {
        self.note_threads_inside_before()?;
        self.known.clear();
        self.known.push(self.me);
        self.blocked.clear();
        self.used = 0;
        self.skipped = 0;
        self.listings = 0;
        self.stop_new_threads(gen)
    }

    /// Lists `/proc/self/task` and stops every thread not yet known, until a listing shows
    /// none.
    fn stop_new_threads(&mut self, gen: u64) -> Result<(), Failure> {
        loop {
            if self.listings == MAX_LISTINGS {
                return Err(StopError::Unstable {
                    listings: self.listings,
                }
                .into());
            }
            self.listings += 1;
            let first = self.used;
            let mut new = 0;
            let mut listed = 0;
            // Read before the listing: the kernel's walk of the thread list ends early when the
            // thread it stands on exits meanwhile, leaving out the newest threads; such a
            // listing has fewer entries than the process had threads when it began.
            let expected = threads_in_group();
            for_each_thread(|tid| {
                listed += 1;
                let Err(at) = self.known.binary_search(&tid) else {
                    return Ok(());
                };
                if self.known.len() == self.known.capacity() {
                    return Err(Failure::NeedCapacity);
                }
                self.known.insert(at, tid);
                new += 1;
                self.stop_one(gen, tid)
            })?;
            if new == 0 {
                if expected.is_none_or(|t| listed >= t) {
                    return Ok(());
                }
                continue; // cut short, or threads left meanwhile: list again
            }
            self.wait_for_arrivals(gen, first)?;
        }
    }

    /// Fills `inside_before` from the slots of the last attempt.
    fn note_threads_inside_before(&mut self) -> Result<(), Failure> {
        self.inside_before.clear();
        // SAFETY: arenas are leaked, never freed.
        let Some(last) = (unsafe { LAST_ARENA.load(Relaxed).as_ref() }) else {
            return Ok(());
        };
        let gen = LAST_GEN.load(Relaxed);
        let used = LAST_USED.load(Relaxed).min(last.slots.len());
        for slot in &last.slots[..used] {
            if slot.word.load(Acquire) & ARRIVED != 0 && slot.left.load(Acquire) != gen {
                if self.inside_before.len() == self.inside_before.capacity() {
                    return Err(Failure::NeedCapacity);
                }
                self.inside_before.push(slot.tid.load(Relaxed));
            }
        }
        self.inside_before.sort_unstable();
        Ok(())
    }

    /// Signals one newly listed thread, unless it blocked the signal in an earlier call and
    /// still does (then it is watched, not sent yet another signal it cannot take).
    fn stop_one(&mut self, gen: u64, tid: i32) -> Result<(), Failure> {
        let suspect = (remembered(&SUSPECTS, tid) || remembered(&SKIPPED, tid))
            && self.inside_before.binary_search(&tid).is_err();
        if suspect {
            match self.probe(tid) {
                Probe::Gone => return Ok(()),
                Probe::Live {
                    blocks_signal: true,
                    libc_internal: false,
                    ..
                } => {
                    if self.skip_blocking && remembered(&SKIPPED, tid) {
                        self.skipped += 1;
                        return Ok(());
                    }
                    return self.watch_blocked(tid, None);
                }
                Probe::Live { .. } => {}
            }
        }
        self.signal_thread(gen, tid)
    }

    /// Watches a thread that blocks the signal; `slot`: the slot it was sent the signal in.
    fn watch_blocked(&mut self, tid: i32, slot: Option<usize>) -> Result<(), Failure> {
        if self.blocked.len() == self.blocked.capacity() {
            return Err(Failure::NeedCapacity);
        }
        self.blocked.push(Blocked {
            tid,
            since: Instant::now(),
            slot,
        });
        Ok(())
    }

    /// Gives `tid` a slot and sends it the signal.
    fn signal_thread(&mut self, gen: u64, tid: i32) -> Result<(), Failure> {
        let index = self.used;
        if index >= 1 << INDEX_BITS {
            return Err(StopError::TooManyThreads { count: index + 1 }.into());
        }
        let Some(slot) = self.arena.slots.get(index) else {
            return Err(Failure::NeedCapacity);
        };
        slot.tid.store(tid, Relaxed);
        slot.word.store(SENT | gen, Release);
        match send(
            self.pid,
            self.uid,
            tid,
            self.signal,
            gen << INDEX_BITS | index as u64,
        ) {
            0 => self.used += 1,
            libc::ESRCH => slot.word.store(0, Relaxed), // it exited meanwhile
            errno => {
                slot.word.store(0, Relaxed);
                return Err(StopError::Os {
                    call: "rt_tgsigqueueinfo",
                    errno,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Reads the status of every thread from slot `from` on that has not arrived yet: one that
    /// is gone never will; one that blocks the signal is watched. Threads on their way out of
    /// the handler (which blocks the signal until they leave) are not asked.
    fn probe_laggards(&mut self, gen: u64, from: usize) -> Result<(), Failure> {
        for index in from..self.used {
            let slot = &self.arena.slots[index];
            let tid = slot.tid.load(Relaxed);
            if slot.word.load(Acquire) != SENT | gen
                || self.inside_before.binary_search(&tid).is_ok()
            {
                continue;
            }
            match self.probe(tid) {
                Probe::Gone => retract(slot, gen),
                // Unless it arrived (and blocks every signal in the handler) meanwhile.
                Probe::Live {
                    blocks_signal: true,
                    libc_internal: false,
                    ..
                } if slot.word.load(Acquire) == SENT | gen => {
                    self.watch_blocked(tid, Some(index))?
                }
                Probe::Live { .. } => {}
            }
        }
        Ok(())
    }

    /// Looks again at the threads that block the signal: those that unblocked take it (or are
    /// sent it), those that exited are dropped, and one that has been asleep with it blocked
    /// for the grace period is refused (a runnable one may not yet have been scheduled to
    /// unblock it). `at_deadline`: decide about every one still blocking (refused, or skipped
    /// with `assume_blocking_threads_run_no_sites`).
    fn recheck_blocked(&mut self, gen: u64, at_deadline: bool) -> Result<(), Failure> {
        let grace = BLOCKED_GRACE.min(self.timeout);
        let mut i = 0;
        while i < self.blocked.len() {
            let Blocked { tid, since, slot } = self.blocked[i];
            let sent = |index: usize| self.arena.slots[index].word.load(Acquire) == SENT | gen;
            if slot.is_some_and(|index| !sent(index)) {
                self.blocked.swap_remove(i); // it arrived
                continue;
            }
            let probe = self.probe(tid);
            if slot.is_some_and(|index| !sent(index)) {
                self.blocked.swap_remove(i); // it arrived while its status was read
                continue;
            }
            let decide = match probe {
                Probe::Gone => {
                    if let Some(index) = slot {
                        retract(&self.arena.slots[index], gen);
                    }
                    false
                }
                Probe::Live {
                    blocks_signal: false,
                    ..
                }
                | Probe::Live {
                    libc_internal: true,
                    ..
                } => {
                    if slot.is_none() {
                        self.signal_thread(gen, tid)?;
                    }
                    false
                }
                Probe::Live { state, .. } => {
                    // Refused early if asleep with it blocked past the grace period; skipped
                    // only once it has kept it blocked for the whole timeout. (Not earlier:
                    // under qemu-user a guest thread creating a thread shows the same mask as
                    // qemu's helper and sleeps while it waits for its child.)
                    let asleep = state != b'R';
                    let early = !self.skip_blocking && asleep && since.elapsed() >= grace;
                    if !(at_deadline || early) {
                        i += 1;
                        continue;
                    }
                    true
                }
            };
            if decide {
                remember(&SUSPECTS, tid);
                if !self.skip_blocking {
                    return Err(StopError::BlocksSignal {
                        tid,
                        signal: self.signal,
                    }
                    .into());
                }
                if let Some(index) = slot {
                    retract(&self.arena.slots[index], gen);
                }
                remember(&SKIPPED, tid);
                self.skipped += 1;
            }
            self.blocked.swap_remove(i);
        }
        Ok(())
    }

    /// Waits until every slot from `first` on has arrived (or its thread exited), and every
    /// thread that blocks the signal has taken it, been skipped or been refused.
    fn wait_for_arrivals(&mut self, gen: u64, first: usize) -> Result<(), Failure> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let probe_at = start + PROBE_AFTER.min(self.timeout);
        let mut probed = false;
        let pending = |slot: &Slot| slot.word.load(Acquire) == SENT | gen;
        let mut cursor = first;
        loop {
            while cursor < self.used && !pending(&self.arena.slots[cursor]) {
                cursor += 1;
            }
            if cursor == self.used && self.blocked.is_empty() {
                return Ok(());
            }
            let seen = ARRIVALS.load(Acquire);
            if cursor < self.used && !pending(&self.arena.slots[cursor]) {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                self.recheck_blocked(gen, true)?;
                if cursor < self.used {
                    self.diagnose(gen, cursor)?;
                }
                continue;
            }
            if !probed && now >= probe_at {
                probed = true;
                self.probe_laggards(gen, cursor)?;
                continue;
            }
            let wake = if !self.blocked.is_empty() {
                now + BLOCKED_POLL
            } else if !probed {
                probe_at
            } else {
                now + WAIT_SLICE
            };
            let quiet = !futex_wait(&ARRIVALS, seen, Some(wake.min(deadline) - now));
            if !self.blocked.is_empty() {
                self.recheck_blocked(gen, false)?;
            }
            if quiet {
                // A thread that exited before it took the signal never arrives.
                for slot in &self.arena.slots[cursor..self.used] {
                    if pending(slot) && !thread_exists(self.pid, slot.tid.load(Relaxed)) {
                        retract(slot, gen);
                    }
                }
            }
        }
    }

    /// The deadline passed with the thread of slot `index` not arrived: why.
    fn diagnose(&mut self, gen: u64, index: usize) -> Result<(), Failure> {
        let slot = &self.arena.slots[index];
        let tid = slot.tid.load(Relaxed);
        let error = match self.probe(tid) {
            Probe::Gone => {
                retract(slot, gen);
                return Ok(());
            }
            Probe::Live {
                blocks_signal: true,
                libc_internal: false,
                ..
            } => {
                remember(&SUSPECTS, tid);
                StopError::BlocksSignal {
                    tid,
                    signal: self.signal,
                }
            }
            Probe::Live { state, .. } => StopError::Timeout {
                tid,
                signal: self.signal,
                timeout: self.timeout,
                state: state as char,
            },
        };
        // It may have arrived just now.
        if pending_retracted(slot, gen) {
            Err(error.into())
        } else {
            Ok(())
        }
    }

    fn probe(&self, tid: i32) -> Probe {
        probe(tid, self.signal, self.libc_internal)
    }

    /// Gets every stopped thread out of the forbidden ranges: each one stopped inside is told
    /// to run on (the others stay stopped), signalled again a moment later, and checked again,
    /// up to `max_tries` looks in all. Threads it creates meanwhile are stopped too. Returns
    /// how many looks it took, or [`Failure::Inside`].
    fn move_out_of<S: Spans + ?Sized>(
        &mut self,
        gen: u64,
        forbidden: &S,
        max_tries: u32,
    ) -> Result<u32, Failure> {
        let n = forbidden.len();
        // Each range ends where or after it starts, and before the next starts.
        let sorted = (0..n).all(|i| {
            let r = forbidden.span(i);
            r.start <= r.end && (i == 0 || forbidden.span(i - 1).end <= r.start)
        });
        let inside = |ip: u64| {
            if sorted {
                crate::memory::inside_sorted(forbidden, ip)
            } else {
                (0..n).any(|i| forbidden.span(i).contains(&ip))
            }
        };
        let mut tries = 1;
        loop {
            self.rerun.clear();
            let mut last = None;
            for slot in &self.arena.slots[..self.used] {
                let word = slot.word.load(Acquire);
                let ip = word & !ARRIVED;
                if word & ARRIVED == 0 || !inside(ip) {
                    continue;
                }
                let tid = slot.tid.load(Relaxed);
                last = Some(StoppedThread { tid, ip });
                if tries < max_tries {
                    if self.rerun.len() == self.rerun.capacity() {
                        return Err(Failure::NeedCapacity);
                    }
                    slot.word.store(KICKED, Release);
                    self.rerun.push(tid);
                }
            }
            let Some(thread) = last else {
                return Ok(tries);
            };
            if tries >= max_tries {
                return Err(Failure::Inside {
                    thread,
                    looks: tries,
                });
            }
            wake_handlers();
            // Let them run on out of the range: 10 us, doubling up to 1.28 ms.
            std::thread::sleep(Duration::from_micros(10u64 << (tries - 1).min(7)));
            tries += 1;
            let first = self.used;
            for i in 0..self.rerun.len() {
                self.signal_thread(gen, self.rerun[i])?;
            }
            self.wait_for_arrivals(gen, first)?;
            self.stop_new_threads(gen)?;
        }
    }

    /// Lets every thread of attempt `gen` run on; `serialize` after text was written.
    fn release(&self, gen: u64, serialize: bool) {
        release(self.arena, self.used, gen, serialize);
    }
}

/// Marks a slot whose thread will never arrive as unused (unless it arrived just now).
fn retract(slot: &Slot, gen: u64) {
    let _ = slot.word.compare_exchange(SENT | gen, 0, AcqRel, Relaxed);
}

/// Retracts a slot; whether it was still pending (false: its thread arrived after all).
fn pending_retracted(slot: &Slot, gen: u64) -> bool {
    slot.word
        .compare_exchange(SENT | gen, 0, AcqRel, Relaxed)
        .is_ok()
}

/// Lets every thread of attempt `gen` (slots `..used` of `arena`) run on; `serialize` after
/// text was written. Remembers the attempt, so that the next one knows which threads may still
/// be on their way out of the handler.
fn release(arena: &'static Arena, used: usize, gen: u64, serialize: bool) {
    if serialize {
        if MEMBARRIER.load(Relaxed) == 1 {
            // SAFETY: a plain system call; registered for this command.
            unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
                    0,
                    0,
                )
            };
        }
        arch::serialize_instruction_stream();
    }
    LAST_ARENA.store(arena as *const Arena as *mut Arena, Relaxed);
    LAST_USED.store(used, Relaxed);
    LAST_GEN.store(gen, Relaxed);
    RELEASED.store(gen as u32, Release);
    wake_handlers();
}

/// Makes every waiting handler look again at [`RELEASED`] and its slot.
fn wake_handlers() {
    WAKE.fetch_add(1, Release);
    futex_wake(&WAKE, i32::MAX);
}

// ---------------------------------------------------------------------------------------------
// The handler's side: atomics and raw system calls only.

/// The signal handler. Async-signal-safe: atomics, `futex`, a serialising instruction; `errno`
/// is preserved.
extern "C" fn on_stop_signal(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut c_void,
) {
    // SAFETY: errno is this thread's own; it is restored below so the interrupted code never
    // sees the handler's system calls.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    unsafe { park(info as *const SigInfo, context) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Arrives at the rendezvous the signal names, waits for its release, and serialises.
///
/// # Safety
///
/// `info` and `context` are what the kernel passed to the handler.
unsafe fn park(info: *const SigInfo, context: *mut c_void) {
    // SAFETY: the caller's contract.
    let info = unsafe { &*info };
    if info.code != libc::SI_QUEUE || info.pid != OWNER_PID.load(Relaxed) {
        return; // not sent by a rendezvous of this process
    }
    let gen = info.value >> INDEX_BITS;
    let index = (info.value & ((1 << INDEX_BITS) - 1)) as usize;
    // SAFETY: arenas are leaked, never freed.
    let Some(arena) = (unsafe { ARENA.load(Acquire).as_ref() }) else {
        return;
    };
    let Some(slot) = arena.slots.get(index) else {
        return;
    };
    // SAFETY: the caller's contract.
    let ip = unsafe { arch::interrupted_ip(context) } & !(SENT | ARRIVED | KICKED);
    if slot
        .word
        .compare_exchange(SENT | gen, ARRIVED | ip, AcqRel, Relaxed)
        .is_err()
    {
        return; // a signal from an earlier attempt
    }
    ARRIVALS.fetch_add(1, SeqCst);
    futex_wake(&ARRIVALS, 1);
    loop {
        let seen = WAKE.load(Acquire);
        let released = RELEASED.load(Acquire);
        if released.wrapping_sub(gen as u32) as i32 >= 0 || slot.word.load(Acquire) == KICKED {
            break;
        }
        futex_wait(&WAKE, seen, None);
    }
    arch::serialize_instruction_stream();
    slot.left.store(gen, Release);
}

/// The kernel's `siginfo_t` as `rt_tgsigqueueinfo` fills it for `SI_QUEUE` (64-bit layout).
#[repr(C)]
struct SigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: u64,
    _rest: [u64; 12],
}

const _: () = assert!(core::mem::size_of::<SigInfo>() == 128);
const _: () = assert!(core::mem::size_of::<libc::siginfo_t>() == 128);

/// Queues `signal` with `value` to thread `tid` of process `pid` (whose user is `uid`).
/// Returns 0 or the errno.
fn send(pid: i32, uid: u32, tid: i32, signal: i32, value: u64) -> i32 {
    let info = SigInfo {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid,
        uid,
        value,
        _rest: [0; 12],
    };
    // SAFETY: `info` is a complete siginfo for the kernel to copy.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid,
            signal,
            &info as *const SigInfo,
        )
    };
    if r == 0 {
        0
    } else {
        errno()
    }
}

// ---------------------------------------------------------------------------------------------
// Small system-call wrappers (async-signal-safe, no allocation).

fn errno() -> i32 {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Whether thread `tid` of process `pid` still exists (signal 0 checks without sending).
fn thread_exists(pid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 sends nothing.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    r == 0 || errno() != libc::ESRCH
}

/// Waits while `word` holds `expected`, at most `timeout`. Returns false on timeout.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic; `ts_ptr` is null or a valid timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        )
    };
    !(r != 0 && errno() == libc::ETIMEDOUT)
}

fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        )
    };
}

/// From `<linux/membarrier.h>` (stable ABI).
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

/// Registers for the core-serialising `membarrier` once; whether it is registered.
fn membarrier_registered() -> bool {
    if MEMBARRIER.load(Relaxed) == 0 {
        // SAFETY: plain system calls.
        let supported = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
        let registered = supported >= 0
            && supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE as libc::c_long != 0
            // SAFETY: as above.
            && unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                    0,
                    0,
                )
            } == 0;
        MEMBARRIER.store(if registered { 1 } else { 2 }, Relaxed);
    }
    MEMBARRIER.load(Relaxed) == 1
}

/// This copy's handler, as `sigaction` stores it.
fn our_handler() -> libc::sighandler_t {
    on_stop_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void)
        as libc::sighandler_t
}

fn is_ours(a: &libc::sigaction) -> bool {
    a.sa_sigaction == our_handler() && a.sa_flags & libc::SA_SIGINFO != 0
}

/// The disposition of `signal`.
fn disposition(signal: i32) -> Result<libc::sigaction, StopError> {
    // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask).
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: a query; `old` is writable.
    if unsafe { libc::sigaction(signal, core::ptr::null(), &mut old) } != 0 {
        return Err(StopError::Os {
            call: "sigaction",
            errno: errno(),
        });
    }
    Ok(old)
}

/// Whether this copy's handler is installed on `signal`.
fn handler_is_ours(signal: i32) -> Result<bool, StopError> {
    disposition(signal).map(|a| is_ours(&a))
}

/// Installs the handler for `signal` unless it is installed; refuses if another is.
fn install_handler(signal: i32) -> Result<(), StopError> {
    let ours = our_handler();
    let os = |call| StopError::Os {
        call,
        errno: errno(),
    };
    let mut old = disposition(signal)?;
    if is_ours(&old) {
        return Ok(());
    }
    if old.sa_sigaction != libc::SIG_DFL {
        return Err(StopError::ForeignHandler { signal });
    }
    // SAFETY: as above.
    let mut new: libc::sigaction = unsafe { core::mem::zeroed() };
    new.sa_sigaction = ours;
    // Restart interrupted system calls; block every other signal while parked, so that no other
    // handler (which could run a site) runs on top of ours.
    new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `new.sa_mask` is a valid sigset_t; then the handler is async-signal-safe.
    unsafe {
        libc::sigfillset(&mut new.sa_mask);
        if libc::sigaction(signal, &new, &mut old) != 0 {
            return Err(os("sigaction"));
        }
    }
    if old.sa_sigaction != libc::SIG_DFL && !is_ours(&old) {
        // The program installed its own between the two calls: put it back.
        // SAFETY: restores what was there.
        unsafe { libc::sigaction(signal, &old, core::ptr::null_mut()) };
        return Err(StopError::ForeignHandler { signal });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /proc without allocation.

/// Calls `f` with each thread id in `/proc/self/task`.
fn for_each_thread<E: From<StopError>>(mut f: impl FnMut(i32) -> Result<(), E>) -> Result<(), E> {
    let os = |call| {
        E::from(StopError::Os {
            call,
            errno: errno(),
        })
    };
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os("open /proc/self/task"));
    }
    let mut buf = [0u64; 512];
    let result = loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr(),
                core::mem::size_of_val(&buf),
            )
        };
        if n < 0 {
            break Err(os("getdents64 /proc/self/task"));
        }
        if n == 0 {
            break Ok(());
        }
        // SAFETY: plain bytes of the initialised buffer.
        let bytes: &[u8] =
            unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
        if let Err(e) = dirents(bytes).try_for_each(&mut f) {
            break Err(e);
        }
    };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    result
}

/// The numeric names in a buffer of `linux_dirent64` records.
fn dirents(bytes: &[u8]) -> impl Iterator<Item = i32> + '_ {
    let mut at = 0;
    core::iter::from_fn(move || loop {
        // d_ino: u64, d_off: i64, d_reclen: u16, d_type: u8, d_name: NUL-terminated.
        let header = bytes.get(at..at + 19)?;
        let reclen = u16::from_ne_bytes([header[16], header[17]]) as usize;
        let record = bytes.get(at..at + reclen.max(19))?;
        at += reclen.max(19);
        let name = &record[19..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(tid) = parse_decimal(name) {
            return Some(tid);
        }
    })
}

fn parse_decimal(s: &[u8]) -> Option<i32> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    s.iter().try_fold(0i32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + (b - b'0') as i32)
    })
}

/// Number of entries of `/proc/self/task`.
fn count_threads() -> Result<usize, StopError> {
    let mut n = 0;
    for_each_thread(|_| {
        n += 1;
        Ok::<(), StopError>(())
    })?;
    Ok(n)
}

/// Reads `/proc/self/task/TID/status`: whether the thread is gone or a zombie, its state letter,
/// and whether its `SigBlk` holds `signal` or any of the bits `libc_internal`.
fn probe(tid: i32, signal: i32, libc_internal: u64) -> Probe {
    let mut path = [0u8; 48];
    let mut len = 0;
    let mut push = |s: &[u8]| {
        path[len..len + s.len()].copy_from_slice(s);
        len += s.len();
    };
    push(b"/proc/self/task/");
    let mut digits = [0u8; 10];
    let mut d = digits.len();
    let mut t = tid.unsigned_abs();
    loop {
        d -= 1;
        digits[d] = b'0' + (t % 10) as u8;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    push(&digits[d..]);
    push(b"/status\0");
    let mut buf = [0u8; 4096];
    match read_proc(&path[..len], &mut buf) {
        Some(n) => parse_status(&buf[..n], signal, libc_internal),
        None => Probe::Gone,
    }
}

/// Whether the C library says this process has never had a second thread: glibc's (2.32+)
/// public `__libc_single_threaded`, true until the first `pthread_create` (set before the thread
/// exists; not reset by `fork` in glibc 2.36). `false` where the C library has no such word.
/// Not seen, so not stopped: threads made with a raw `clone(CLONE_THREAD)` that bypasses the C
/// library (which does not support them: they have no thread-local storage of their own), and
/// threads of another link namespace's copy of the C library (`dlmopen(LM_ID_NEWLM)`, an
/// `LD_AUDIT` module), whose word is its own. Such threads must not run sites while they are
/// patched (see docs/threads.md).
fn c_library_single_threaded() -> bool {
    let word = crate::os::linux::weak_symbol_address!("__libc_single_threaded");
    // SAFETY: where defined, the symbol is the C library's `char`, live for the process; it
    // is only written by the C library, so a volatile byte read is all it takes.
    !word.is_null() && unsafe { word.read_volatile() } != 0
}

/// How many threads the process has, from `/proc/self/stat` (`num_threads`, the kernel's count,
/// which includes threads on their way out), if it can be read. `stat` rather than `status`:
/// the kernel formats a third of the text, and this runs at every program's start. A count of
/// 0 is no kernel's (it counts the caller): qemu-user writes its own `stat` with most fields 0,
/// and then `Threads:` of `/proc/self/status` (which it passes through) is read instead.
fn threads_in_group() -> Option<usize> {
    let mut buf = [0u8; 1024];
    let n = read_proc(b"/proc/self/stat\0", &mut buf)?;
    if let Some(count) = stat_threads(&buf[..n]).filter(|&c| c >= 1) {
        return Some(count);
    }
    let mut buf = [0u8; 4096];
    let n = read_proc(b"/proc/self/status\0", &mut buf)?;
    let v = status_field(&buf[..n], b"Threads:")?;
    let digits = v
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    parse_decimal(&v[..digits]).map(|t| t as usize)
}

/// Field 20 (`num_threads`) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: the fields are counted from the
/// last `)`.
fn stat_threads(stat: &[u8]) -> Option<usize> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    // Field 3 (the state) is the first after the name; field 20 the eighteenth.
    let field = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(17)?;
    parse_decimal(field).map(|t| t as usize)
}

/// Reads the file at the NUL-terminated `path` into `buf` (as much as fits); its length, or
/// `None` if it cannot be opened.
fn read_proc(path: &[u8], buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            path.as_ptr() as *const libc::c_char,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the rest of `buf` is writable.
        let n = unsafe {
            libc::read(
                fd,
                buf[filled..].as_mut_ptr() as *mut c_void,
                buf.len() - filled,
            )
        };
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    Some(filled)
}

/// The part of [`probe`] that reads the text.
fn parse_status(text: &[u8], signal: i32, libc_internal: u64) -> Probe {
    let state = status_field(text, b"State:")
        .and_then(|v| v.first().copied())
        .unwrap_or(b'?');
    if matches!(state, b'Z' | b'X') || text.is_empty() {
        return Probe::Gone;
    }
    let blocked = status_field(text, b"SigBlk:")
        .and_then(|v| {
            v.iter().try_fold(0u64, |n, &b| {
                (b as char).to_digit(16).map(|d| n << 4 | d as u64)
            })
        })
        .unwrap_or(0);
    let bit = (signal as u32).wrapping_sub(1);
    Probe::Live {
        blocks_signal: bit < 64 && blocked & (1 << bit) != 0,
        libc_internal: blocked & libc_internal != 0,
        state,
    }
}

/// The value of the line `name\t...` of a status file, without leading blanks.
fn status_field<'a>(text: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    text.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(name))
        .map(|v| {
            let start = v
                .iter()
                .position(|&b| b != b'\t' && b != b' ')
                .unwrap_or(v.len());
            &v[start..]
        })
}

// ---------------------------------------------------------------------------------------------
// What differs between instruction sets. An AArch64 version adds: the interrupted pc is
// `(*(context as *const libc::ucontext_t)).uc_mcontext.pc`, and the serialising instruction is
// `isb` (after the writer's `dc cvau` / `ic ivau` / `dsb ish`); `membarrier` SYNC_CORE is
// supported there too.

mod arch {
    use core::ffi::c_void;

    /// The instruction pointer the thread was interrupted at (where it resumes).
    ///
    /// # Safety
    ///
    /// `context` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn interrupted_ip(context: *mut c_void) -> u64 {
        let context = context as *const libc::ucontext_t;
        // SAFETY: the caller's contract.
        unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as u64 }
    }

    /// Makes this CPU discard instructions it fetched before text was written: a serialising
    /// instruction ([`crate::x86_64::serialize`]: `iretq`, or `cpuid` on a shadow stack).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn serialize_instruction_stream() {
        crate::x86_64::serialize();
    }

    /// A cycle count, as a seed.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn timestamp() -> u64 {
        // SAFETY: rdtsc exists on every x86-64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_thread_count_is_field_20_counted_after_the_name() {
        // A name with spaces and parentheses of its own; num_threads is 7.
        let line = b"4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 7 0                      12345 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n";
        assert_eq!(stat_threads(line), Some(7));
        assert_eq!(stat_threads(b"4242 (x) S 1 2"), None);
        assert_eq!(stat_threads(b"no name here"), None);
        // This process's own line: the unit-test harness runs tests on threads.
        let own = threads_in_group().expect("/proc/self/stat");
        assert!(own >= 1, "{own}");
    }

    #[test]
    fn the_c_library_knows_this_process_has_threads() {
        // The harness runs this test on a thread of its own: never single-threaded here.
        assert!(!c_library_single_threaded());
        // And a program that never made a thread is single-threaded by the same word: the
        // quickstart child of the start-up benchmark, load-time patching in tests/adoption.rs.
    }

    #[test]
    fn status_blocked_bits_are_read_per_signal() {
        let text = b"Name:\tx\nState:\tS (sleeping)\nSigPnd:\t0000000000000000\n\
                     SigBlk:\t1000000000000000\nSigIgn:\t0000000000000000\n";
        // Bit 60 is signal 61.
        assert!(matches!(
            parse_status(text, 61, GLIBC_INTERNAL),
            Probe::Live {
                blocks_signal: true,
                libc_internal: false,
                state: b'S',
                ..
            }
        ));
        assert!(matches!(
            parse_status(text, 60, GLIBC_INTERNAL),
            Probe::Live {
                blocks_signal: false,
                ..
            }
        ));
    }

    /// glibc's 32 and 33.
    const GLIBC_INTERNAL: u64 = 3 << 31;
    #[test]
    fn qemus_helper_blocks_the_signal_whatever_the_numbering() {
        // qemu-user's helper thread as a guest reads it (host numbers): everything blocked but
        // SIGILL, SIGFPE, SIGSEGV and the host C library's two, so every real-time signal.
        let helper = b"State:\tS (sleeping)\nSigBlk:\tfffffffe7ffbfa77\n";
        for signal in [61, 50, 40] {
            assert!(matches!(
                parse_status(helper, signal, GLIBC_INTERNAL),
                Probe::Live {
                    blocks_signal: true,
                    libc_internal: false,
                    ..
                }
            ));
        }
        // A thread that blocks only signal 63 (guest 61 under qemu) does not block 61.
        let one = b"State:\tS (sleeping)\nSigBlk:\t4000000000000000\n";
        assert!(matches!(
            parse_status(one, 61, GLIBC_INTERNAL),
            Probe::Live {
                blocks_signal: false,
                ..
            }
        ));
    }

    #[test]
    fn the_c_library_blocking_everything_is_told_from_a_program_doing_it() {
        // As read on Linux 6.18 / glibc 2.36: a thread inside pthread_create, and a thread that
        // blocked everything with pthread_sigmask (or runs a handler with a sigfillset mask).
        let creating = b"State:\tR (running)\nSigBlk:\tfffffffffffbfeff\n";
        let program = b"State:\tS (sleeping)\nSigBlk:\tfffffffe7ffbfeff\n";
        assert!(matches!(
            parse_status(creating, 61, GLIBC_INTERNAL),
            Probe::Live {
                blocks_signal: true,
                libc_internal: true,
                ..
            }
        ));
        assert!(matches!(
            parse_status(program, 61, GLIBC_INTERNAL),
            Probe::Live {
                blocks_signal: true,
                libc_internal: false,
                ..
            }
        ));
    }

    #[test]
    fn zombies_and_unreadable_threads_are_gone() {
        assert!(matches!(
            parse_status(b"State:\tZ (zombie)\nSigBlk:\t0\n", 61, GLIBC_INTERNAL),
            Probe::Gone
        ));
        assert!(matches!(parse_status(b"", 61, GLIBC_INTERNAL), Probe::Gone));
    }

    #[test]
    fn dirents_yield_numeric_names_only() {
        let mut buf = Vec::new();
        for name in [&b"."[..], b"..", b"1234", b"77"] {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            let start = buf.len();
            buf.resize(start + reclen, 0);
            buf[start + 16..start + 18].copy_from_slice(&(reclen as u16).to_ne_bytes());
            buf[start + 19..start + 19 + name.len()].copy_from_slice(name);
        }
        assert_eq!(dirents(&buf).collect::<Vec<_>>(), [1234, 77]);
    }

    #[test]
    fn errors_name_the_thread_and_the_signal() {
        let sig = libc::SIGRTMAX() - 3;
        let e = StopError::BlocksSignal {
            tid: 4242,
            signal: sig,
        };
        let text = std::format!("{e}");
        assert!(text.contains("thread 4242"), "{text}");
        assert!(
            text.contains(&std::format!("signal {sig} (SIGRTMAX-3)")),
            "{text}"
        );
        let e = StopError::InsideForbidden {
            tid: 7,
            ip: 0x1234,
            tries: 3,
        };
        assert!(std::format!("{e}").contains("thread 7 was stopped at 0x1234"));
    }
}
