//! The demo code of `alt`, shared by `examples/quickstart.rs`, `examples/threads.rs`,
//! `examples/paravirt.rs`, `benches/startup.rs` and the test kernel (`kernel/`): a handful of
//! hot functions whose call sites are patched for the CPU, a fixed workload over them, and
//! ([`pv`]) the paravirt example's native operations and operations table.
//!
//! `no_std`: the kernel runs the same functions as the hosted programs. The crate patches
//! nothing itself. Its sites are compiled into the program that calls the functions, which
//! patches them with its own: a hosted binary at load (the library's sites are the binary's),
//! the kernel at boot. A site is named by where the macro stands, so the reports name
//! `alt_demo::popcount`, and `alt_demo:LINE` for the bare `alt::asm::alternative!` sites.
//!
//! The results ([`run`]'s checksum) are the same whatever each site holds; what changes is the
//! code that computes them.

#![no_std]

use alt::alternative;

pub mod pv;

/// Number of set bits.
#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
pub fn popcount(x: u64) -> u64 {
    // Portable: the classic SWAR count, no POPCNT instruction.
    let x = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    x.wrapping_mul(0x0101_0101_0101_0101) >> 56
}

/// Leading zero bits (64 for 0).
#[alternative(
    // SAFETY: LZCNT writes only its destination (the result) and the flags; it gives 64 for 0,
    // as the default does.
    lzcnt => unsafe inline("lzcnt {ret}, {x}")
)]
pub fn leading_zeros(x: u64) -> u64 {
    if x == 0 {
        return 64;
    }
    let mut n = 0;
    let mut v = x;
    while v & (1 << 63) == 0 {
        v <<= 1;
        n += 1;
    }
    n
}

/// Trailing zero bits (64 for 0).
#[alternative(
    // SAFETY: TZCNT writes only its destination (the result) and the flags; it gives 64 for 0,
    // as the default does.
    bmi1 => unsafe inline("tzcnt {ret}, {x}")
)]
pub fn trailing_zeros(x: u64) -> u64 {
    if x == 0 {
        return 64;
    }
    let mut n = 0;
    let mut v = x;
    while v & 1 == 0 {
        v >>= 1;
        n += 1;
    }
    n
}

/// Copies `len` bytes: `rep movsb` where the CPU says it is fast (FSRM for short copies, ERMS),
/// a byte loop otherwise.
///
/// # Safety
///
/// `dst` and `src` must be valid for `len` bytes and must not overlap.
#[alternative(
    // SAFETY: `rep movsb` copies rcx bytes from [rsi] to [rdi], which the caller's contract makes
    // valid and disjoint; it changes rcx, rsi and rdi, declared in `clobber`, and the direction
    // flag is clear as the ABI requires.
    fsrm => unsafe inline("mov rcx, rdx", "rep movsb"),
    // SAFETY: as above.
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
    // SAFETY: SSE2 is part of x86-64; loads stay inside the caller's buffer.
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
    // SAFETY: only called where AVX2 is present (the site's key), which the capability probe
    // reports only where the AVX state is enabled (by the OS, or the kernel's boot code in
    // XCR0); loads stay inside the caller's buffer.
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

/// Flushes the cache line holding `byte`: `clflushopt` where available, `clflush` otherwise.
/// (A reference, not a raw pointer: flushing an unmapped address faults.)
#[inline(always)]
pub fn flush_line(byte: &u8) {
    let p: *const u8 = byte;
    // SAFETY: `p` points at a byte the caller can read, so its line is mapped; flushing it
    // writes it back if dirty and has no other effect.
    unsafe {
        alt::asm::alternative!(
            "clflush byte ptr [{0}]",
            clflushopt => "clflushopt byte ptr [{0}]",
            in(reg) p,
            options(nostack)
        )
    };
}

/// FNV-1a over 64-bit words: what the workloads fold their results into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    /// The FNV-1a offset basis.
    pub const fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    /// Folds the eight bytes of `v` in.
    pub fn add(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }

    /// The checksum so far.
    pub const fn value(self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum::new()
    }
}

/// What one [`run`] computed, besides the checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Set bits counted by [`popcount`] over the inputs.
    pub bits: u64,
    /// Bytes copied by [`copy_bytes`].
    pub copied: u64,
    /// The sum of every [`sum_bytes`] result.
    pub byte_sum: u64,
}

/// Calls with a result that one [`run`] folds into the checksum: [`popcount`],
/// [`leading_zeros`] and [`trailing_zeros`] of 8 values, 6 copies and 6 sums (its barriers have
/// no result).
pub const RUN_CALLS: u64 = 8 * 3 + 6 + 6;

const SRC_LEN: usize = 4099;

/// Runs every function but [`flush_line`] on fixed inputs, folding each result into `sum`.
/// Panics if a copy is wrong (a wrongly patched site).
pub fn run(sum: &mut Checksum) -> Summary {
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
    let mut summary = Summary::default();
    for &v in &values {
        let v = core::hint::black_box(v);
        let (p, l, t) = (popcount(v), leading_zeros(v), trailing_zeros(v));
        sum.add(p);
        sum.add(l);
        sum.add(t);
        summary.bits += p;
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
        summary.copied += len as u64;
        sum.add(dst.iter().map(|&b| u64::from(b)).sum());
    }

    for len in [0usize, 15, 16, 33, 1000, SRC_LEN] {
        speculation_barrier();
        // SAFETY: `src` holds SRC_LEN >= len bytes.
        let s = unsafe { sum_bytes(src.as_ptr(), len) };
        sum.add(s);
        summary.byte_sum += s;
    }
    summary
}
