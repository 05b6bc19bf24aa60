//! The quickstart: a handful of hot functions whose call sites patch themselves at start-up.
//!
//! ```text
//! cargo run --release --example quickstart            # report, results, checksum
//! cargo run --release --example quickstart -- --json  # one JSON object
//! cargo run --release --example quickstart -- --no-patch
//! cargo run --release --example quickstart -- --strict-wx   # no page ever writable
//! qemu-x86_64 -cpu Nehalem target/release/examples/quickstart --blocking-threads-run-no-sites
//! ALT_CLEARCPUID=popcnt,avx2 cargo run --release --example quickstart
//! ALT_PATCH=off cargo run --release --example quickstart     # every default
//! ```
//!
//! Each function's body is its portable default. The program calls nothing to patch: when it is
//! loaded, before `main`, the runtime probes every CPU and rewrites each call site once: the
//! POPCNT/LZCNT/TZCNT instruction inline, `rep movsb` inline where ERMS/FSRM say it is fast, a
//! direct call to the AVX2 sum, an `lfence` only where it serialises dispatch;
//! `alt::process::report()` says what it did. The results (and their checksum) are the same
//! whatever was chosen; what changes is the code that computes them.
//!
//! `--no-patch` reverts every site to its default; `--strict-wx` patches again without making a
//! page writable; `--blocking-threads-run-no-sites` patches again leaving running the threads
//! that block every signal (under qemu-user its helper thread, which keeps patching at load from
//! stopping it, and runs no guest code).

use alt::alternative;

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
    // SAFETY: only called where AVX2 is present (the site's key); loads stay in bounds.
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

/// Flushes the cache line holding `p`: `clflushopt` where available, `clflush` otherwise.
#[inline(always)]
pub fn flush_line(p: *const u8) {
    // SAFETY: flushing a line of memory the caller can read has no other effect.
    unsafe {
        alt::asm::alternative!(
            "clflush byte ptr [{0}]",
            clflushopt => "clflushopt byte ptr [{0}]",
            in(reg) p,
            options(nostack)
        )
    };
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

/// Runs every function on fixed inputs; returns the checksum of the results and a summary.
pub fn run() -> (u64, Vec<(&'static str, u64)>) {
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
    let mut bits = 0;
    for &v in &values {
        let v = std::hint::black_box(v);
        let (p, l, t) = (popcount(v), leading_zeros(v), trailing_zeros(v));
        sum.add(p);
        sum.add(l);
        sum.add(t);
        bits += p;
    }

    let src: Vec<u8> = (0..4099u32)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 3)) as u8)
        .collect();
    let mut copied = 0;
    for len in [0usize, 1, 7, 64, 255, 4099] {
        let mut dst = vec![0u8; len];
        // SAFETY: both buffers hold at least `len` bytes and do not overlap.
        unsafe { copy_bytes(dst.as_mut_ptr(), src.as_ptr(), len) };
        assert_eq!(dst[..], src[..len], "copy of {len} bytes");
        copied += len as u64;
        sum.add(dst.iter().map(|&b| u64::from(b)).sum());
    }

    let mut total = 0;
    for len in [0usize, 15, 16, 33, 1000, 4099] {
        speculation_barrier();
        // SAFETY: `src` holds 4099 bytes.
        let s = unsafe { sum_bytes(src.as_ptr(), len) };
        sum.add(s);
        total += s;
    }
    flush_line(src.as_ptr());
    (
        sum.0,
        vec![
            ("bits counted", bits),
            ("bytes copied", copied),
            ("byte sum", total),
        ],
    )
}

fn main() {
    use alt::process::{patch_self_with, revert_self_with, LoadOutcome, PatchOptions};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let json = has("--json");
    let mut options = PatchOptions::new();
    let mut again = false;
    if has("--strict-wx") {
        // Never make a page writable: write through /proc/self/mem.
        options = options.strict_wx();
        again = true;
    }
    if has("--blocking-threads-run-no-sites") {
        // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal and never
        // runs guest code; this program starts no thread of its own.
        options = unsafe { options.assume_blocking_threads_run_no_sites() };
        again = true;
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("quickstart: {what}: {e}");
        std::process::exit(1);
    };

    // Patched when loaded, before main: nothing to call.
    let load = alt::process::report();
    let mut report = load.and_then(LoadOutcome::report).cloned();
    if again && !matches!(load, Some(LoadOutcome::Skipped(_))) {
        // Patch again as the options say (ALT_PATCH=off still keeps every default).
        if report.is_some() {
            revert_self_with(&options).unwrap_or_else(|e| fail("revert", &e));
        }
        let repatched = patch_self_with(&options).unwrap_or_else(|e| fail("patch", &e));
        report = Some(alt::report::Report::clone(&repatched));
    }
    if has("--no-patch") && report.take().is_some() {
        revert_self_with(&options).unwrap_or_else(|e| fail("revert", &e));
    }
    if let (None, Some(LoadOutcome::Failed(e)), false) = (&report, load, has("--no-patch")) {
        // The process runs on with every default; the demo says why and fails.
        fail("not patched at load", e);
    }
    let patched = report.is_some();
    let (checksum, summary) = run();

    if json {
        let report = report.map_or(String::from("null"), |r| r.to_json());
        println!("{{\"patched\":{patched},\"checksum\":{checksum},\"report\":{report}}}");
    } else {
        match &report {
            Some(r) => println!("{r}\n"),
            None => println!("(not patched: every site runs its default)\n"),
        }
        for (what, n) in summary {
            println!("{what:>14}: {n}");
        }
        println!("{:>14}: {checksum:#018x}", "checksum");
    }
}
