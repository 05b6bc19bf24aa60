//! The kernel's patchable functions and a fixed workload over them. The results (and their
//! checksum) are the same whatever each site holds; what changes is the code computing them.

use core::sync::atomic::{AtomicU32, Ordering};

use alt::alternative;

/// How many times [`run`] was called, on any CPU: a CPU that never calls it runs no site.
pub static RUNS: AtomicU32 = AtomicU32::new(0);

/// Number of set bits.
#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
pub fn popcount(x: u64) -> u64 {
    let x = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    x.wrapping_mul(0x0101_0101_0101_0101) >> 56
}

/// Leading zero bits (64 for 0).
#[alternative(
    // SAFETY: LZCNT writes only its destination (the result) and the flags; 64 for 0, as the
    // default.
    lzcnt => unsafe inline("lzcnt {ret}, {x}")
)]
pub fn leading_zeros(x: u64) -> u64 {
    let mut n = 0;
    let mut v = x;
    while n < 64 && v & (1 << 63) == 0 {
        v <<= 1;
        n += 1;
    }
    n
}

/// Trailing zero bits (64 for 0).
#[alternative(
    // SAFETY: TZCNT writes only its destination (the result) and the flags; 64 for 0, as the
    // default.
    bmi1 => unsafe inline("tzcnt {ret}, {x}")
)]
pub fn trailing_zeros(x: u64) -> u64 {
    let mut n = 0;
    let mut v = x;
    while n < 64 && v & 1 == 0 {
        v >>= 1;
        n += 1;
    }
    n
}

/// Copies `len` bytes: `rep movsb` where ERMS says it is fast, a byte loop otherwise.
///
/// # Safety
///
/// `dst` and `src` must be valid for `len` bytes and must not overlap.
#[alternative(
    // SAFETY: `rep movsb` copies rcx bytes from [rsi] to [rdi], valid and disjoint by the
    // caller's contract; it changes rcx, rsi and rdi, declared in `clobber`.
    erms => unsafe inline("mov rcx, rdx", "rep movsb"),
    clobber(rcx, rdi, rsi)
)]
pub unsafe fn copy_bytes(dst: *mut u8, src: *const u8, len: usize) {
    let mut i = 0;
    while i < len {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), *src.add(i)) };
        i += 1;
    }
}

/// Sum of `len` bytes: an AVX2 implementation by direct call over the SSE2 default.
///
/// # Safety
///
/// `ptr` must be valid for `len` bytes.
#[alternative(avx2 => sum_bytes_avx2)]
pub unsafe fn sum_bytes(ptr: *const u8, len: usize) -> u64 {
    use core::arch::x86_64::*;
    let mut total = 0u64;
    let mut i = 0;
    // SAFETY: SSE2 is part of x86-64 (enabled at boot); loads stay inside the caller's buffer.
    unsafe {
        let zero = _mm_setzero_si128();
        let mut acc = _mm_setzero_si128();
        while i + 16 <= len {
            let v = _mm_loadu_si128(ptr.add(i) as *const __m128i);
            acc = _mm_add_epi64(acc, _mm_sad_epu8(v, zero));
            i += 16;
        }
        let mut lanes = [0u64; 2];
        _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, acc);
        total += lanes[0] + lanes[1];
        while i < len {
            total += u64::from(*ptr.add(i));
            i += 1;
        }
    }
    total
}

#[target_feature(enable = "avx2")]
unsafe fn sum_bytes_avx2(ptr: *const u8, len: usize) -> u64 {
    use core::arch::x86_64::*;
    let mut total = 0u64;
    let mut i = 0;
    // SAFETY: only called where AVX2 is present (the site's key) and the boot code enabled the
    // AVX state in XCR0; loads stay inside the caller's buffer.
    unsafe {
        let zero = _mm256_setzero_si256();
        let mut acc = _mm256_setzero_si256();
        while i + 32 <= len {
            let v = _mm256_loadu_si256(ptr.add(i) as *const __m256i);
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, zero));
            i += 32;
        }
        let mut lanes = [0u64; 4];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
        total += lanes.iter().sum::<u64>();
        while i < len {
            total += u64::from(*ptr.add(i));
            i += 1;
        }
    }
    total
}

/// A speculation barrier only where `lfence` serialises dispatch (as Linux's `barrier_nospec`).
#[inline(always)]
pub fn speculation_barrier() {
    // SAFETY: either nothing or an lfence; no operands.
    unsafe { alt::asm::alternative!("", lfence_serializing => "lfence", options(nostack)) };
}

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

/// FNV-1a over 64-bit words.
struct Checksum(u64);

impl Checksum {
    fn add(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

const SRC_LEN: usize = 4099;

/// Runs every function on fixed inputs; returns the checksum of the results.
pub fn run() -> u64 {
    RUNS.fetch_add(1, Ordering::AcqRel);
    let mut sum = Checksum(0xcbf2_9ce4_8422_2325);
    let values: [u64; 8] = [
        0,
        1,
        0x8000_0000_0000_0000,
        0xff00_ff00_ff00_ff00,
        0x0123_4567_89ab_cdef,
        u64::MAX,
        0x10,
        0xdead_beef,
    ];
    for &v in &values {
        let v = core::hint::black_box(v);
        sum.add(popcount(v));
        sum.add(leading_zeros(v));
        sum.add(trailing_zeros(v));
    }

    let mut src = [0u8; SRC_LEN];
    for (i, b) in src.iter_mut().enumerate() {
        *b = ((i as u32).wrapping_mul(7) ^ (i as u32 >> 3)) as u8;
    }
    let mut dst = [0u8; SRC_LEN];
    for len in [0usize, 1, 7, 64, 255, SRC_LEN] {
        dst.fill(0);
        // SAFETY: both buffers hold SRC_LEN >= len bytes and do not overlap.
        unsafe { copy_bytes(dst.as_mut_ptr(), src.as_ptr(), len) };
        assert_eq!(dst[..len], src[..len], "copy of {len} bytes");
        sum.add(dst.iter().map(|&b| u64::from(b)).sum());
    }

    for len in [0usize, 15, 16, 33, 1000, SRC_LEN] {
        speculation_barrier();
        // SAFETY: `src` holds SRC_LEN >= len bytes.
        sum.add(unsafe { sum_bytes(src.as_ptr(), len) });
    }

    let words: [u64; 4] = [0xff, 0x8000_0000_0000_0001, 0, 0x5555];
    let (bits, _) = count_bits(core::hint::black_box(&words));
    sum.add(bits);
    sum.add(divide(core::hint::black_box(u64::MAX), 3).0);

    for v in crate::pv::run(16) {
        sum.add(v);
    }
    sum.0
}
