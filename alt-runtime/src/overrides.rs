//! Capability overrides: masking capabilities before planning, like Linux's `clearcpuid=`.
//!
//! Hosted programs read the environment variable [`ENV_VAR`] (`ALT_CLEARCPUID`); kernels pass
//! their command line to [`Overrides::from_cmdline`], which reads the `alt.clearcpuid=` option.
//! Either takes a comma-separated list of capability names (as [`Capability::from_name`]
//! accepts them: `popcnt`, `avx2`, `sse4.1`, `erratum_amd_div0`...). Every listed capability is
//! removed from the system's set before planning: a cleared feature is never patched in, a cleared
//! erratum's workaround is not applied. An unknown name is an error, never ignored.
//!
//! ```
//! use alt_runtime::{overrides::Overrides, CapabilitySet, Features};
//!
//! let o = Overrides::parse("popcnt, avx2").unwrap();
//! let mut caps = CapabilitySet::new(Features::POPCNT | Features::AVX2 | Features::BMI2, Default::default());
//! o.apply(&mut caps);
//! assert_eq!(caps.features, Features::BMI2);
//! assert!(Overrides::parse("popcount").is_err());
//! ```

use core::fmt;

use crate::capability::{Capability, CapabilitySet};

/// Name of the environment variable hosted programs read.
pub const ENV_VAR: &str = "ALT_CLEARCPUID";

/// Name of the kernel command-line option.
pub const CMDLINE_OPTION: &str = "alt.clearcpuid";

/// Capabilities to clear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The capabilities removed from the system's set.
    pub clear: CapabilitySet,
}

/// A name in an override list that is no capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownCapability<'a> {
    /// The name as given.
    pub name: &'a str,
}

impl fmt::Display for UnknownCapability<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown capability name `{}` in {ENV_VAR}/{CMDLINE_OPTION}",
            self.name
        )?;
        if let Some(c) = Capability::suggest(self.name) {
            write!(f, "; did you mean `{c}`?")?;
        }
        write!(f, " (capabilities: {})", crate::capability::CapabilityNames)
    }
}

impl Overrides {
    /// Parses a comma-separated list of capability names. Blanks around names and empty items
    /// are allowed.
    pub fn parse(list: &str) -> Result<Self, UnknownCapability<'_>> {
        let mut clear = CapabilitySet::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let cap = Capability::from_name(name).ok_or(UnknownCapability { name })?;
            clear.set(cap);
        }
        Ok(Self { clear })
    }

    /// Reads `alt.clearcpuid=LIST` options from a kernel-style command line (space-separated
    /// `key=value` words). Several options accumulate.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, UnknownCapability<'_>> {
        let mut all = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            if let Some((key, value)) = word.split_once('=') {
                if key == CMDLINE_OPTION {
                    let o = Self::parse(value)?;
                    all.clear.features |= o.clear.features;
                    all.clear.errata |= o.clear.errata;
                }
            }
        }
        Ok(all)
    }

    /// Removes the cleared capabilities from `caps`.
    pub fn apply(&self, caps: &mut CapabilitySet) {
        caps.features.remove(self.clear.features);
        caps.errata.remove(self.clear.errata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Errata, Features};

    #[test]
    fn names_clear_features_and_errata() {
        let o = Overrides::parse("popcnt,erratum_amd_div0,,SSE4.2 ").unwrap();
        assert_eq!(o.clear.features, Features::POPCNT | Features::SSE4_2);
        assert_eq!(o.clear.errata, Errata::AMD_DIV0);
        let mut caps = CapabilitySet::new(Features::all(), Errata::all());
        o.apply(&mut caps);
        assert!(!caps.features.contains(Features::POPCNT));
        assert!(caps.features.contains(Features::AVX2));
        assert!(!caps.errata.contains(Errata::AMD_DIV0));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_word() {
        let e = Overrides::parse("popcnt,avx3").unwrap_err();
        assert_eq!(e.name, "avx3");
        #[cfg(feature = "std")]
        {
            let msg = std::format!("{e}");
            assert!(
                msg.contains("`avx3` in ALT_CLEARCPUID/alt.clearcpuid; did you mean `avx2`?"),
                "{msg}"
            );
            assert!(
                msg.contains("features: sse3, ") && msg.contains("erratum_zenbleed"),
                "{msg}"
            );
        }
        assert!(Overrides::parse("").unwrap().clear == CapabilitySet::default());
    }

    #[test]
    fn command_line_options_accumulate() {
        let o = Overrides::from_cmdline(
            "root=/dev/sda alt.clearcpuid=avx2 quiet alt.clearcpuid=bmi2,lzcnt",
        )
        .unwrap();
        assert_eq!(
            o.clear.features,
            Features::AVX2 | Features::BMI2 | Features::LZCNT
        );
        assert!(Overrides::from_cmdline("alt.clearcpuid=nope").is_err());
        assert_eq!(
            Overrides::from_cmdline("clearcpuid=avx2").unwrap(),
            Overrides::default()
        );
    }
}
