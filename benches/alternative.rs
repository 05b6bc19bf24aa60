//! What a patched `#[alternative]` site costs against the other ways of choosing CPU-specific
//! code at run time, and against the code compiled for the CPU.
//!
//! `cargo bench --bench alternative` runs two workloads and prints, for each way, the median
//! ns per unit of work and its ratio to native code, all measured in the same run: samples are
//! taken in interleaved rounds (one of each way per round), each timed in the thread's CPU
//! time, 101 rounds (`ALT_BENCH_ROUNDS` to choose).
//!
//! 1. **One instruction at many call sites**: the sum of `popcount(x) + leading_zeros(x)` over
//!    8,192 words (64 KiB, so the loop measures the code and not the memory); the loop body
//!    handles four words, so it has 8 call sites. Per call:
//!    - native: the loop compiled with POPCNT and LZCNT (`#[target_feature]`, called directly;
//!      the reference);
//!    - `#[alternative(popcnt => unsafe inline("popcnt {ret}, {x}"))]` (and `lzcnt`), patched:
//!      each call site is the instruction;
//!    - the same sites with direct-call variants (`popcnt => popcount_popcnt`): each site is a
//!      `call` of a `#[target_feature]` function;
//!    - `is_x86_feature_detected!` per call, then a `#[target_feature]` function (which cannot
//!      be inlined into code compiled without the feature);
//!    - a function pointer chosen once (a static `AtomicPtr`, first pointing to a resolver that
//!      stores the choice), called through it;
//!    - the `multiversion` crate: `#[multiversion(targets("x86_64+popcnt"))]` on the operation,
//!      its default run-time dispatcher;
//!    - the `static-keys` crate: `if static_branch_likely!(KEY)` (a NOP or `jmp` patched by
//!      `KEY.enable()`) choosing the `#[target_feature]` function, and choosing an `asm!`
//!      instruction (what an `#[alternative]` inline replacement is);
//!    - the choice made once per loop (`alt::has!`, `multiversion` on the loop, a static key
//!      choosing the loop): the loop itself is native code;
//!    - the `#[alternative]` sites before patching (reverted for those samples: what a CPU
//!      without the feature runs), and the portable loop (baseline x86-64).
//! 2. **A heavier operation**: CRC-32C of a 16 KiB buffer in 64-byte blocks, one call per
//!    block, each call chained on the previous CRC; the SSE4.2 `crc32` variant against a
//!    byte-wise table. The same ways, less those that do not apply (below).
//!
//! Not a test: nothing is asserted but that every way computes the same result. Numbers depend
//! on the machine; without POPCNT, LZCNT or SSE4.2 the workload that needs it is skipped.

use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering};

use alt::alternative;
use multiversion::multiversion;
use static_keys::{define_static_key_false, static_branch_likely};

mod common;

use common::{Around, Interleaved};

const WORDS: usize = 8192;
const BIT_PASSES: usize = 20;
const BLOCKS: usize = 256;
const CRC_PASSES: usize = 20;

// ---------------------------------------------------------------------------------------------
// Workload 1: popcount + leading zeros of each word.

/// The loop every per-call way shares, with its 8 call sites; inlined into each way's function
/// so that each gets its own copy of the loop.
#[inline(always)]
fn bits(xs: &[u64], pop: impl Fn(u64) -> u64, lz: impl Fn(u64) -> u64) -> u64 {
    let mut sum = 0u64;
    for c in xs.chunks_exact(4) {
        sum += pop(c[0]) + lz(c[0]);
        sum += pop(c[1]) + lz(c[1]);
        sum += pop(c[2]) + lz(c[2]);
        sum += pop(c[3]) + lz(c[3]);
    }
    sum
}

fn pop_portable(x: u64) -> u64 {
    u64::from(x.count_ones())
}

fn lz_portable(x: u64) -> u64 {
    u64::from(x.leading_zeros())
}

#[target_feature(enable = "popcnt")]
fn pop_popcnt(x: u64) -> u64 {
    u64::from(x.count_ones())
}

#[target_feature(enable = "lzcnt")]
fn lz_lzcnt(x: u64) -> u64 {
    u64::from(x.leading_zeros())
}

// Native: the loop compiled with the features.

#[target_feature(enable = "popcnt,lzcnt")]
#[inline(never)]
fn bits_native(xs: &[u64]) -> u64 {
    bits(xs, pop_portable, lz_portable)
}

#[inline(never)]
fn bits_portable(xs: &[u64]) -> u64 {
    bits(xs, pop_portable, lz_portable)
}

// alt: one site per call.

#[alternative(
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
fn pop_site(x: u64) -> u64 {
    u64::from(x.count_ones())
}

#[alternative(
    // SAFETY: LZCNT writes only its destination (the result) and the flags.
    lzcnt => unsafe inline("lzcnt {ret}, {x}")
)]
fn lz_site(x: u64) -> u64 {
    u64::from(x.leading_zeros())
}

#[inline(never)]
fn bits_site(xs: &[u64]) -> u64 {
    bits(xs, pop_site, lz_site)
}

#[alternative(popcnt => pop_popcnt)]
fn pop_site_call(x: u64) -> u64 {
    u64::from(x.count_ones())
}

#[alternative(lzcnt => lz_lzcnt)]
fn lz_site_call(x: u64) -> u64 {
    u64::from(x.leading_zeros())
}

#[inline(never)]
fn bits_site_call(xs: &[u64]) -> u64 {
    bits(xs, pop_site_call, lz_site_call)
}

// is_x86_feature_detected! per call.

fn pop_detected(x: u64) -> u64 {
    if std::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT.
        unsafe { pop_popcnt(x) }
    } else {
        pop_portable(x)
    }
}

fn lz_detected(x: u64) -> u64 {
    if std::is_x86_feature_detected!("lzcnt") {
        // SAFETY: the CPU has LZCNT.
        unsafe { lz_lzcnt(x) }
    } else {
        lz_portable(x)
    }
}

#[inline(never)]
fn bits_detected(xs: &[u64]) -> u64 {
    bits(xs, pop_detected, lz_detected)
}

// A function pointer chosen once: the static first points to a resolver, which stores the
// choice and calls it.

type Op = unsafe fn(u64) -> u64;

static POP_PTR: AtomicPtr<()> = AtomicPtr::new(pop_resolve as Op as *mut ());
static LZ_PTR: AtomicPtr<()> = AtomicPtr::new(lz_resolve as Op as *mut ());

unsafe fn pop_resolve(x: u64) -> u64 {
    let f: Op = if std::is_x86_feature_detected!("popcnt") {
        pop_popcnt
    } else {
        pop_portable
    };
    POP_PTR.store(f as *mut (), Ordering::Relaxed);
    // SAFETY: `pop_popcnt` was chosen only where the CPU has POPCNT.
    unsafe { f(x) }
}

unsafe fn lz_resolve(x: u64) -> u64 {
    let f: Op = if std::is_x86_feature_detected!("lzcnt") {
        lz_lzcnt
    } else {
        lz_portable
    };
    LZ_PTR.store(f as *mut (), Ordering::Relaxed);
    // SAFETY: `lz_lzcnt` was chosen only where the CPU has LZCNT.
    unsafe { f(x) }
}

fn pop_pointer(x: u64) -> u64 {
    // SAFETY: the static only ever holds an `Op` (a resolver, or what it chose for this CPU).
    unsafe {
        let f: Op = std::mem::transmute::<*mut (), Op>(POP_PTR.load(Ordering::Relaxed));
        f(x)
    }
}

fn lz_pointer(x: u64) -> u64 {
    // SAFETY: the static only ever holds an `Op` (a resolver, or what it chose for this CPU).
    unsafe {
        let f: Op = std::mem::transmute::<*mut (), Op>(LZ_PTR.load(Ordering::Relaxed));
        f(x)
    }
}

#[inline(never)]
fn bits_pointer(xs: &[u64]) -> u64 {
    bits(xs, pop_pointer, lz_pointer)
}

// multiversion: the operation multiversioned, or the loop.

#[multiversion(targets("x86_64+popcnt"))]
fn pop_mv(x: u64) -> u64 {
    u64::from(x.count_ones())
}

#[multiversion(targets("x86_64+lzcnt"))]
fn lz_mv(x: u64) -> u64 {
    u64::from(x.leading_zeros())
}

#[inline(never)]
fn bits_mv(xs: &[u64]) -> u64 {
    bits(xs, pop_mv, lz_mv)
}

#[multiversion(targets("x86_64+popcnt+lzcnt"))]
fn bits_mv_loop(xs: &[u64]) -> u64 {
    bits(xs, pop_portable, lz_portable)
}

// static-keys: a patched branch per call (to the function, or to the instruction), or per
// loop.

define_static_key_false!(POPCNT_KEY);
define_static_key_false!(LZCNT_KEY);
define_static_key_false!(POPCNT_LZCNT_KEY);

fn pop_key(x: u64) -> u64 {
    if static_branch_likely!(POPCNT_KEY) {
        // SAFETY: the key is enabled only where the CPU has POPCNT.
        unsafe { pop_popcnt(x) }
    } else {
        pop_portable(x)
    }
}

fn lz_key(x: u64) -> u64 {
    if static_branch_likely!(LZCNT_KEY) {
        // SAFETY: the key is enabled only where the CPU has LZCNT.
        unsafe { lz_lzcnt(x) }
    } else {
        lz_portable(x)
    }
}

#[inline(never)]
fn bits_key(xs: &[u64]) -> u64 {
    bits(xs, pop_key, lz_key)
}

fn pop_key_asm(x: u64) -> u64 {
    if static_branch_likely!(POPCNT_KEY) {
        let r: u64;
        // SAFETY: the key is enabled only where the CPU has POPCNT, which writes only its
        // destination and the flags.
        unsafe {
            std::arch::asm!("popcnt {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack))
        };
        r
    } else {
        pop_portable(x)
    }
}

fn lz_key_asm(x: u64) -> u64 {
    if static_branch_likely!(LZCNT_KEY) {
        let r: u64;
        // SAFETY: the key is enabled only where the CPU has LZCNT, which writes only its
        // destination and the flags.
        unsafe {
            std::arch::asm!("lzcnt {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack))
        };
        r
    } else {
        lz_portable(x)
    }
}

#[inline(never)]
fn bits_key_asm(xs: &[u64]) -> u64 {
    bits(xs, pop_key_asm, lz_key_asm)
}

fn bits_key_loop(xs: &[u64]) -> u64 {
    if static_branch_likely!(POPCNT_LZCNT_KEY) {
        // SAFETY: the key is enabled only where the CPU has POPCNT and LZCNT.
        unsafe { bits_native(xs) }
    } else {
        bits_portable(xs)
    }
}

// alt::has! per loop.

fn bits_has_loop(xs: &[u64]) -> u64 {
    if alt::has!(popcnt) && alt::has!(lzcnt) {
        // SAFETY: patching makes both true only where every CPU has POPCNT and LZCNT.
        unsafe { bits_native(xs) }
    } else {
        bits_portable(xs)
    }
}

// ---------------------------------------------------------------------------------------------
// Workload 2: CRC-32C (Castagnoli, reflected) of 64-byte blocks.

type Block = [u8; 64];

/// The byte-wise table of the reflected polynomial 0x82f63b78.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc_portable(crc: u32, block: &Block) -> u32 {
    block.iter().fold(crc, |c, &b| {
        CRC_TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8)
    })
}

#[target_feature(enable = "sse4.2")]
fn crc_sse42(crc: u32, block: &Block) -> u32 {
    use std::arch::x86_64::_mm_crc32_u64;
    let mut c = u64::from(crc);
    for w in block.chunks_exact(8) {
        let w: [u8; 8] = w.try_into().unwrap_or_default();
        c = _mm_crc32_u64(c, u64::from_le_bytes(w));
    }
    c as u32
}

/// The chain every per-call way shares: one call per block.
#[inline(always)]
fn crc_chain(blocks: &[Block], f: impl Fn(u32, &Block) -> u32) -> u64 {
    u64::from(blocks.iter().fold(!0u32, f))
}

#[target_feature(enable = "sse4.2")]
#[inline(never)]
fn crc_native(blocks: &[Block]) -> u64 {
    crc_chain(blocks, |c, b| crc_sse42(c, b))
}

#[inline(never)]
fn crc_chain_portable(blocks: &[Block]) -> u64 {
    crc_chain(blocks, crc_portable)
}

// A patchable function takes raw pointers: the site is an unsafe function wrapped in a safe
// one.
#[alternative(sse4.2 => crc_sse42_raw)]
unsafe fn crc_site_raw(crc: u32, block: *const Block) -> u32 {
    // SAFETY: the caller passes a valid block.
    crc_portable(crc, unsafe { &*block })
}

/// # Safety
///
/// `block` is valid; the CPU has SSE4.2.
#[target_feature(enable = "sse4.2")]
unsafe fn crc_sse42_raw(crc: u32, block: *const Block) -> u32 {
    // SAFETY: the caller passes a valid block.
    crc_sse42(crc, unsafe { &*block })
}

fn crc_site(crc: u32, block: &Block) -> u32 {
    // SAFETY: a reference is a valid pointer.
    unsafe { crc_site_raw(crc, block) }
}

#[inline(never)]
fn crc_chain_site(blocks: &[Block]) -> u64 {
    crc_chain(blocks, crc_site)
}

fn crc_detected(crc: u32, block: &Block) -> u32 {
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2.
        unsafe { crc_sse42(crc, block) }
    } else {
        crc_portable(crc, block)
    }
}

#[inline(never)]
fn crc_chain_detected(blocks: &[Block]) -> u64 {
    crc_chain(blocks, crc_detected)
}

type CrcOp = unsafe fn(u32, &Block) -> u32;

static CRC_PTR: AtomicPtr<()> = AtomicPtr::new(crc_resolve as CrcOp as *mut ());

unsafe fn crc_resolve(crc: u32, block: &Block) -> u32 {
    let f: CrcOp = if std::is_x86_feature_detected!("sse4.2") {
        crc_sse42
    } else {
        crc_portable
    };
    CRC_PTR.store(f as *mut (), Ordering::Relaxed);
    // SAFETY: `crc_sse42` was chosen only where the CPU has SSE4.2.
    unsafe { f(crc, block) }
}

fn crc_pointer(crc: u32, block: &Block) -> u32 {
    // SAFETY: the static only ever holds a `CrcOp` (the resolver, or what it chose).
    unsafe {
        let f: CrcOp = std::mem::transmute::<*mut (), CrcOp>(CRC_PTR.load(Ordering::Relaxed));
        f(crc, block)
    }
}

#[inline(never)]
fn crc_chain_pointer(blocks: &[Block]) -> u64 {
    crc_chain(blocks, crc_pointer)
}

define_static_key_false!(SSE42_KEY);

fn crc_key(crc: u32, block: &Block) -> u32 {
    if static_branch_likely!(SSE42_KEY) {
        // SAFETY: the key is enabled only where the CPU has SSE4.2.
        unsafe { crc_sse42(crc, block) }
    } else {
        crc_portable(crc, block)
    }
}

#[inline(never)]
fn crc_chain_key(blocks: &[Block]) -> u64 {
    crc_chain(blocks, crc_key)
}

// ---------------------------------------------------------------------------------------------

/// Around each sample of the unpatched way: every site reverted before, patched again after.
const UNPATCHED: Option<Around> = Some(Around {
    before: || alt::process::revert_self().expect("revert the sites"),
    after: || {
        alt::process::patch_self().expect("patch the sites again");
    },
});

fn rounds() -> usize {
    std::env::var("ALT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(101)
}

fn main() {
    let (popcnt, lzcnt, sse42) = (
        std::is_x86_feature_detected!("popcnt"),
        std::is_x86_feature_detected!("lzcnt"),
        std::is_x86_feature_detected!("sse4.2"),
    );

    // Load-time patching has run; say what it chose for the sites measured here.
    let report = alt::process::patch_self().expect("patching");
    let decision = |name: &str| {
        report
            .sites
            .iter()
            .find(|s| s.function.is_some_and(|f| f.ends_with(name)))
            .map_or("?", |s| s.decision())
    };
    println!(
        "sites: pop_site {}, lz_site {}, crc_site_raw {}",
        decision("::pop_site"),
        decision("::lz_site"),
        decision("::crc_site_raw")
    );

    static_keys::global_init();
    // SAFETY: no other thread runs yet; each key is enabled only where the CPU has the feature.
    unsafe {
        if popcnt {
            POPCNT_KEY.enable();
        }
        if lzcnt {
            LZCNT_KEY.enable();
        }
        if popcnt && lzcnt {
            POPCNT_LZCNT_KEY.enable();
        }
        if sse42 {
            SSE42_KEY.enable();
        }
    }
    let rounds = rounds();

    if popcnt && lzcnt {
        let xs: Vec<u64> = (0..WORDS as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 61))
            .collect();
        let xs = &xs[..];
        let mut b = Interleaved::new(WORDS, BIT_PASSES);
        // SAFETY: the CPU has POPCNT and LZCNT (checked above).
        b.add("native: the loop compiled with POPCNT+LZCNT", || unsafe {
            bits_native(black_box(xs))
        });
        b.add("#[alternative] sites, inline, patched", || {
            bits_site(black_box(xs))
        });
        b.add("#[alternative] sites, direct call, patched", || {
            bits_site_call(black_box(xs))
        });
        b.add("is_x86_feature_detected! per call", || {
            bits_detected(black_box(xs))
        });
        b.add("function pointer (AtomicPtr) per call", || {
            bits_pointer(black_box(xs))
        });
        b.add("multiversion per call", || bits_mv(black_box(xs)));
        b.add("static-keys per call, #[target_feature] fn", || {
            bits_key(black_box(xs))
        });
        b.add("static-keys per call, asm! instruction", || {
            bits_key_asm(black_box(xs))
        });
        b.add("alt::has! once per loop", || bits_has_loop(black_box(xs)));
        b.add("multiversion once per loop", || bits_mv_loop(black_box(xs)));
        b.add("static-keys once per loop", || bits_key_loop(black_box(xs)));
        b.add_around(
            "#[alternative] sites, not patched (defaults)",
            UNPATCHED,
            || bits_site(black_box(xs)),
        );
        b.add("portable loop (baseline x86-64)", || {
            bits_portable(black_box(xs))
        });
        b.run(rounds);
        println!(
            "popcount + leading zeros of {WORDS} words (8 call sites in the loop), \
             {BIT_PASSES} passes per sample, median of {rounds}, thread CPU time:"
        );
        b.print("word");
    } else {
        println!("no POPCNT and LZCNT: the popcount workload is skipped");
    }

    if sse42 {
        let bytes: Vec<u8> = (0..BLOCKS * 64)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        let blocks: Vec<Block> = bytes
            .chunks_exact(64)
            .map(|c| c.try_into().unwrap_or([0; 64]))
            .collect();
        let blocks = &blocks[..];
        let mut b = Interleaved::new(BLOCKS, CRC_PASSES);
        // SAFETY: the CPU has SSE4.2 (checked above).
        b.add("native: the chain compiled with SSE4.2", || unsafe {
            crc_native(black_box(blocks))
        });
        b.add("#[alternative] site, direct call, patched", || {
            crc_chain_site(black_box(blocks))
        });
        b.add("is_x86_feature_detected! per call", || {
            crc_chain_detected(black_box(blocks))
        });
        b.add("function pointer (AtomicPtr) per call", || {
            crc_chain_pointer(black_box(blocks))
        });
        b.add("static-keys per call, #[target_feature] fn", || {
            crc_chain_key(black_box(blocks))
        });
        b.add_around(
            "#[alternative] site, not patched (default)",
            UNPATCHED,
            || crc_chain_site(black_box(blocks)),
        );
        b.add("portable: byte-wise table", || {
            crc_chain_portable(black_box(blocks))
        });
        b.run(rounds);
        println!(
            "CRC-32C of {BLOCKS} 64-byte blocks (one call per block, chained), {CRC_PASSES} \
             passes per sample, median of {rounds}, thread CPU time:"
        );
        b.print("block");
        println!(
            "  (multiversion does not apply: it compiles one portable body per target, and no \
             portable spelling of CRC-32C becomes the crc32 instruction)"
        );
    } else {
        println!("no SSE4.2: the CRC-32C workload is skipped");
    }
}
