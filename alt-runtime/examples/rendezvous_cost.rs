//! What one stop/release of the thread rendezvous costs, for N other threads that are idle
//! (blocked in a channel receive) or busy (spinning), measured in one run.
//!
//! ```text
//! cargo run --release -p alt-runtime --example rendezvous_cost            # N = 1 2 4 8 16 32
//! cargo run --release -p alt-runtime --example rendezvous_cost -- 4 64    # chosen N
//! ```
//!
//! Each figure is the median (and 90th percentile) over 201 rendezvous of the time from the
//! call to `stop_other_threads` until `release` has returned; threads run for 1 ms between
//! rendezvous. For scale, the same run times one `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`
//! (what every release does) and one thread spawn + join.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    use alt_runtime::os::rendezvous::{membarrier_sync_core, stop_other_threads, StopOptions};

    const ROUNDS: usize = 201;

    /// Median and 90th percentile of `f`'s duration over `ROUNDS` runs, in microseconds.
    fn measure(mut f: impl FnMut()) -> (f64, f64) {
        let mut t: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(1));
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        t.sort_by(f64::total_cmp);
        (t[ROUNDS / 2], t[ROUNDS * 9 / 10])
    }

    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("thread counts"))
        .collect();
    let counts = if counts.is_empty() {
        vec![1, 2, 4, 8, 16, 32]
    } else {
        counts
    };
    let options = StopOptions::new();

    let membarrier = membarrier_sync_core();
    let (mb, _) = measure(|| {
        if membarrier {
            // SAFETY: a plain system call, registered by `membarrier_sync_core`.
            unsafe { libc::syscall(libc::SYS_membarrier, 1 << 5, 0, 0) };
        }
    });
    let (spawn, _) = measure(|| std::thread::spawn(|| {}).join().unwrap());
    println!(
        "rendezvous cost on {} CPUs (median of {ROUNDS}; membarrier SYNC_CORE {}):",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if membarrier { "used" } else { "unavailable" }
    );
    println!("  one membarrier(SYNC_CORE): {mb:.1} us; one thread spawn + join: {spawn:.1} us");
    println!(
        "  {:>8} {:>6} {:>11} {:>11} {:>13} {:>11}",
        "threads", "kind", "median us", "p90 us", "us per thread", "vs spawn"
    );
    for &n in &counts {
        for busy in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel::<()>();
            let rx = Arc::new(std::sync::Mutex::new(rx));
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    let (stop, rx) = (stop.clone(), rx.clone());
                    std::thread::spawn(move || {
                        if busy {
                            while !stop.load(Relaxed) {
                                std::hint::spin_loop();
                            }
                        } else {
                            // Blocked in the kernel until the sender is dropped.
                            let _ = rx.lock().map(|r| r.recv());
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            let mut stopped_count = 0;
            let (median, p90) = measure(|| {
                let stopped = stop_other_threads(&options, &[]).expect("stop");
                stopped_count = stopped.thread_count();
                stopped.release();
            });
            stop.store(true, Relaxed);
            drop(tx);
            for t in threads {
                t.join().unwrap();
            }
            assert!(stopped_count >= n, "{stopped_count} stopped of {n}");
            println!(
                "  {n:>8} {:>6} {median:>11.1} {p90:>11.1} {:>13.1} {:>10.1}x",
                if busy { "busy" } else { "idle" },
                median / n as f64,
                median / spawn
            );
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("the rendezvous is built for Linux x86-64 only");
}
