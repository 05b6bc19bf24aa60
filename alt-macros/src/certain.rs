//! Capabilities the build guarantees: when the crate is compiled with the target features a
//! capability implies (`-C target-feature=+popcnt`, `-C target-cpu=native`), the capability
//! holds on every machine the program may run on, and nothing needs patching.
//!
//! A proc macro cannot see the target features, so the macros emit every possibility, each
//! under a `#[cfg(...)]` predicate, and the compiler keeps the one that matches: [`arms`]
//! splits the builds by the first entry (in priority order) their target features guarantee.
//! Only a feature with Rust target features ([`crate::features`]) can be guaranteed: an
//! erratum is a fact about a CPU that no target feature states, and `!cap` would need the
//! capability certainly absent, which target features never say.

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;

use crate::args::Key;
use crate::features::target_features;

/// The target features that make `key` hold in every build that enables them, or `None` when no
/// build guarantees it (an erratum, a negated key, a feature Rust has no target feature for).
pub fn guaranteed_by(key: &Key) -> Option<&'static [&'static str]> {
    if key.negated {
        return None;
    }
    let features = target_features(key.capability);
    (!features.is_empty()).then_some(features)
}

/// `all(target_feature = "a", target_feature = "b")`.
pub fn predicate(features: &[&str]) -> TokenStream2 {
    quote!(all(#(target_feature = #features),*))
}

/// One class of builds: those whose target features guarantee entry `first` first, or (for
/// `None`) guarantee no entry.
pub struct Arm {
    /// The `cfg` predicate of these builds.
    pub cfg: TokenStream2,
    /// The first entry these builds guarantee.
    pub first: Option<usize>,
}

/// The classes of builds for a site's keys, in priority order; their predicates exclude each
/// other and together cover every build. With no key any build could guarantee, one arm with
/// `first: None` (and no need for a `cfg`). An entry whose features include an earlier
/// guaranteed entry's gets no arm: whenever it is guaranteed, the earlier one is too.
pub fn arms(keys: &[&Key]) -> Vec<Arm> {
    let mut earlier: Vec<&'static [&'static str]> = Vec::new();
    let mut out = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let Some(features) = guaranteed_by(key) else {
            continue;
        };
        if earlier
            .iter()
            .any(|e| e.iter().all(|f| features.contains(f)))
        {
            continue;
        }
        let this = predicate(features);
        let not_earlier = earlier.iter().map(|e| predicate(e));
        out.push(Arm {
            cfg: quote!(all(#this, #(not(#not_earlier)),*)),
            first: Some(i),
        });
        earlier.push(features);
    }
    let none = earlier.iter().map(|e| predicate(e));
    out.push(Arm {
        cfg: quote!(not(any(#(#none),*))),
        first: None,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alt_runtime::Capability;

    fn key(name: &str, negated: bool) -> Key {
        Key {
            negated,
            capability: Capability::from_name(name).unwrap(),
        }
    }

    fn show(arms: &[Arm]) -> Vec<(String, Option<usize>)> {
        arms.iter()
            .map(|a| (a.cfg.to_string().replace(' ', ""), a.first))
            .collect()
    }

    #[test]
    fn errata_negated_keys_and_unmapped_features_are_never_guaranteed() {
        for (name, negated) in [
            ("erratum_amd_div0", false),
            ("popcnt", true),
            ("fsrm", false),
            ("lfence_serializing", false),
        ] {
            assert!(guaranteed_by(&key(name, negated)).is_none(), "{name}");
        }
        assert_eq!(guaranteed_by(&key("erms", false)), Some(&["ermsb"][..]));
        let keys = [key("erratum_amd_div0", false), key("popcnt", true)];
        let refs: Vec<&Key> = keys.iter().collect();
        assert_eq!(show(&arms(&refs)), [("not(any())".to_string(), None)]);
    }

    #[test]
    fn builds_split_by_the_first_guaranteed_entry() {
        let keys = [
            key("avx2", false),
            key("fsrm", false),
            key("popcnt", false),
            key("avx2", false),
        ];
        let refs: Vec<&Key> = keys.iter().collect();
        assert_eq!(
            show(&arms(&refs)),
            [
                (r#"all(all(target_feature="avx2"),)"#.to_string(), Some(0)),
                (
                    r#"all(all(target_feature="popcnt"),not(all(target_feature="avx2")))"#
                        .to_string(),
                    Some(2)
                ),
                (
                    r#"not(any(all(target_feature="avx2"),all(target_feature="popcnt")))"#
                        .to_string(),
                    None
                ),
            ]
        );
    }
}
