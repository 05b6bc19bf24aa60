//! `alt::has!`: capabilities as branches patched at load, and `#[target_feature]` functions run
//! safely under the branch that holds them.
//!
//! ```text
//! cargo run --release --example has                     # the answers, the arms taken, the report
//! cargo run --release --example has -- --json           # one JSON object
//! ALT_PATCH=off cargo run --release --example has       # unpatched: features false, errata true
//! cargo run --release --example has -- --revert         # also the answers after revert_self()
//! cargo run --release --example has -- --add erratum_amd_div0   # patch as if the CPU had it
//! qemu-x86_64 -cpu Nehalem target/release/examples/has --blocking-threads-run-no-sites
//! ```
//!
//! Each answer is one 5-byte site: a `jmp` to the other arm or a NOP. Until patching (and where
//! it is off) a feature answers false, the portable path every CPU runs, and an erratum answers
//! true, its workaround, applied until the system is known not to need it. The results of the
//! arms (and their checksum) are the same whatever ran.

use std::collections::BTreeMap;

use alt::has;

/// Every answer, each its own site, named as written.
fn answers() -> Vec<(&'static str, bool)> {
    vec![
        ("popcnt", has!(popcnt)),
        ("lzcnt", has!(lzcnt)),
        ("bmi1", has!(bmi1)),
        ("sse4.2", has!(sse4.2)),
        ("avx2", has!(avx2)),
        ("avx512f", has!(avx512f)),
        ("!popcnt", has!(!popcnt)),
        ("popcnt, unlikely", has!(popcnt, unlikely)),
        ("avx2, likely", has!(avx2, likely)),
        ("erratum_sysret_ss_attrs", has!(erratum_sysret_ss_attrs)),
        ("erratum_amd_div0", has!(erratum_amd_div0)),
        ("erratum_amd_div0, likely", has!(erratum_amd_div0, likely)),
        ("!erratum_amd_div0", has!(!erratum_amd_div0)),
    ]
}

/// Bits set in every word, with POPCNT (the compiler emits it for `count_ones` here).
#[target_feature(enable = "popcnt")]
fn count_popcnt(xs: &[u64]) -> (u64, &'static str) {
    (xs.iter().map(|x| u64::from(x.count_ones())).sum(), "popcnt")
}

/// Bits set in every word, for any x86-64.
fn count_portable(xs: &[u64]) -> (u64, &'static str) {
    (
        xs.iter().map(|x| u64::from(x.count_ones())).sum(),
        "portable",
    )
}

/// Sum of the bytes with AVX2 (`vpsadbw` over 32 bytes at a time): SIGILL without AVX2.
#[target_feature(enable = "avx2")]
fn sum_avx2(bytes: &[u8]) -> (u64, &'static str) {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_si256();
    let chunks = bytes.chunks_exact(32);
    let rest: u64 = chunks.remainder().iter().map(|&b| u64::from(b)).sum();
    for c in chunks {
        // SAFETY: `c` holds 32 bytes; the load is unaligned.
        let v = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, _mm256_setzero_si256()));
    }
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` holds 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
    (lanes.iter().sum::<u64>() + rest, "avx2")
}

/// Sum of the bytes with SSE4.1 (`ptest`, only to need the feature; `psadbw` is SSE2).
#[target_feature(enable = "sse4.1")]
fn sum_sse41(bytes: &[u8]) -> (u64, &'static str) {
    use std::arch::x86_64::*;
    let mut acc = _mm_setzero_si128();
    let chunks = bytes.chunks_exact(16);
    let rest: u64 = chunks.remainder().iter().map(|&b| u64::from(b)).sum();
    for c in chunks {
        // SAFETY: `c` holds 16 bytes; the load is unaligned.
        let v = unsafe { _mm_loadu_si128(c.as_ptr().cast()) };
        if _mm_testz_si128(v, v) == 0 {
            acc = _mm_add_epi64(acc, _mm_sad_epu8(v, _mm_setzero_si128()));
        }
    }
    let mut lanes = [0u64; 2];
    // SAFETY: `lanes` holds 16 bytes.
    unsafe { _mm_storeu_si128(lanes.as_mut_ptr().cast(), acc) };
    (lanes.iter().sum::<u64>() + rest, "sse4.1")
}

fn sum_portable(bytes: &[u8]) -> (u64, &'static str) {
    (bytes.iter().map(|&b| u64::from(b)).sum(), "portable")
}

/// A division with the AMD DIV0 workaround where the erratum may apply: a harmless `0 / 1`
/// afterwards, so that a later faulting division cannot see this quotient (as Linux's
/// `amd_clear_divider`).
fn divide_with_workaround(a: u64, b: u64) -> (u64, &'static str) {
    let q = a / b;
    std::hint::black_box(std::hint::black_box(0u64) / std::hint::black_box(1u64));
    (q, "workaround")
}

fn divide(a: u64, b: u64) -> (u64, &'static str) {
    (a / b, "plain")
}

/// Runs every arm form; returns the checksum of the results and which arm ran for each.
fn arms() -> (u64, Vec<(&'static str, &'static str)>) {
    let words: Vec<u64> = (0..1000u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let bytes: Vec<u8> = (0..4099u32).map(|i| ((i * 7) ^ (i >> 3)) as u8).collect();
    let (bits, bits_arm) = has!(popcnt => count_popcnt(&words), _ => count_portable(&words));
    let (sum, sum_arm) = has!(
        avx2 => sum_avx2(&bytes),
        sse4.1 => sum_sse41(&bytes),
        _ => sum_portable(&bytes),
    );
    let (q, div_arm) = has!(
        erratum_amd_div0 => divide_with_workaround(1_000_003, 7),
        _ => divide(1_000_003, 7),
    );
    assert_eq!(bits, count_portable(&words).0);
    assert_eq!(sum, sum_portable(&bytes).0);
    assert_eq!(q, 142_857);
    let checksum = bits.wrapping_mul(31).wrapping_add(sum).wrapping_mul(31) + q;
    (
        checksum,
        vec![
            ("popcnt", bits_arm),
            ("avx2, sse4.1", sum_arm),
            ("erratum_amd_div0", div_arm),
        ],
    )
}

fn json_map(pairs: &[(&str, String)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", items.join(","))
}

fn answers_json(a: &[(&str, bool)]) -> String {
    json_map(
        &a.iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect::<Vec<_>>(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let add = args
        .iter()
        .position(|a| a == "--add")
        .and_then(|i| args.get(i + 1));
    let mut options = alt::process::PatchOptions::new();
    if args.iter().any(|a| a == "--blocking-threads-run-no-sites") {
        // SAFETY: the flag is for qemu-user, whose helper thread blocks every signal and never
        // runs guest code; this program starts no thread of its own.
        options = unsafe { options.assume_blocking_threads_run_no_sites() };
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("has: {what}: {e}");
        std::process::exit(1)
    };

    // Patched at load, unless ALT_PATCH=off (or qemu-user's helper thread kept the defaults,
    // and --blocking-threads-run-no-sites patches now).
    let off = std::env::var("ALT_PATCH").is_ok_and(|v| v == "off" || v == "0");
    let mut report = if off {
        None
    } else {
        Some(alt::process::patch_self_with(&options).unwrap_or_else(|e| fail("patching", &e)))
    };
    if let Some(list) = add {
        // Patch again for the probed capabilities plus these (an erratum this CPU lacks).
        let mut caps = alt::process::system_capabilities().unwrap_or_else(|e| fail("probe", &e));
        for name in list.split(',') {
            let cap = alt::Capability::from_name(name)
                .unwrap_or_else(|| fail("--add", &format!("unknown capability {name:?}")));
            caps.set(cap);
        }
        if report.is_some() {
            alt::process::revert_self_with(&options).unwrap_or_else(|e| fail("revert", &e));
        }
        let with = options.clone().capabilities(caps);
        report = Some(alt::process::patch_self_with(&with).unwrap_or_else(|e| fail("patch", &e)));
    }
    let patched = report.is_some();
    let now = answers();
    let (checksum, taken) = arms();
    let reverted = if args.iter().any(|a| a == "--revert") && patched {
        alt::process::revert_self_with(&options).unwrap_or_else(|e| fail("revert", &e));
        let a = answers();
        let (c, t) = arms();
        assert_eq!(c, checksum, "the arms' results changed with the revert");
        Some((a, t))
    } else {
        None
    };

    if json {
        let taken_json = |t: &[(&str, &str)]| {
            json_map(
                &t.iter()
                    .map(|(k, v)| (*k, format!("\"{v}\"")))
                    .collect::<Vec<_>>(),
            )
        };
        let reverted = reverted.map_or(String::from("null"), |(a, t)| {
            format!(
                "{{\"answers\":{},\"arms\":{}}}",
                answers_json(&a),
                taken_json(&t)
            )
        });
        let report = report.map_or(String::from("null"), |r| r.to_json());
        println!(
            "{{\"patched\":{patched},\"answers\":{},\"arms\":{},\"checksum\":{checksum},\"reverted\":{reverted},\"report\":{report}}}",
            answers_json(&now),
            taken_json(&taken)
        );
        return;
    }
    match &report {
        Some(r) => println!("{r}\n"),
        None => println!("(not patched: every site keeps its default)\n"),
    }
    let width = now.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let by_name: BTreeMap<_, _> = reverted
        .as_ref()
        .map(|(a, _)| a.iter().copied().collect())
        .unwrap_or_default();
    for (key, answer) in &now {
        match by_name.get(key) {
            Some(after) => println!(
                "has!({key}){:w$} {answer:<5}  after revert: {after}",
                "",
                w = width - key.len()
            ),
            None => println!("has!({key}){:w$} {answer}", "", w = width - key.len()),
        }
    }
    println!();
    for (key, arm) in &taken {
        println!("has!({key} => ...) ran the {arm} arm");
    }
    println!("checksum: {checksum:#018x}");
}
