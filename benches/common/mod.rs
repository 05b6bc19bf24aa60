//! What the benchmarks share: CPU-time clocks, medians, and interleaved sampling of variants.
//!
//! Each bench includes this with `mod common;` and uses what it needs.

// Not every bench uses every helper.
#![allow(dead_code)]

/// One of the clocks of `clock_gettime`, in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(clock, &mut t) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// This thread's CPU time, in nanoseconds: time the thread spent descheduled by other work on
/// the machine does not count.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// This process's CPU time (all its threads), in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The median of `v` (the upper one of an even count).
pub fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s[s.len() / 2]
}

/// What a variant calls before and after each of its samples.
pub struct Around {
    pub before: fn(),
    pub after: fn(),
}

/// One way of doing the work: a name, the work, and its samples (ns per unit of work).
pub struct Variant<'a> {
    pub name: String,
    run: Box<dyn FnMut() -> u64 + 'a>,
    /// Called before and after each of this variant's samples, outside the timing.
    around: Option<Around>,
    pub samples: Vec<f64>,
    pub result: Option<u64>,
}

impl Variant<'_> {
    /// The median ns per unit.
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }
}

/// Variants sampled in interleaved rounds (one sample of each per round, so drift and noise on
/// the machine fall on all of them alike), each sample timed in the thread's CPU time.
pub struct Interleaved<'a> {
    pub variants: Vec<Variant<'a>>,
    units: usize,
    passes: usize,
}

impl<'a> Interleaved<'a> {
    /// Each call of a variant does `units` units of work (elements, blocks); a sample is
    /// `passes` calls.
    pub fn new(units: usize, passes: usize) -> Self {
        Interleaved {
            variants: Vec::new(),
            units,
            passes,
        }
    }

    /// Adds a variant; `run` returns a result that every variant must agree on.
    pub fn add(&mut self, name: impl Into<String>, run: impl FnMut() -> u64 + 'a) {
        self.add_around(name, None, run);
    }

    /// Adds a variant with `before` and `after` called around each of its samples (untimed).
    pub fn add_around(
        &mut self,
        name: impl Into<String>,
        around: Option<Around>,
        run: impl FnMut() -> u64 + 'a,
    ) {
        self.variants.push(Variant {
            name: name.into(),
            run: Box::new(run),
            around,
            samples: Vec::new(),
            result: None,
        });
    }

    /// Takes `rounds` samples of every variant and checks that they all computed the same.
    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for v in &mut self.variants {
                if let Some(a) = &v.around {
                    (a.before)();
                }
                let t = thread_cpu_ns();
                let mut r = 0;
                for _ in 0..self.passes {
                    r = std::hint::black_box((v.run)());
                }
                let ns = thread_cpu_ns() - t;
                if let Some(a) = &v.around {
                    (a.after)();
                }
                v.samples
                    .push(ns as f64 / (self.units * self.passes) as f64);
                assert!(
                    v.result.is_none_or(|old| old == r),
                    "{} is not deterministic",
                    v.name
                );
                v.result = Some(r);
            }
        }
        let first = self.variants[0].result;
        for v in &self.variants {
            assert_eq!(
                v.result, first,
                "{} disagrees with {}",
                v.name, self.variants[0].name
            );
        }
    }

    /// Prints each variant's median ns per `unit` and its ratio to the first variant's.
    pub fn print(&self, unit: &str) {
        let reference = self.variants[0].median();
        let width = self
            .variants
            .iter()
            .map(|v| v.name.len())
            .max()
            .unwrap_or(0);
        for v in &self.variants {
            let ns = v.median();
            println!(
                "  {:<width$}  {ns:>8.3} ns/{unit}  {:>6.2}x",
                v.name,
                ns / reference
            );
        }
    }
}
