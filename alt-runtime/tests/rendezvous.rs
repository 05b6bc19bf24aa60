//! The thread rendezvous (`alt_runtime::os::rendezvous`) against real threads: spinning,
//! blocking the signal, stuck in `vfork`, created while it runs, many of them, thousands of
//! cycles; natively, and the same tests again under `qemu-x86_64 -cpu Haswell`.
//!
//! The tests share one process, so they take turns ([`serial`]); the threads of the tests that
//! wait for their turn are stopped too, which is why the checks look for the threads each test
//! started rather than counting every stopped thread.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alt_runtime::os::rendezvous::{
    default_signal, membarrier_sync_core, stop_other_threads, StopError, StopOptions, Stopped,
};

/// Set when this test binary runs under qemu-user (see [`the_tests_pass_under_qemu_haswell`]).
const UNDER_QEMU: &str = "ALT_RENDEZVOUS_UNDER_QEMU";

fn under_qemu() -> bool {
    std::env::var_os(UNDER_QEMU).is_some()
}

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The options every test uses: a generous timeout for a loaded 2-core machine, and under
/// qemu-user the opt-out for qemu's helper thread.
fn options() -> StopOptions {
    let options = StopOptions::new().timeout(Duration::from_secs(5));
    if under_qemu() {
        // SAFETY: under qemu-user the one thread that keeps the signal blocked (as the host sees
        // it) is qemu's RCU helper thread, which never runs guest code. The tests' own blocking
        // threads are guest threads, whose guest mask qemu shows under host numbers, so they are
        // not taken for it (the blocking test checks exactly that).
        unsafe { options.assume_blocking_threads_run_no_sites() }
    } else {
        options
    }
}

fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Threads that count as fast as they can until dropped.
struct Spinners {
    stop: Arc<AtomicBool>,
    counters: Arc<Vec<AtomicU64>>,
    tids: Vec<i32>,
    handles: Vec<JoinHandle<()>>,
}

impl Spinners {
    fn start(n: usize) -> Self {
        Self::start_with(n, |counter, stop| {
            while !stop.load(Relaxed) {
                counter.fetch_add(1, Relaxed);
                std::hint::spin_loop();
            }
        })
    }

    /// `n` threads, each running `body(its counter, the stop flag)`.
    fn start_with(n: usize, body: fn(&AtomicU64, &AtomicBool)) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let (tx, rx) = mpsc::channel();
        let handles = (0..n)
            .map(|i| {
                let (stop, counters, tx) = (stop.clone(), counters.clone(), tx.clone());
                std::thread::spawn(move || {
                    tx.send((i, gettid())).unwrap();
                    drop(tx);
                    body(&counters[i], &stop);
                })
            })
            .collect();
        let mut tids = vec![0; n];
        for _ in 0..n {
            let (i, tid) = rx.recv().unwrap();
            tids[i] = tid;
        }
        let spinners = Self {
            stop,
            counters,
            tids,
            handles,
        };
        spinners.wait_for_progress("start");
        spinners
    }

    /// The counters, without allocating (the caller may hold a `Stopped` guard).
    fn snapshot(&self, out: &mut [u64]) {
        for (o, c) in out.iter_mut().zip(self.counters.iter()) {
            *o = c.load(Relaxed);
        }
    }

    /// Waits until every counter has moved past its current value.
    fn wait_for_progress(&self, what: &str) {
        let mut before = vec![0; self.counters.len()];
        self.snapshot(&mut before);
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, c) in self.counters.iter().enumerate() {
            while c.load(Relaxed) == before[i] {
                assert!(
                    Instant::now() < deadline,
                    "{what}: thread {} (tid {}) made no progress: lost or stuck",
                    i,
                    self.tids[i]
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if std::thread::panicking() {
            return; // a failed test: a stuck spinner must not hang the join
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Whether every tid of `tids` is among the stopped threads (allocates nothing).
fn all_stopped(stopped: &Stopped, tids: &[i32]) -> bool {
    tids.iter().all(|t| stopped.threads().any(|s| s.tid == *t))
}

/// Checks that the spinners stay put while stopped: two snapshots 20 ms apart are equal.
fn assert_frozen(spinners: &Spinners, a: &mut [u64], b: &mut [u64]) -> bool {
    spinners.snapshot(a);
    std::thread::sleep(Duration::from_millis(20));
    spinners.snapshot(b);
    a == b
}

#[test]
fn stopped_threads_make_no_progress_until_released() {
    let _turn = serial();
    let spinners = Spinners::start(4);
    let (mut a, mut b) = ([0; 4], [0; 4]);
    let stopped = stop_other_threads(&options(), &[]).expect("stop");
    let found = all_stopped(&stopped, &spinners.tids);
    let me_stopped = stopped.threads().any(|t| t.tid == gettid());
    let frozen = assert_frozen(&spinners, &mut a, &mut b);
    let (count, tries) = (stopped.thread_count(), stopped.tries());
    stopped.release();
    assert!(found, "every spinner is stopped");
    assert!(!me_stopped, "the calling thread is never stopped");
    assert!(frozen, "no spinner counted while stopped: {a:?} then {b:?}");
    assert!(count >= 4, "{count} threads stopped");
    assert_eq!(tries, 1);
    spinners.wait_for_progress("after release");
    println!(
        "stopped {count} threads; membarrier SYNC_CORE: {}",
        membarrier_sync_core()
    );
}

// A loop whose every instruction lies between `alt_test_spin` and `alt_test_spin_end`: it counts
// `*rdi` until the byte at `*rsi` is non-zero.
core::arch::global_asm!(
    ".pushsection .text.alt_test_spin,\"ax\",@progbits",
    ".globl alt_test_spin",
    ".type alt_test_spin,@function",
    "alt_test_spin:",
    "2: lock inc qword ptr [rdi]",
    "cmp byte ptr [rsi], 0",
    "je 2b",
    "ret",
    ".globl alt_test_spin_end",
    "alt_test_spin_end:",
    ".size alt_test_spin, alt_test_spin_end - alt_test_spin",
    ".popsection",
);

extern "C" {
    fn alt_test_spin(counter: *const AtomicU64, stop: *const AtomicBool);
    static alt_test_spin_end: u8;
}

fn spin_range() -> Range<u64> {
    let end = core::ptr::addr_of!(alt_test_spin_end) as u64;
    alt_test_spin as *const () as u64..end
}

/// Spins inside [`spin_range`] until `stop` is set.
fn spin_in_range(counter: &AtomicU64, stop: &AtomicBool) {
    // SAFETY: both pointers are live for the call.
    unsafe { alt_test_spin(counter, stop) };
}

#[test]
fn a_thread_inside_a_forbidden_range_makes_the_call_retry_then_fail() {
    let _turn = serial();
    let range = spin_range();
    // Stays inside the range until the spinner is dropped.
    let spinner = Spinners::start_with(1, spin_in_range);
    let err = stop_other_threads(&options().max_tries(3), std::slice::from_ref(&range))
        .expect_err("the spinner is always inside the range");
    match err {
        StopError::InsideForbidden { tid, ip, tries } => {
            assert_eq!(tid, spinner.tids[0], "{err}");
            assert!(range.contains(&ip), "{ip:#x} in {range:x?}");
            assert_eq!(tries, 3);
        }
        e => panic!("expected InsideForbidden, got {e}"),
    }
    assert!(err
        .to_string()
        .contains(&format!("thread {}", spinner.tids[0])));
    spinner.wait_for_progress("after the refusal, nothing is left stopped");
}

#[test]
fn a_thread_that_leaves_the_range_lets_a_later_try_succeed() {
    let _turn = serial();
    let range = spin_range();
    static LEAVE: AtomicBool = AtomicBool::new(false);
    LEAVE.store(false, Relaxed);
    let spinner = Spinners::start_with(1, |counter, stop| {
        // SAFETY: both pointers are live for the call.
        unsafe { alt_test_spin(counter, &LEAVE) };
        while !stop.load(Relaxed) {
            counter.fetch_add(1, Relaxed);
        }
    });
    let timer = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(20));
        LEAVE.store(true, Relaxed);
    });
    let stopped = stop_other_threads(&options().max_tries(400), std::slice::from_ref(&range))
        .expect("the spinner leaves the range after 20 ms");
    let tries = stopped.tries();
    let ip = stopped
        .threads()
        .find(|t| t.tid == spinner.tids[0])
        .map(|t| t.ip);
    stopped.release();
    timer.join().unwrap();
    assert!(
        tries > 1,
        "the first try found the spinner inside the range"
    );
    let ip = ip.expect("the spinner was stopped");
    assert!(!range.contains(&ip), "{ip:#x} is outside {range:x?}");
    spinner.wait_for_progress("after release");
}

/// A thread that blocks `signal` and then sleeps until told to stop; sends its tid.
fn start_blocking_thread(signal: i32, stop: Arc<AtomicBool>) -> (i32, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: a local signal set, this thread's own mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                0
            );
        }
        tx.send(gettid()).unwrap();
        while !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (rx.recv().unwrap(), handle)
}

#[test]
fn a_thread_that_blocks_the_signal_is_named() {
    let _turn = serial();
    let spinners = Spinners::start(2);
    let stop = Arc::new(AtomicBool::new(false));
    let (tid, handle) = start_blocking_thread(default_signal(), stop.clone());
    let options = options().timeout(Duration::from_millis(500));
    let err = stop_other_threads(&options, &[]).expect_err("a thread blocks the signal");
    if under_qemu() {
        // qemu shows the guest's blocked signals under host numbers: found at the deadline.
        assert!(
            matches!(err, StopError::Timeout { tid: t, .. } if t == tid),
            "expected Timeout naming {tid}, got {err}"
        );
    } else {
        // Seen in /proc/self/task/TID/status before the signal was sent.
        assert_eq!(
            err,
            StopError::BlocksSignal {
                tid,
                signal: default_signal()
            }
        );
    }
    assert!(err.to_string().contains(&format!("thread {tid}")), "{err}");
    spinners.wait_for_progress("after the refusal, nothing is left stopped");
    stop.store(true, Relaxed);
    handle.join().unwrap();
    // And once it is gone, the rendezvous works again.
    stop_other_threads(&options, &[]).expect("stop").release();
}

/// A thread blocks every signal as the C library does inside `pthread_create` (a raw
/// `rt_sigprocmask`, so the C library's own signals too), sleeps, then runs, then unblocks:
/// it is waited for, neither refused (a program cannot block those signals) nor left running.
#[test]
fn a_thread_blocking_everything_like_the_c_library_is_waited_for() {
    let _turn = serial();
    static BLOCKED: AtomicBool = AtomicBool::new(false);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    BLOCKED.store(false, Relaxed);
    STOP.store(false, Relaxed);
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: this thread's own mask, 8-byte sets as the kernel takes them.
        unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &all, &mut old, 8) };
        BLOCKED.store(true, Relaxed);
        std::thread::sleep(Duration::from_millis(50)); // asleep with everything blocked
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {} // and running
                                                             // SAFETY: as above.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &old,
                std::ptr::null_mut::<u64>(),
                8,
            )
        };
        while !STOP.load(Relaxed) {
            COUNT.fetch_add(1, Relaxed);
        }
    });
    let tid = rx.recv().unwrap();
    while !BLOCKED.load(Relaxed) {
        std::thread::yield_now();
    }
    let stopped = stop_other_threads(&options(), &[]).expect("waited for, not refused");
    let found = stopped.threads().any(|t| t.tid == tid);
    let before = COUNT.load(Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    let after = COUNT.load(Relaxed);
    stopped.release();
    STOP.store(true, Relaxed);
    handle.join().unwrap();
    assert!(found, "thread {tid} was stopped once it unblocked");
    assert_eq!(before, after, "and made no progress while stopped");
}

/// In a thread: `vfork`, the child sleeps `SLEEP` and exits. The parent waits in the kernel,
/// where no ordinary signal reaches it, until the child is gone. The child runs on the parent's
/// stack, so the whole sequence is one asm block that touches no stack.
fn vfork_and_wait() {
    static SLEEP: libc::timespec = libc::timespec {
        tv_sec: 2,
        tv_nsec: 0,
    };
    // SAFETY: the child only makes two system calls from registers and a static, then exits;
    // the parent resumes when it has.
    unsafe {
        core::arch::asm!(
            "mov eax, {vfork}",
            "syscall",
            "test eax, eax",
            "jnz 2f",
            "mov eax, {nanosleep}",
            "mov rdi, {ts}",
            "xor esi, esi",
            "syscall",
            "mov eax, {exit}",
            "xor edi, edi",
            "syscall",
            "2:",
            vfork = const libc::SYS_vfork,
            nanosleep = const libc::SYS_nanosleep,
            exit = const libc::SYS_exit,
            ts = in(reg) &SLEEP,
            out("rax") _, out("rcx") _, out("r11") _, out("rdi") _, out("rsi") _,
        );
    }
}

#[test]
fn a_thread_that_does_not_arrive_times_out_naming_it() {
    if under_qemu() {
        // qemu-user turns vfork into fork: the thread does not wait, so it arrives.
        return;
    }
    let _turn = serial();
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        vfork_and_wait();
    });
    let tid = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // inside vfork by now
    let timeout = Duration::from_millis(300);
    let err = stop_other_threads(&options().timeout(timeout), &[]).expect_err("it cannot arrive");
    match err {
        StopError::Timeout {
            tid: t,
            timeout: waited,
            state,
            ..
        } => {
            assert_eq!(t, tid, "{err}");
            assert_eq!(waited, timeout);
            assert_eq!(state, 'D', "waiting for its vfork child: {err}");
        }
        e => panic!("expected Timeout naming {tid}, got {e}"),
    }
    assert!(err
        .to_string()
        .contains(&format!("thread {tid} did not stop")));
    handle.join().unwrap();
    // Its signal arrives late, is recognised as stale, and the next rendezvous works.
    stop_other_threads(&options(), &[]).expect("stop").release();
}

extern "C" fn foreign_handler(_: libc::c_int) {}

#[test]
fn a_signal_the_program_uses_is_refused() {
    let _turn = serial();
    let spinners = Spinners::start(1);
    let signal = libc::SIGRTMAX() - 5;
    for handler in [foreign_handler as *const () as usize, libc::SIG_IGN] {
        // SAFETY: a handler that does nothing, for a signal nobody sends.
        unsafe { libc::signal(signal, handler) };
        let err = stop_other_threads(&options().signal(signal), &[]).expect_err("foreign");
        assert_eq!(err, StopError::ForeignHandler { signal });
        assert!(err
            .to_string()
            .contains(&format!("signal {signal} (SIGRTMAX-5)")));
        // SAFETY: back to the default.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    spinners.wait_for_progress("nothing was stopped");
    for signal in [libc::SIGUSR1, libc::SIGRTMAX() + 1, libc::SIGRTMIN() - 1] {
        let err = stop_other_threads(&options().signal(signal), &[]).expect_err("invalid");
        assert_eq!(err, StopError::InvalidSignal { signal });
    }
    // With the default restored, the same signal works.
    stop_other_threads(&options().signal(signal), &[])
        .expect("stop")
        .release();
}

#[test]
fn a_re_entrant_call_is_refused() {
    let _turn = serial();
    let stopped = stop_other_threads(&options(), &[]).expect("stop");
    let again = stop_other_threads(&options(), &[]).map(|_| ());
    stopped.release();
    assert_eq!(again, Err(StopError::Busy));
    stop_other_threads(&options(), &[])
        .expect("after release")
        .release();
}

#[test]
fn any_thread_may_stop_the_others() {
    let _turn = serial();
    let spinners = Spinners::start(2);
    let test_thread = gettid();
    let tids = spinners.tids.clone();
    let (found, caller, test_stopped) = std::thread::spawn(move || {
        let stopped = stop_other_threads(&options(), &[]).expect("stop");
        let found = all_stopped(&stopped, &tids);
        let caller = stopped.threads().any(|t| t.tid == gettid());
        let test_stopped = stopped.threads().any(|t| t.tid == test_thread);
        stopped.release();
        (found, caller, test_stopped)
    })
    .join()
    .unwrap();
    assert!(
        found && test_stopped,
        "the spinners and the joining test thread were stopped"
    );
    assert!(!caller, "the calling thread was not");
    spinners.wait_for_progress("after release");
}

#[test]
fn thirty_two_threads_are_stopped_and_released() {
    let _turn = serial();
    let spinners = Spinners::start(32);
    let (mut a, mut b) = ([0; 32], [0; 32]);
    let stopped = stop_other_threads(&options(), &[]).expect("stop");
    let found = all_stopped(&stopped, &spinners.tids);
    let frozen = assert_frozen(&spinners, &mut a, &mut b);
    let count = stopped.thread_count();
    stopped.release();
    assert!(found, "all 32 spinners stopped ({count} threads in all)");
    assert!(frozen, "none counted while stopped");
    spinners.wait_for_progress("after release");
}

#[test]
fn thousands_of_cycles_lose_no_thread() {
    let _turn = serial();
    let cycles = if under_qemu() { 300 } else { 3000 };
    let spinners = Spinners::start(8);
    let mut missing = 0;
    let mut tries = 0;
    for cycle in 1..=cycles {
        let stopped = stop_other_threads(&options(), &[]).expect("stop");
        if !all_stopped(&stopped, &spinners.tids) {
            missing += 1;
        }
        tries += stopped.tries();
        stopped.release();
        if cycle % 100 == 0 {
            spinners.wait_for_progress("between cycles");
        }
    }
    assert_eq!(missing, 0, "cycles where a spinner was not stopped");
    assert_eq!(tries, cycles, "one try per cycle: nothing is forbidden");
    drop(spinners); // joins: none is stuck
}

#[test]
fn threads_created_during_the_rendezvous_are_stopped_too() {
    let _turn = serial();
    const SLOTS: usize = 256;
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicUsize::new(0));
    let spawner = {
        let (counters, stop, spawned) = (counters.clone(), stop.clone(), spawned.clone());
        std::thread::spawn(move || {
            let mut live = std::collections::VecDeque::new();
            while !stop.load(Relaxed) {
                let n = spawned.fetch_add(1, Relaxed);
                let counters = counters.clone();
                live.push_back(std::thread::spawn(move || {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_millis(2) {
                        counters[n % SLOTS].fetch_add(1, Relaxed);
                    }
                }));
                if live.len() > 8 {
                    live.pop_front().unwrap().join().unwrap();
                }
            }
            for h in live {
                h.join().unwrap();
            }
        })
    };
    let snapshot = |out: &mut [u64; SLOTS]| {
        for (o, c) in out.iter_mut().zip(counters.iter()) {
            *o = c.load(Relaxed);
        }
    };
    let (mut a, mut b) = ([0; SLOTS], [0; SLOTS]);
    let rounds = if under_qemu() { 30 } else { 100 };
    let mut most_listings = 0;
    let mut moved = 0;
    // At least `rounds` rendezvous, and on until as many threads were created (slowly, under
    // qemu on a loaded machine), within reason.
    let mut round = 0;
    while round < rounds || (spawned.load(Relaxed) < rounds && round < 20 * rounds) {
        round += 1;
        let stopped = stop_other_threads(&options(), &[]).expect("stop");
        snapshot(&mut a);
        std::thread::sleep(Duration::from_millis(5));
        snapshot(&mut b);
        most_listings = most_listings.max(stopped.listings());
        stopped.release();
        if a != b {
            moved += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Relaxed);
    spawner.join().unwrap();
    assert_eq!(moved, 0, "a thread ran while the others were stopped");
    assert!(
        spawned.load(Relaxed) >= rounds,
        "threads were being created: {} in {round} rendezvous",
        spawned.load(Relaxed)
    );
    println!("most listings in one rendezvous: {most_listings}");
}

/// Deterministic: a thread keeps the signal blocked (running, so it is waited for) until the
/// rendezvous has sent it the signal, which it sees pending, so after the first listing; then it
/// creates a thread and unblocks the signal.
#[test]
fn a_thread_created_after_the_first_listing_is_caught() {
    let _turn = serial();
    static BLOCKED: AtomicBool = AtomicBool::new(false);
    static CHILD_TID: AtomicU64 = AtomicU64::new(0);
    static CHILD_COUNT: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    BLOCKED.store(false, Relaxed);
    CHILD_TID.store(0, Relaxed);
    STOP.store(false, Relaxed);
    let signal = default_signal();
    let parent = std::thread::spawn(move || {
        // SAFETY: local signal sets and this thread's own mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        BLOCKED.store(true, Relaxed);
        // SAFETY: as above.
        let pending = || unsafe {
            let mut p: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut p);
            libc::sigismember(&p, signal) == 1
        };
        while !pending() {
            std::hint::spin_loop();
        }
        // The child inherits the blocked signal: it says who it is, then unblocks it.
        let child = std::thread::spawn(move || {
            CHILD_TID.store(gettid() as u64, Relaxed);
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
            while !STOP.load(Relaxed) {
                CHILD_COUNT.fetch_add(1, Relaxed);
            }
        });
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        while !STOP.load(Relaxed) {
            std::hint::spin_loop();
        }
        child.join().unwrap();
    });
    while !BLOCKED.load(Relaxed) {
        std::thread::yield_now();
    }
    let stopped = stop_other_threads(&options(), &[]).expect("stop");
    let child = CHILD_TID.load(Relaxed) as i32;
    let caught = stopped.threads().any(|t| t.tid == child);
    let listings = stopped.listings();
    let before = CHILD_COUNT.load(Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    let after = CHILD_COUNT.load(Relaxed);
    stopped.release();
    STOP.store(true, Relaxed);
    parent.join().unwrap();
    assert_ne!(child, 0, "the child was created during the rendezvous");
    assert!(caught, "the child {child} was stopped");
    assert_eq!(before, after, "the child made no progress while stopped");
    assert!(
        listings >= 3,
        "found by a later listing: {listings} listings"
    );
}

/// The qemu-user binary; the README's test command installs Debian's `qemu-user`.
fn qemu() -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| PathBuf::from(dir).join("qemu-x86_64"))
        .find(|p| p.exists())
        .expect(
            "qemu-x86_64 not found: install Debian's qemu-user (scripts/test.sh does) to run \
             the rendezvous under an emulated CPU",
        )
}

#[test]
fn the_tests_pass_under_qemu_haswell() {
    if under_qemu() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(qemu())
        .args(["-cpu", "Haswell"])
        .arg(&exe)
        .args(["--test-threads=1", "--skip", "the_tests_pass_under_qemu"])
        .env(UNDER_QEMU, "1")
        .output()
        .expect("run qemu-x86_64");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "under qemu-x86_64 -cpu Haswell ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 13, "{passed} tests passed under qemu:\n{stdout}");
}
