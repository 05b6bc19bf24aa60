//! Capabilities: the things a table entry is keyed by.
//!
//! A capability is either a **CPU feature** (POPCNT, AVX2, ERMS, ...) or an **erratum** (a bug of
//! some CPU models that needs a workaround). Both share one 12-bit id space so that a table entry
//! can name either:
//!
//! | ids             | meaning                                    | set type    |
//! |-----------------|--------------------------------------------|-------------|
//! | `0x000..0x040`  | CPU feature, bit `id` of [`Features`]      | [`Features`]|
//! | `0x040..0x080`  | erratum, bit `id - 0x40` of [`Errata`]     | [`Errata`]  |
//! | `0x080..0x1000` | reserved: an entry naming one is invalid   |             |
//!
//! Features combine with AND across CPUs (a feature is used only if every CPU has it); errata
//! combine with OR (a workaround is applied if any CPU needs it). See [`CapabilitySet`].
//!
//! Every capability has a lower-case name (`"popcnt"`, `"avx2"`, `"erratum_amd_div0"`...). Names
//! are what the macros accept and what the override variable takes: see [`Capability::from_name`]
//! and [`crate::overrides`].

use core::fmt;

pub use sets::{Errata, Features};

/// The bit sets. The constants are named after the CPUID flag or the erratum they stand for; the
/// tables below give their lower-case names.
mod sets {
    #![allow(missing_docs)]

    bitflags::bitflags! {
        /// x86-64 CPU features, one bit each. Bit `n` is capability id `n`.
        ///
        /// A bit is set only when the CPU reports the feature *and* it is usable: AVX, AVX2, FMA and the
        /// AVX-512 bits also require that the operating system enabled the register state (XGETBV).
        /// Each constant is named after the CPUID feature flag it stands for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct Features: u64 {
            const SSE3 = 1 << 0;
            const SSSE3 = 1 << 1;
            const SSE4_1 = 1 << 2;
            const SSE4_2 = 1 << 3;
            const POPCNT = 1 << 4;
            const LZCNT = 1 << 5;
            const BMI1 = 1 << 6;
            const BMI2 = 1 << 7;
            const MOVBE = 1 << 8;
            const FMA = 1 << 9;
            const AVX = 1 << 10;
            const AVX2 = 1 << 11;
            const AVX512F = 1 << 12;
            const AVX512BW = 1 << 13;
            const AVX512VL = 1 << 14;
            const ERMS = 1 << 15;
            const FSRM = 1 << 16;
            const RDTSCP = 1 << 17;
            const CLFLUSHOPT = 1 << 18;
            const CLWB = 1 << 19;
            const RDRAND = 1 << 20;
            const HYPERVISOR = 1 << 21;
            const AVX512DQ = 1 << 22;
            const AVX512CD = 1 << 23;
            const F16C = 1 << 24;
            const AES = 1 << 25;
            const PCLMULQDQ = 1 << 26;
            const SHA = 1 << 27;
            const RDSEED = 1 << 28;
            const ADX = 1 << 29;
            const CMPXCHG16B = 1 << 30;
            const FSGSBASE = 1 << 31;
            const RDPID = 1 << 32;
            const SERIALIZE = 1 << 33;
            const XSAVE = 1 << 34;
            const OSXSAVE = 1 << 35;
            const CLFLUSH = 1 << 36;
            const HYBRID = 1 << 37;
            const LFENCE_SERIALIZING = 1 << 38;
        }
    }

    bitflags::bitflags! {
        /// Errata, one bit each. Bit `n` is capability id `0x40 + n`.
        ///
        /// The errata database ([`crate::errata`]) says which CPU models have each one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct Errata: u64 {
            // x86-64 (names after Linux's X86_BUG_* where one exists).
            const AMD_DIV0 = 1 << 0;
            const CLFLUSH_MONITOR = 1 << 1;
            const MONITOR = 1 << 2;
            const SYSRET_SS_ATTRS = 1 << 3;
            const AMD_E400 = 1 << 4;
            const AMD_TLB_MMATCH = 1 << 5;
            const FXSAVE_LEAK = 1 << 6;
            const ZENBLEED = 1 << 7;
            const NULL_SEG = 1 << 8;
            // AArch64 (names after Linux's ARM64_ERRATUM_* configuration options).
            const ARM64_835769 = 1 << 32;
            const ARM64_843419 = 1 << 33;
            const ARM64_832075 = 1 << 34;
            const ARM64_834220 = 1 << 35;
            const ARM64_1319367 = 1 << 36;
            const ARM64_1286807 = 1 << 37;
            const ARM64_1463225 = 1 << 38;
            const ARM64_1418040 = 1 << 39;
            const ARM64_1165522 = 1 << 40;
            const ARM64_845719 = 1 << 41;
            const ARM64_824069 = 1 << 42;
            const ARM64_819472 = 1 << 43;
            const ARM64_826319 = 1 << 44;
            const ARM64_827319 = 1 << 45;
            const ARM64_1530923 = 1 << 46;
            const ARM64_2441007 = 1 << 47;
            const ARM64_1742098 = 1 << 48;
            const ARM64_3194386 = 1 << 49;
            const ARM64_1542419 = 1 << 50;
            // Qualcomm (names after Linux's QCOM_FALKOR_ERRATUM_* options).
            const QCOM_FALKOR_E1003 = 1 << 51;
            const QCOM_FALKOR_E1009 = 1 << 52;
        }
    }
}

/// First capability id of the feature range.
pub const FEATURE_BASE: u16 = 0x000;
/// First capability id of the errata range.
pub const ERRATUM_BASE: u16 = 0x040;
/// One past the last capability id in use; ids from here to `0xfff` are reserved.
pub const CAPABILITY_LIMIT: u16 = 0x080;

/// A capability id: a CPU feature or an erratum. Fits in the 12 bits a table entry has for it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Capability(u16);

/// What a [`Capability`] names, once decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapabilityKind {
    /// A CPU feature: one bit of [`Features`].
    Feature(Features),
    /// An erratum: one bit of [`Errata`].
    Erratum(Errata),
}

/// Names of the features, indexed by bit.
const FEATURE_NAMES: [(&str, Features); 39] = [
    ("sse3", Features::SSE3),
    ("ssse3", Features::SSSE3),
    ("sse4.1", Features::SSE4_1),
    ("sse4.2", Features::SSE4_2),
    ("popcnt", Features::POPCNT),
    ("lzcnt", Features::LZCNT),
    ("bmi1", Features::BMI1),
    ("bmi2", Features::BMI2),
    ("movbe", Features::MOVBE),
    ("fma", Features::FMA),
    ("avx", Features::AVX),
    ("avx2", Features::AVX2),
    ("avx512f", Features::AVX512F),
    ("avx512bw", Features::AVX512BW),
    ("avx512vl", Features::AVX512VL),
    ("erms", Features::ERMS),
    ("fsrm", Features::FSRM),
    ("rdtscp", Features::RDTSCP),
    ("clflushopt", Features::CLFLUSHOPT),
    ("clwb", Features::CLWB),
    ("rdrand", Features::RDRAND),
    ("hypervisor", Features::HYPERVISOR),
    ("avx512dq", Features::AVX512DQ),
    ("avx512cd", Features::AVX512CD),
    ("f16c", Features::F16C),
    ("aes", Features::AES),
    ("pclmulqdq", Features::PCLMULQDQ),
    ("sha", Features::SHA),
    ("rdseed", Features::RDSEED),
    ("adx", Features::ADX),
    ("cmpxchg16b", Features::CMPXCHG16B),
    ("fsgsbase", Features::FSGSBASE),
    ("rdpid", Features::RDPID),
    ("serialize", Features::SERIALIZE),
    ("xsave", Features::XSAVE),
    ("osxsave", Features::OSXSAVE),
    ("clflush", Features::CLFLUSH),
    ("hybrid", Features::HYBRID),
    ("lfence_serializing", Features::LFENCE_SERIALIZING),
];

/// Names of the errata. Each starts with `erratum_` so that it can never be mistaken for a
/// feature.
const ERRATUM_NAMES: [(&str, Errata); 30] = [
    ("erratum_amd_div0", Errata::AMD_DIV0),
    ("erratum_clflush_monitor", Errata::CLFLUSH_MONITOR),
    ("erratum_monitor", Errata::MONITOR),
    ("erratum_sysret_ss_attrs", Errata::SYSRET_SS_ATTRS),
    ("erratum_amd_e400", Errata::AMD_E400),
    ("erratum_amd_tlb_mmatch", Errata::AMD_TLB_MMATCH),
    ("erratum_fxsave_leak", Errata::FXSAVE_LEAK),
    ("erratum_zenbleed", Errata::ZENBLEED),
    ("erratum_null_seg", Errata::NULL_SEG),
    ("erratum_arm64_835769", Errata::ARM64_835769),
    ("erratum_arm64_843419", Errata::ARM64_843419),
    ("erratum_arm64_832075", Errata::ARM64_832075),
    ("erratum_arm64_834220", Errata::ARM64_834220),
    ("erratum_arm64_1319367", Errata::ARM64_1319367),
    ("erratum_arm64_1286807", Errata::ARM64_1286807),
    ("erratum_arm64_1463225", Errata::ARM64_1463225),
    ("erratum_arm64_1418040", Errata::ARM64_1418040),
    ("erratum_arm64_1165522", Errata::ARM64_1165522),
    ("erratum_arm64_845719", Errata::ARM64_845719),
    ("erratum_arm64_824069", Errata::ARM64_824069),
    ("erratum_arm64_819472", Errata::ARM64_819472),
    ("erratum_arm64_826319", Errata::ARM64_826319),
    ("erratum_arm64_827319", Errata::ARM64_827319),
    ("erratum_arm64_1530923", Errata::ARM64_1530923),
    ("erratum_arm64_2441007", Errata::ARM64_2441007),
    ("erratum_arm64_1742098", Errata::ARM64_1742098),
    ("erratum_arm64_3194386", Errata::ARM64_3194386),
    ("erratum_arm64_1542419", Errata::ARM64_1542419),
    ("erratum_qcom_falkor_e1003", Errata::QCOM_FALKOR_E1003),
    ("erratum_qcom_falkor_e1009", Errata::QCOM_FALKOR_E1009),
];

impl Capability {
    /// The capability with this raw id, if the id is in use.
    pub const fn from_id(id: u16) -> Option<Self> {
        let known = if id < ERRATUM_BASE {
            Features::all().bits() & (1u64 << id) != 0
        } else if id < CAPABILITY_LIMIT {
            Errata::all().bits() & (1u64 << (id - ERRATUM_BASE)) != 0
        } else {
            false
        };
        if known {
            Some(Self(id))
        } else {
            None
        }
    }

    /// The capability of a single feature bit. `None` if `f` is empty or has several bits.
    pub const fn feature(f: Features) -> Option<Self> {
        if f.bits().count_ones() != 1 {
            return None;
        }
        Some(Self(FEATURE_BASE + f.bits().trailing_zeros() as u16))
    }

    /// The capability of a single erratum bit. `None` if `e` is empty or has several bits.
    pub const fn erratum(e: Errata) -> Option<Self> {
        if e.bits().count_ones() != 1 {
            return None;
        }
        Some(Self(ERRATUM_BASE + e.bits().trailing_zeros() as u16))
    }

    /// The raw id, as stored in a table entry.
    pub const fn id(self) -> u16 {
        self.0
    }

    /// Whether this is a feature or an erratum, with its bit.
    pub const fn kind(self) -> CapabilityKind {
        if self.0 < ERRATUM_BASE {
            CapabilityKind::Feature(Features::from_bits_retain(1 << self.0))
        } else {
            CapabilityKind::Erratum(Errata::from_bits_retain(1 << (self.0 - ERRATUM_BASE)))
        }
    }

    /// The capability's name: `"popcnt"`, `"avx2"`, `"erratum_amd_div0"`...
    pub fn name(self) -> &'static str {
        match self.kind() {
            CapabilityKind::Feature(f) => FEATURE_NAMES
                .iter()
                .find(|(_, b)| *b == f)
                .map_or("?", |(n, _)| n),
            CapabilityKind::Erratum(e) => ERRATUM_NAMES
                .iter()
                .find(|(_, b)| *b == e)
                .map_or("?", |(n, _)| n),
        }
    }

    /// Looks a capability up by name, in any of the spellings people write: case does not
    /// matter, and `.`, `_` and `-` are the same character, so `sse4.2`, `sse4_2`, `SSE4.2` and
    /// `sse4-2` all name SSE4.2.
    ///
    /// ```
    /// use alt_runtime::{Capability, Features};
    ///
    /// let sse42 = Capability::feature(Features::SSE4_2);
    /// for spelling in ["sse4.2", "sse4_2", "SSE4.2", "sse4-2"] {
    ///     assert_eq!(Capability::from_name(spelling), sse42);
    /// }
    /// assert_eq!(Capability::from_name("popcount"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|c| names_equal(c.name(), name))
    }

    /// The capability whose name is nearest to a name that is none (for "did you mean"): at
    /// most two edits away (one for names of up to four letters), spellings normalised as in
    /// [`Capability::from_name`]. `None` when nothing is that close, or the name is one.
    ///
    /// ```
    /// use alt_runtime::{Capability, Features};
    ///
    /// let popcnt = Capability::feature(Features::POPCNT);
    /// assert_eq!(Capability::suggest("popcount"), popcnt);
    /// assert_eq!(Capability::suggest("lfence_serialising").map(|c| c.name()), Some("lfence_serializing"));
    /// assert_eq!(Capability::suggest("frobnicate"), None);
    /// ```
    pub fn suggest(name: &str) -> Option<Self> {
        if Self::from_name(name).is_some() || name.len() > MAX_NAME {
            return None;
        }
        let limit = if name.len() <= 4 { 1 } else { 2 };
        // Nearest first; among equals, the one of the same length (a mistyped character
        // rather than a missing one: `avx3` is `avx2`, not `avx`).
        let mut best: Option<((usize, usize), Self)> = None;
        for c in Self::all() {
            let d = edit_distance(c.name(), name);
            let score = (d, c.name().len().abs_diff(name.len()));
            if d <= limit && best.is_none_or(|(b, _)| score < b) {
                best = Some((score, c));
            }
        }
        best.map(|(_, c)| c)
    }

    /// Every capability in use, features first, in id order.
    pub fn all() -> impl Iterator<Item = Capability> {
        let features = FEATURE_NAMES.iter().filter_map(|(_, f)| Self::feature(*f));
        let errata = ERRATUM_NAMES.iter().filter_map(|(_, e)| Self::erratum(*e));
        features.chain(errata)
    }
}

fn names_equal(canonical: &str, given: &str) -> bool {
    let norm = |c: u8| match c.to_ascii_lowercase() {
        b'-' | b'.' => b'_',
        c => c,
    };
    canonical.len() == given.len()
        && canonical
            .bytes()
            .zip(given.bytes())
            .all(|(a, b)| norm(a) == norm(b))
}

/// Longest name [`Capability::suggest`] compares (longer input is no near miss).
const MAX_NAME: usize = 40;

/// Edit distance (insertions, deletions, substitutions and swaps of neighbours) between two
/// names, spellings normalised as [`names_equal`] does. Inputs longer than [`MAX_NAME`] count as
/// far from everything.
fn edit_distance(a: &str, b: &str) -> usize {
    let norm = |c: u8| match c.to_ascii_lowercase() {
        b'-' | b'.' => b'_',
        c => c,
    };
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() > MAX_NAME || b.len() > MAX_NAME {
        return usize::MAX;
    }
    // Three rows of the dynamic-programming table: i-2, i-1, i.
    let mut rows = [[0usize; MAX_NAME + 1]; 3];
    for (j, cell) in rows[0].iter_mut().enumerate().take(b.len() + 1) {
        *cell = j;
    }
    for i in 1..=a.len() {
        let (cur, prev, prev2) = (i % 3, (i + 2) % 3, (i + 1) % 3);
        rows[cur][0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(norm(a[i - 1]) != norm(b[j - 1]));
            let mut d = (rows[prev][j] + 1)
                .min(rows[cur][j - 1] + 1)
                .min(rows[prev][j - 1] + cost);
            if i > 1
                && j > 1
                && norm(a[i - 1]) == norm(b[j - 2])
                && norm(a[i - 2]) == norm(b[j - 1])
            {
                d = d.min(rows[prev2][j - 2] + 1);
            }
            rows[cur][j] = d;
        }
    }
    rows[a.len() % 3][b.len()]
}

/// Every capability name, generated from the capability table: `Display` writes the features,
/// then the errata, as `features: sse3, ssse3, sse4.1, ...; errata: erratum_amd_div0, ...`.
/// Error messages and the documentation print this list, so it is complete by construction.
///
/// ```
/// let list = alt_runtime::capability::CapabilityNames.to_string();
/// assert!(list.starts_with("features: sse3, ssse3, sse4.1, sse4.2, popcnt"));
/// assert!(list.contains("; errata: erratum_amd_div0, "));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CapabilityNames;

impl fmt::Display for CapabilityNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut in_errata = false;
        f.write_str("features: ")?;
        for (i, c) in Capability::all().enumerate() {
            let erratum = matches!(c.kind(), CapabilityKind::Erratum(_));
            if erratum && !in_errata {
                f.write_str("; errata: ")?;
                in_errata = true;
            } else if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(c.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capability({:#05x} {})", self.0, self.name())
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The capabilities of a system (or of one CPU): its usable features and the errata it needs
/// worked around.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet {
    /// Usable CPU features.
    pub features: Features,
    /// Errata that need their workaround.
    pub errata: Errata,
}

impl CapabilitySet {
    /// A set with these features and errata.
    pub const fn new(features: Features, errata: Errata) -> Self {
        Self { features, errata }
    }

    /// Whether the capability is present: the feature usable, or the erratum in need of its
    /// workaround.
    pub fn has(&self, cap: Capability) -> bool {
        match cap.kind() {
            CapabilityKind::Feature(f) => self.features.contains(f),
            CapabilityKind::Erratum(e) => self.errata.contains(e),
        }
    }

    /// Removes a capability (the effect of a `clearcpuid`-style override).
    pub fn clear(&mut self, cap: Capability) {
        match cap.kind() {
            CapabilityKind::Feature(f) => self.features.remove(f),
            CapabilityKind::Erratum(e) => self.errata.remove(e),
        }
    }

    /// Adds a capability.
    pub fn set(&mut self, cap: Capability) {
        match cap.kind() {
            CapabilityKind::Feature(f) => self.features.insert(f),
            CapabilityKind::Erratum(e) => self.errata.insert(e),
        }
    }

    /// Combines the sets of two CPUs of one system: features every CPU has (AND), errata any
    /// CPU has (OR). Commutative and associative, so the order in which CPUs report does not
    /// matter.
    pub fn combine(self, other: Self) -> Self {
        Self {
            features: self.features & other.features,
            errata: self.errata | other.errata,
        }
    }

    /// Every capability present, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        Capability::all().filter(move |c| self.has(*c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_names() {
        let mut n = 0;
        for cap in Capability::all() {
            assert_eq!(Capability::from_id(cap.id()), Some(cap));
            assert_eq!(
                Capability::from_name(cap.name()),
                Some(cap),
                "{}",
                cap.name()
            );
            assert_ne!(cap.name(), "?");
            n += 1;
        }
        assert_eq!(n, FEATURE_NAMES.len() + ERRATUM_NAMES.len());
        assert_eq!(
            FEATURE_NAMES.len() as u32,
            Features::all().bits().count_ones()
        );
        assert_eq!(
            ERRATUM_NAMES.len() as u32,
            Errata::all().bits().count_ones()
        );
    }

    #[test]
    fn names_are_forgiving_about_case_and_separators() {
        let sse41 = Capability::feature(Features::SSE4_1).unwrap();
        assert_eq!(Capability::from_name("SSE4_1"), Some(sse41));
        assert_eq!(Capability::from_name("sse4-1"), Some(sse41));
        assert_eq!(Capability::from_name("popcount"), None);
        assert_eq!(Capability::from_name(""), None);
    }

    #[test]
    fn every_spelling_of_a_dotted_name_is_accepted() {
        let sse42 = Capability::feature(Features::SSE4_2).unwrap();
        for s in ["sse4.2", "sse4_2", "SSE4.2", "Sse4-2", "SSE4_2"] {
            assert_eq!(Capability::from_name(s), Some(sse42), "{s}");
        }
        assert_eq!(Capability::from_name("sse4"), None);
        assert_eq!(Capability::from_name("sse42"), None);
    }

    #[test]
    fn near_misses_suggest_the_capability_meant() {
        let name = |s: &str| Capability::suggest(s).map(|c| c.name());
        assert_eq!(name("popcount"), Some("popcnt"));
        assert_eq!(name("lfence_serialising"), Some("lfence_serializing"));
        assert_eq!(name("avx512"), Some("avx512f"));
        assert_eq!(name("avx3"), Some("avx2"), "same length wins a tie");
        assert_eq!(name("AVX-2"), Some("avx2"));
        assert_eq!(
            name("SSE4_2"),
            None,
            "a spelling of sse4.2 is no near miss: it is sse4.2"
        );
        assert_eq!(name("erratum_amd_div"), Some("erratum_amd_div0"));
        assert_eq!(name("ssse"), Some("ssse3"));
        assert_eq!(name("xyz"), None);
        assert_eq!(name(""), None);
        assert_eq!(name(&"a".repeat(200)), None);
        assert_eq!(edit_distance("ab", "ba"), 1, "a swap is one edit");
        assert_eq!(edit_distance("sse4.1", "SSE4_1"), 0);
    }

    #[test]
    fn the_name_list_has_every_capability_once() {
        use core::fmt::Write;
        struct Buf([u8; 4096], usize);
        impl Write for Buf {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let end = self.1 + s.len();
                self.0
                    .get_mut(self.1..end)
                    .ok_or(fmt::Error)?
                    .copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut buf = Buf([0; 4096], 0);
        write!(buf, "{CapabilityNames}").unwrap();
        let text = core::str::from_utf8(&buf.0[..buf.1]).unwrap();
        let (features, errata) = text.split_once("; errata: ").unwrap();
        let features = features.strip_prefix("features: ").unwrap();
        assert_eq!(features.split(", ").count(), FEATURE_NAMES.len());
        assert_eq!(errata.split(", ").count(), ERRATUM_NAMES.len());
        assert!(features.split(", ").all(|n| !n.starts_with("erratum_")));
        assert!(errata.split(", ").all(|n| n.starts_with("erratum_")));
        for c in Capability::all() {
            let n = text
                .split([',', ';', ' '])
                .filter(|w| *w == c.name())
                .count();
            assert_eq!(n, 1, "{} listed {n} times", c.name());
        }
    }

    #[test]
    fn ids_are_placed_in_their_ranges() {
        assert_eq!(Capability::feature(Features::SSE3).unwrap().id(), 0);
        assert_eq!(Capability::feature(Features::POPCNT).unwrap().id(), 4);
        assert_eq!(Capability::erratum(Errata::AMD_DIV0).unwrap().id(), 0x40);
        assert_eq!(Capability::from_id(0x7f), None, "unused erratum bit");
        assert_eq!(Capability::from_id(0x80), None, "reserved range");
        assert_eq!(Capability::from_id(0xfff), None);
        assert_eq!(Capability::feature(Features::AVX | Features::AVX2), None);
    }

    #[test]
    fn combine_ands_features_and_ors_errata() {
        let big = CapabilitySet::new(Features::AVX2 | Features::POPCNT, Errata::empty());
        let little = CapabilitySet::new(Features::POPCNT, Errata::ARM64_835769);
        let sys = big.combine(little);
        assert_eq!(sys.features, Features::POPCNT);
        assert_eq!(sys.errata, Errata::ARM64_835769);
        assert_eq!(sys, little.combine(big));
    }
}
