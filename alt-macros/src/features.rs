//! What a capability guarantees to the compiler: the `#[target_feature]` names it implies.
//!
//! A direct-call variant is called from a shim compiled with the target features its
//! capability guarantees, so that calling a safe `#[target_feature]` function needs no `unsafe`
//! there (Rust allows safe calls of such functions from functions with the same features). A
//! capability that implies no Rust target feature (`fsrm`, `lfence_serializing`, errata) enables
//! nothing, and neither does a negated key: a `#[target_feature]` variant keyed by one is refused
//! by the compiler, which is right, since nothing then guarantees its features.

use alt_runtime::Capability;

/// The Rust target features (`#[target_feature(enable = ...)]` names) the capability guarantees.
pub fn target_features(cap: Capability) -> &'static [&'static str] {
    match cap.name() {
        "sse3" => &["sse3"],
        "ssse3" => &["ssse3"],
        "sse4.1" => &["sse4.1"],
        "sse4.2" => &["sse4.2"],
        "popcnt" => &["popcnt"],
        "lzcnt" => &["lzcnt"],
        "bmi1" => &["bmi1"],
        "bmi2" => &["bmi2"],
        "movbe" => &["movbe"],
        "fma" => &["fma"],
        "avx" => &["avx"],
        "avx2" => &["avx2"],
        "avx512f" => &["avx512f"],
        "avx512bw" => &["avx512bw"],
        "avx512vl" => &["avx512vl"],
        "avx512dq" => &["avx512dq"],
        "avx512cd" => &["avx512cd"],
        "erms" => &["ermsb"],
        "rdrand" => &["rdrand"],
        "rdseed" => &["rdseed"],
        "adx" => &["adx"],
        "aes" => &["aes"],
        "pclmulqdq" => &["pclmulqdq"],
        "sha" => &["sha"],
        "f16c" => &["f16c"],
        "xsave" => &["xsave"],
        "cmpxchg16b" => &["cmpxchg16b"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_features_are_mapped_and_every_mapping_names_a_known_capability() {
        let mapped: Vec<&str> = Capability::all()
            .filter(|c| !target_features(*c).is_empty())
            .map(|c| c.name())
            .collect();
        assert_eq!(mapped.len(), 27, "{mapped:?}");
        assert!(mapped.iter().all(|n| !n.starts_with("erratum_")));
        for unmapped in ["fsrm", "lfence_serializing", "hypervisor", "hybrid"] {
            let c = Capability::from_name(unmapped).unwrap();
            assert!(target_features(c).is_empty(), "{unmapped}");
        }
    }
}
