//! The kernel's workload: the demo crate's (`alt_demo::run`, the same functions and inputs as the
//! hosted quickstart), then the kernel's own `alt::has!` branches and paravirt operations. The
//! results (and their checksum) are the same whatever each site holds; what changes is the code
//! computing them.

use core::sync::atomic::{AtomicU32, Ordering};

use alt_demo::{popcount, Checksum};

/// How many times [`run`] was called, on any CPU: a CPU that never calls it runs no site.
pub static RUNS: AtomicU32 = AtomicU32::new(0);

/// Set bits of every word: a loop compiled with POPCNT where every CPU has it, chosen once per
/// call by a patched branch. Returns the count and the arm that ran.
pub fn count_bits(words: &[u64]) -> (u64, &'static str) {
    alt::has!(popcnt => count_bits_popcnt(words), _ => count_bits_portable(words))
}

#[target_feature(enable = "popcnt")]
fn count_bits_popcnt(words: &[u64]) -> (u64, &'static str) {
    (
        words.iter().map(|w| u64::from(w.count_ones())).sum(),
        "popcnt",
    )
}

fn count_bits_portable(words: &[u64]) -> (u64, &'static str) {
    let mut n = 0;
    for &w in words {
        n += popcount(w);
    }
    (n, "portable")
}

/// `a / b` with the AMD DIV0 workaround wherever a CPU may need it: a harmless `0 / 1` after the
/// division, so that no later faulting division can see this quotient (as Linux's
/// `amd_clear_divider`). Returns the quotient and whether the workaround ran.
pub fn divide(a: u64, b: u64) -> (u64, bool) {
    let q = a / b;
    if alt::has!(erratum_amd_div0) {
        core::hint::black_box(core::hint::black_box(0u64) / core::hint::black_box(1u64));
        (q, true)
    } else {
        (q, false)
    }
}

/// The kernel's capability branches, as the boot log shows them:
/// `popcnt=B lzcnt=B erratum_amd_div0=B count=ARM divide=plain|workaround`.
pub struct Branches {
    popcnt: bool,
    lzcnt: bool,
    erratum_amd_div0: bool,
    count: &'static str,
    workaround: bool,
}

impl Branches {
    /// Asks every branch now.
    pub fn now() -> Branches {
        let words = [0x0123_4567_89ab_cdefu64, u64::MAX, 0x10];
        let (bits, count) = count_bits(core::hint::black_box(&words));
        let (q, workaround) = divide(core::hint::black_box(1_000_003), 7);
        assert_eq!((bits, q), (32 + 64 + 1, 142_857));
        Branches {
            popcnt: alt::has!(popcnt),
            lzcnt: alt::has!(lzcnt),
            erratum_amd_div0: alt::has!(erratum_amd_div0),
            count,
            workaround,
        }
    }
}

impl core::fmt::Display for Branches {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "popcnt={} lzcnt={} erratum_amd_div0={} count={} divide={}",
            self.popcnt,
            self.lzcnt,
            self.erratum_amd_div0,
            self.count,
            if self.workaround {
                "workaround"
            } else {
                "plain"
            }
        )
    }
}

/// Runs every function on fixed inputs; returns the checksum of the results.
pub fn run() -> u64 {
    RUNS.fetch_add(1, Ordering::AcqRel);
    let mut sum = Checksum::new();
    alt_demo::run(&mut sum);

    let words: [u64; 4] = [0xff, 0x8000_0000_0000_0001, 0, 0x5555];
    let (bits, _) = count_bits(core::hint::black_box(&words));
    sum.add(bits);
    sum.add(divide(core::hint::black_box(u64::MAX), 3).0);

    for v in crate::pv::run(16) {
        sum.add(v);
    }
    sum.value()
}
