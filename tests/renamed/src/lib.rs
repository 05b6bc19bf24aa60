//! The facade under another name: `altx = { package = "alternatives", ... }`. Every macro is
//! told where it is with `crate = altx` (`#[alt(crate = altx)]` for a paravirt table), and
//! nothing named `alt` exists here, so any generated `::alt::` path would not compile.

/// Number of set bits.
#[altx::alternative(
    crate = altx,
    // SAFETY: POPCNT writes only its destination (the result) and the flags.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
pub fn popcount(x: u64) -> u64 {
    x.count_ones() as u64
}

/// Twice `x`, by a direct call where AVX2 is present.
#[altx::alternative(crate = altx, avx2 => double_avx2)]
pub fn double(x: u32) -> u32 {
    x * 2
}

#[target_feature(enable = "avx2")]
fn double_avx2(x: u32) -> u32 {
    x << 1
}

extern "C" fn native_cycles() -> u64 {
    7
}

extern "C" fn native_add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

altx::paravirt_ops! {
    /// A table declared through the renamed facade.
    #[alt(crate = altx)]
    pub table RENAMED_OPS {
        /// A constant, natively.
        fn cycles() -> u64 { native: native_cycles, clobbers: [rax] }
        /// A sum.
        fn add(a: u64, b: u64) -> u64 {
            native: native_add,
            // SAFETY: LEA computes the native function's result into the result register only.
            unsafe inline: ["lea {ret}, [{a} + {b}]"],
            clobbers: [rax],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_work_before_and_after_patching_through_the_renamed_facade() {
        assert_eq!(popcount(0xff), 8);
        assert_eq!(double(21), 42);
        assert_eq!(RENAMED_OPS.cycles(), 7);
        assert_eq!(RENAMED_OPS.add(2, 3), 5);
        // Patched at load already (this returns that report); other threads would be stopped.
        let options = altx::process::PatchOptions::new();
        let report = altx::process::patch_self_with(&options).expect("patching");
        assert!(report
            .sites
            .iter()
            .any(|s| s.function.is_some_and(|f| f.ends_with("popcount"))));
        assert_eq!(popcount(0xff), 8);
        assert_eq!(double(21), 42);
        // SAFETY: the native backend's functions are sound for any arguments.
        let patched = unsafe { RENAMED_OPS.install_with(&RenamedOpsBackend::NATIVE, &options) }
            .expect("paravirt patching");
        assert!(!patched.report().to_string().is_empty());
        assert_eq!(RENAMED_OPS.add(2, 3), 5);
        assert_eq!(RENAMED_OPS.cycles(), 7);
    }
}
