//! Recorded CPUID: a [`CpuidDump`] answers CPUID and XGETBV from data, so the
//! [`super::cpuid::probe`] decodes CPUs that this machine is not.
//!
//! Two text forms are read:
//!
//! - **this crate's own** ([`CpuidDump::from_text`], written by [`Display`](fmt::Display) and by
//!   `cargo run --example cpus -- --cpuid`): one CPU, one `leaf subleaf eax ebx ecx edx` line per
//!   answer, and the OS state (`xcr0`);
//! - **AIDA64 / InstLatx64** ([`parse_aida64`]): the dumps people share, one
//!   `------[ Logical CPU #N ]------` section per logical CPU with
//!   `CPUID 00000007: EAX-EBX-ECX-EDX [SL 00]` lines (older EVEREST dumps omit the `[SL nn]`
//!   subleaf note and list subleaves in order).
//!
//! [`parse_dumps`] takes either and returns every CPU in it. A dump holds any number of
//! answers (recent server parts answer 80 to 100 leaf/subleaf pairs).

use alloc::vec::Vec;
use core::fmt;

#[cfg(any(test, feature = "models"))]
use super::cpuid::probe;
use super::cpuid::{CpuidSource, OsEnabled};
#[cfg(any(test, feature = "models"))]
use crate::capability::Features;

/// One recorded CPUID answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    /// EAX input.
    pub leaf: u32,
    /// ECX input.
    pub subleaf: u32,
    /// `[eax, ebx, ecx, edx]` output.
    pub regs: [u32; 4],
}

/// A CPUID dump as data: `(leaf, subleaf) -> registers` answers, the value of XCR0 and what
/// else the OS enabled ([`OsEnabled`]).
///
/// Leaves that are not recorded answer zeros. The probe never asks for a leaf above the
/// recorded maximum, so a dump needs only the leaves the probe reads (see [`CpuidDump::capture`]).
///
/// # Text format
///
/// One item per line; `#` starts a comment; blank lines are ignored. Numbers are hexadecimal,
/// with or without `0x`.
///
/// ```text
/// # leaf subleaf eax ebx ecx edx
/// 0 0 0000000d 756e6547 6c65746e 49656e69
/// 1 0 000306c3 00000800 fedaf223 078bfbff
/// xcr0 7
/// os fsgsbase
/// ```
///
/// `xcr0` is XGETBV(0) (0 when absent). `os` lists what the OS enabled beyond XCR0 (today only
/// `fsgsbase`: CR4.FSGSBASE); absent, nothing was. A dump says what one CPU answered under one
/// OS, so these two lines are the OS half of it.
///
/// [`Display`](fmt::Display) writes this format, and [`CpuidDump::from_text`] reads it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuidDump {
    entries: Vec<CpuidEntry>,
    xcr0: u64,
    os: OsEnabled,
}

/// Why a CPUID dump could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpError {
    /// A line is wrong; `line` counts from 1.
    Parse {
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The text holds no CPUID answer at all.
    Empty,
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::Parse { line, reason } => write!(f, "CPUID dump line {line}: {reason}"),
            DumpError::Empty => f.write_str("no CPUID answers in the dump"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DumpError {}

impl CpuidDump {
    /// An empty dump: every leaf answers zeros, XCR0 is 0.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            xcr0: 0,
            os: OsEnabled::empty(),
        }
    }

    /// Records (or replaces) the answer for `(leaf, subleaf)`.
    pub fn set(&mut self, leaf: u32, subleaf: u32, regs: [u32; 4]) {
        match self
            .entries
            .iter_mut()
            .find(|e| e.leaf == leaf && e.subleaf == subleaf)
        {
            Some(e) => e.regs = regs,
            None => self.entries.push(CpuidEntry {
                leaf,
                subleaf,
                regs,
            }),
        }
    }

    /// Builder form of [`set`](Self::set).
    pub fn with(mut self, leaf: u32, subleaf: u32, regs: [u32; 4]) -> Self {
        self.set(leaf, subleaf, regs);
        self
    }

    /// Sets the value XGETBV(0) answers.
    pub fn set_xcr0(&mut self, xcr0: u64) {
        self.xcr0 = xcr0;
    }

    /// The recorded XCR0.
    pub fn xcr0(&self) -> u64 {
        self.xcr0
    }

    /// Sets what the OS enabled beyond XCR0.
    pub fn set_os_enabled(&mut self, os: OsEnabled) {
        self.os = os;
    }

    /// The recorded answer for `(leaf, subleaf)`, if any.
    pub fn get(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        self.entries
            .iter()
            .find(|e| e.leaf == leaf && e.subleaf == subleaf)
            .map(|e| e.regs)
    }

    /// The recorded answers, in the order they were recorded.
    pub fn entries(&self) -> &[CpuidEntry] {
        &self.entries
    }

    /// Records every leaf the [`super::cpuid::probe`] reads from `src` (within `src`'s
    /// maximum leaves), XCR0 when OSXSAVE is set, and what the OS enabled:
    /// `probe(&CpuidDump::capture(src)) == probe(src)`.
    pub fn capture<S: CpuidSource>(src: &S) -> Self {
        let mut d = Self::new();
        let l0 = src.cpuid(0, 0);
        let max = l0[0];
        d.set(0, 0, l0);
        for (leaf, sub) in [(1, 0), (7, 0), (7, 1), (0xd, 0), (0xd, 1), (0x1a, 0)] {
            if leaf <= max {
                d.set(leaf, sub, src.cpuid(leaf, sub));
            }
        }
        let e0 = src.cpuid(0x8000_0000, 0);
        d.set(0x8000_0000, 0, e0);
        if e0[0] & 0xffff_0000 == 0x8000_0000 {
            for leaf in [0x8000_0001, 0x8000_0007, 0x8000_0008, 0x8000_0021] {
                if leaf <= e0[0] {
                    d.set(leaf, 0, src.cpuid(leaf, 0));
                }
            }
        }
        if d.get(1, 0).is_some_and(|r| r[2] & OSXSAVE != 0) {
            d.xcr0 = src.xgetbv(0);
        }
        d.os = src.os_enabled();
        d
    }

    /// Parses the [text format](CpuidDump#text-format).
    pub fn from_text(text: &str) -> Result<Self, DumpError> {
        let mut d = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let err = |reason| DumpError::Parse { line, reason };
            let mut words = body.split_whitespace();
            let first = words.next().ok_or(err("empty line"))?;
            if first.eq_ignore_ascii_case("xcr0") {
                let v = words.next().ok_or(err("xcr0 needs a value"))?;
                d.xcr0 = parse_hex64(v).ok_or(err("bad hexadecimal number"))?;
                if words.next().is_some() {
                    return Err(err("too many fields after xcr0"));
                }
                continue;
            }
            if first.eq_ignore_ascii_case("os") {
                for w in words {
                    match w {
                        "fsgsbase" => d.os |= OsEnabled::FSGSBASE,
                        "-" => {}
                        _ => return Err(err("unknown OS feature (known: fsgsbase)")),
                    }
                }
                continue;
            }
            let mut nums = [0u32; 6];
            nums[0] = parse_hex32(first).ok_or(err("bad hexadecimal number"))?;
            for n in nums.iter_mut().skip(1) {
                let w = words
                    .next()
                    .ok_or(err("expected: leaf subleaf eax ebx ecx edx"))?;
                *n = parse_hex32(w).ok_or(err("bad hexadecimal number"))?;
            }
            if words.next().is_some() {
                return Err(err(
                    "too many fields: expected leaf subleaf eax ebx ecx edx",
                ));
            }
            d.set(nums[0], nums[1], [nums[2], nums[3], nums[4], nums[5]]);
        }
        Ok(d)
    }
}

/// CPUID.1:ECX bit 27, OSXSAVE: the OS set CR4.OSXSAVE.
const OSXSAVE: u32 = 1 << 27;

/// One logical CPU of a shared dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedCpu {
    /// Its number in the dump (`Logical CPU #N`), or 0 for a dump of one CPU.
    pub index: u32,
    /// Its answers.
    pub dump: CpuidDump,
}

/// Leaves whose subleaves an AIDA64 dump lists only when they are valid, so that a line's
/// position is not its subleaf: (leaf, how many leading lines are subleaves 0, 1, ...).
/// Leaf 0xD lists subleaves 0 and 1, then one line per state component the CPU has; leaf 0x10
/// lists subleaf 0, then one line per resource type it has.
const SPARSE_LEAVES: [(u32, u32); 2] = [(0xd, 2), (0x10, 1)];

/// Parses an AIDA64 / InstLatx64 CPUID dump: every `------[ Logical CPU #N ]------` section
/// becomes one CPU (a dump with `CPUID` lines but no such section is one CPU, number 0).
///
/// - `CPUID 00000004: 1C004121-01C0003F-0000003F-00000000 [SL 01]` records leaf 4 subleaf 1;
///   the `[SL nn]` note is hexadecimal. A line without the note is the next subleaf of its
///   leaf in that CPU (0, 1, 2, ...), as older dumps list them, except that lines past the
///   first two of leaf 0xD and past the first of leaf 0x10 are skipped: those dumps list only
///   the valid subleaves there, so their position says nothing.
/// - Other lines (headers, `allcpu:`, cache descriptions, `MSR` lines) are ignored; other
///   `------[ ... ]------` sections end the CPU's section.
/// - XCR0 is not in these dumps. When leaf 1 says OSXSAVE (the dumping OS enabled XSAVE),
///   XCR0 is taken to be every user state component the CPU supports (leaf 0xD subleaf 0
///   EDX:EAX), which is what Linux enables; otherwise 0.
/// - Nothing in these dumps says whether the OS enabled FSGSBASE, so it is taken as not enabled
///   (the safe side; see [`OsEnabled`]).
pub fn parse_aida64(text: &str) -> Result<Vec<DumpedCpu>, DumpError> {
    struct Open {
        cpu: DumpedCpu,
        seen: Vec<(u32, u32)>,
    }
    fn close(open: &mut Option<Open>, out: &mut Vec<DumpedCpu>) {
        if let Some(mut o) = open.take() {
            if !o.cpu.dump.entries.is_empty() {
                o.cpu.dump.xcr0 = assumed_xcr0(&o.cpu.dump);
                out.push(o.cpu);
            }
        }
    }
    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    let mut in_other_section = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason| DumpError::Parse { line, reason };
        let body = raw.trim();
        if let Some(section) = section_title(body) {
            close(&mut open, &mut out);
            match section.strip_prefix("Logical CPU #") {
                Some(n) => {
                    let index = n
                        .trim()
                        .parse()
                        .map_err(|_| err("bad logical CPU number"))?;
                    open = Some(Open {
                        cpu: DumpedCpu {
                            index,
                            dump: CpuidDump::new(),
                        },
                        seen: Vec::new(),
                    });
                    in_other_section = false;
                }
                None => in_other_section = true,
            }
            continue;
        }
        let Some(rest) = body.strip_prefix("CPUID ") else {
            continue;
        };
        if in_other_section {
            continue;
        }
        let (leaf, rest) = rest
            .split_once(':')
            .ok_or(err("expected `CPUID LEAF: ...`"))?;
        let leaf = parse_hex32(leaf.trim()).ok_or(err("bad leaf number"))?;
        let rest = rest.trim();
        let (regs_text, note) = match rest.split_once('[') {
            Some((r, n)) => (r.trim(), Some(n.trim_end_matches(']').trim())),
            None => (rest, None),
        };
        let mut regs = [0u32; 4];
        let mut parts = regs_text.split('-');
        for r in regs.iter_mut() {
            let w = parts.next().ok_or(err("expected EAX-EBX-ECX-EDX"))?;
            *r = parse_hex32(w.trim()).ok_or(err("bad register value"))?;
        }
        if parts.next().is_some() {
            return Err(err("more than four registers"));
        }
        let o = open.get_or_insert_with(|| Open {
            cpu: DumpedCpu {
                index: 0,
                dump: CpuidDump::new(),
            },
            seen: Vec::new(),
        });
        let explicit = match note.and_then(|n| n.strip_prefix("SL ")) {
            Some(sl) => Some(parse_hex32(sl.trim()).ok_or(err("bad [SL nn] subleaf"))?),
            None => None,
        };
        let nth = match o.seen.iter_mut().find(|(l, _)| *l == leaf) {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                o.seen.push((leaf, 1));
                0
            }
        };
        let subleaf = match explicit {
            Some(s) => s,
            None => {
                let sparse = SPARSE_LEAVES.iter().find(|(l, _)| *l == leaf);
                if sparse.is_some_and(|(_, dense)| nth >= *dense) {
                    continue;
                }
                nth
            }
        };
        o.cpu.dump.set(leaf, subleaf, regs);
    }
    close(&mut open, &mut out);
    if out.is_empty() {
        return Err(DumpError::Empty);
    }
    Ok(out)
}

/// The title of a `------[ Title ]------` line.
fn section_title(line: &str) -> Option<&str> {
    let inner = line.strip_prefix("------[")?.strip_suffix("]------")?;
    Some(inner.trim())
}

/// XCR0 for a dump that does not record it: every supported user state component when the OS
/// enabled XSAVE, else 0.
fn assumed_xcr0(d: &CpuidDump) -> u64 {
    let osxsave = d.get(1, 0).is_some_and(|r| r[2] & OSXSAVE != 0);
    let max = d.get(0, 0).map_or(0, |r| r[0]);
    if !osxsave || max < 0xd {
        return 0;
    }
    d.get(0xd, 0)
        .map_or(0, |r| u64::from(r[0]) | (u64::from(r[3]) << 32))
}

/// Whether `text` is an AIDA64 / InstLatx64 dump (it has `CPUID LEAF:` lines).
pub fn is_aida64(text: &str) -> bool {
    text.lines().any(|l| {
        l.trim()
            .strip_prefix("CPUID ")
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(leaf, _)| parse_hex32(leaf.trim()).is_some())
    })
}

/// Every CPU in a dump of either form: an AIDA64 / InstLatx64 dump ([`parse_aida64`]) or this
/// crate's [text format](CpuidDump#text-format) (one CPU, number 0).
pub fn parse_dumps(text: &str) -> Result<Vec<DumpedCpu>, DumpError> {
    if is_aida64(text) {
        return parse_aida64(text);
    }
    let dump = CpuidDump::from_text(text)?;
    if dump.entries.is_empty() {
        return Err(DumpError::Empty);
    }
    Ok(alloc::vec![DumpedCpu { index: 0, dump }])
}

fn parse_hex64(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn parse_hex32(s: &str) -> Option<u32> {
    parse_hex64(s).and_then(|v| u32::try_from(v).ok())
}

impl CpuidSource for CpuidDump {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.get(leaf, subleaf).unwrap_or([0; 4])
    }

    fn xgetbv(&self, xcr: u32) -> u64 {
        if xcr == 0 {
            self.xcr0
        } else {
            0
        }
    }

    fn os_enabled(&self) -> OsEnabled {
        self.os
    }
}

impl fmt::Display for CpuidDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# leaf subleaf eax ebx ecx edx")?;
        for e in self.entries() {
            writeln!(
                f,
                "{:x} {:x} {:08x} {:08x} {:08x} {:08x}",
                e.leaf, e.subleaf, e.regs[0], e.regs[1], e.regs[2], e.regs[3]
            )?;
        }
        writeln!(f, "xcr0 {:x}", self.xcr0)?;
        if self.os.contains(OsEnabled::FSGSBASE) {
            writeln!(f, "os fsgsbase")?;
        }
        Ok(())
    }
}

/// QEMU CPU model names [`cpu_model_dump`] knows.
#[cfg(feature = "models")]
pub const CPU_MODELS: &[&str] = &[
    "qemu64",
    "Nehalem",
    "Westmere",
    "SandyBridge",
    "Haswell",
    "Skylake-Client",
    "Icelake-Server",
    "EPYC",
    "max",
];

/// The CPUID that `qemu-x86_64 -cpu NAME` presents to a program, for the models in
/// [`CPU_MODELS`] (names compared ignoring ASCII case).
///
/// The dumps were recorded with `qemu-x86_64 -cpu NAME target/release/examples/cpus --cpuid`
/// under QEMU 7.2 (Debian 12) in user mode, so they are QEMU's CPU model definitions as the TCG
/// emulator delivers them: a feature of the model that TCG cannot emulate is absent here, as it
/// is for a program run under that model. Plans made for a model therefore match what a run
/// under `qemu-x86_64 -cpu NAME` can execute. (So `Icelake-Server` here has no AVX-512 and
/// `Skylake-Client` no RDSEED: QEMU 7.2's TCG does not emulate them.)
///
/// | model            | vendor, family/model/stepping | highlights                         |
/// |------------------|-------------------------------|------------------------------------|
/// | `qemu64`         | AMD 0xf/0x6b/1                | SSE3, CMPXCHG16B; no POPCNT        |
/// | `Nehalem`        | Intel 6/0x1a/3                | SSE4.2, POPCNT; no AVX             |
/// | `Westmere`       | Intel 6/0x2c/1                | + AES, PCLMULQDQ                   |
/// | `SandyBridge`    | Intel 6/0x2a/1                | + AVX (XCR0 = 7)                   |
/// | `Haswell`        | Intel 6/0x3c/4                | + AVX2, BMI1/2, FMA, MOVBE, LZCNT  |
/// | `Skylake-Client` | Intel 6/0x5e/3                | + ADX (no CLFLUSHOPT in this model)|
/// | `Icelake-Server` | Intel 6/0x86/0                | + CLFLUSHOPT, CLWB; AVX-512 not in TCG |
/// | `EPYC`           | AMD 0x17/0x01/2               | AVX2, BMI2, ADX, CLFLUSHOPT        |
/// | `max`            | AMD 0xf/0x6b/1                | everything TCG emulates            |
#[cfg(feature = "models")]
pub fn cpu_model_dump(name: &str) -> Option<CpuidDump> {
    let text = models::MODELS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| *t)?;
    CpuidDump::from_text(text).ok()
}

/// The features [probe] finds in [`cpu_model_dump`]`(name)`.
#[cfg(feature = "models")]
pub fn model_features(name: &str) -> Option<Features> {
    cpu_model_dump(name).map(|d| probe(&d).features)
}

#[cfg(feature = "models")]
mod models {
    //! Recorded dumps; see [`super::cpu_model_dump`].
    //! Each text is the output of `qemu-x86_64 -cpu NAME target/release/examples/cpus --cpuid`
    //! (QEMU 7.2, user mode, TCG), comments removed.
    pub(super) const MODELS: &[(&str, &str)] = &[
        (
            "qemu64",
            "\
         0 0 0000000d 68747541 444d4163 69746e65\n\
         1 0 00060fb1 00000800 80002001 078bfbfd\n\
         7 0 00000000 00000000 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 00000000 00000000 00000000 00000000\n\
         d 1 00000000 00000000 00000000 00000000\n\
         80000000 0 8000000a 68747541 444d4163 69746e65\n\
         80000001 0 00060fb1 00000000 00000005 2193fbfd\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 0\n",
        ),
        (
            "Nehalem",
            "\
         0 0 0000000b 756e6547 6c65746e 49656e69\n\
         1 0 000106a3 00000800 80982201 078bfbfd\n\
         7 0 00000000 00000000 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         80000000 0 80000008 756e6547 6c65746e 49656e69\n\
         80000001 0 000106a3 00000000 00000001 20100800\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 0\n",
        ),
        (
            "Westmere",
            "\
         0 0 0000000b 756e6547 6c65746e 49656e69\n\
         1 0 000206c1 00000800 82982203 078bfbfd\n\
         7 0 00000000 00000000 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         80000000 0 80000008 756e6547 6c65746e 49656e69\n\
         80000001 0 000206c1 00000000 00000001 20100800\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 0\n",
        ),
        (
            "SandyBridge",
            "\
         0 0 0000000d 756e6547 6c65746e 49656e69\n\
         1 0 000206a1 00000800 9e982203 078bfbfd\n\
         7 0 00000000 00000000 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 00000007 00000340 00000340 00000000\n\
         d 1 00000001 00000340 00000000 00000000\n\
         80000000 0 80000008 756e6547 6c65746e 49656e69\n\
         80000001 0 000206a1 00000000 00000001 28100800\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 7\n",
        ),
        (
            "Haswell",
            "\
         0 0 0000000d 756e6547 6c65746e 49656e69\n\
         1 0 000306c4 00000800 fed83203 078bfbfd\n\
         7 0 00000000 000003a9 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 00000007 00000340 00000340 00000000\n\
         d 1 00000001 00000340 00000000 00000000\n\
         80000000 0 80000008 756e6547 6c65746e 49656e69\n\
         80000001 0 000306c4 00000000 00000021 28100800\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 7\n",
        ),
        (
            "Skylake-Client",
            "\
         0 0 0000000d 756e6547 6c65746e 49656e69\n\
         1 0 000506e3 00000800 fed83203 078bfbfd\n\
         7 0 00000000 001803a9 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 00000007 00000340 00000340 00000000\n\
         d 1 00000005 00000340 00000000 00000000\n\
         80000000 0 80000008 756e6547 6c65746e 49656e69\n\
         80000001 0 000506e3 00000000 00000021 28100800\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 7\n",
        ),
        (
            "Icelake-Server",
            "\
         0 0 0000000d 756e6547 6c65746e 49656e69\n\
         1 0 00080660 00000800 fed83203 078bfbfd\n\
         7 0 00000000 019803a9 0001020c 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 000002e7 00000a88 00000a88 00000000\n\
         d 1 00000005 00000988 00000000 00000000\n\
         80000000 0 80000008 756e6547 6c65746e 49656e69\n\
         80000001 0 00080660 00000000 00000021 2c100800\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003928 00000000 00000000 00000000\n\
         xcr0 207\n",
        ),
        (
            "EPYC",
            "\
         0 0 0000000d 68747541 444d4163 69746e65\n\
         1 0 00800f12 00000800 fed8320b 078bfbfd\n\
         7 0 00000000 009801a9 00000000 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 00000007 00000340 00000340 00000000\n\
         d 1 00000005 00000340 00000000 00000000\n\
         80000000 0 8000001e 68747541 444d4163 69746e65\n\
         80000001 0 00800f12 00000000 00000075 2dd3fbfd\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003028 00000000 00000000 00000000\n\
         xcr0 7\n",
        ),
        (
            "max",
            "\
         0 0 0000000d 68747541 444d4163 69746e65\n\
         1 0 00060fb1 00000800 fed8320b 0fcbfbfd\n\
         7 0 00000000 01d843a9 8001020c 00000000\n\
         7 1 00000000 00000000 00000000 00000000\n\
         d 0 0000021f 00000a88 00000a88 00000000\n\
         d 1 00000005 000003c8 00000000 00000000\n\
         80000000 0 8000000a 68747541 444d4163 69746e65\n\
         80000001 0 00060fb1 00000000 00000075 edd3fbfd\n\
         80000007 0 00000000 00000000 00000000 00000000\n\
         80000008 0 00003928 00000000 00000000 00000000\n\
         xcr0 21f\n",
        ),
    ];
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::cpuid::{CoreType, Vendor};
    use alloc::format;
    use alloc::string::String;

    const INTEL: [u32; 4] = [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];

    fn haswell() -> CpuidDump {
        CpuidDump::new()
            .with(0, 0, INTEL)
            .with(1, 0, [0x0003_06c3, 0x0000_0800, 0x7ffa_fbff, 0x178b_fbff])
            .with(7, 0, [0, 0x0000_27ab, 0, 0])
            .with(0x8000_0000, 0, [0x8000_0008, 0, 0, 0])
            .with(0x8000_0001, 0, [0, 0, 0x21, 0x2c10_0800])
    }

    #[test]
    fn text_round_trip_and_errors() {
        let mut d = haswell();
        d.set_xcr0(7);
        d.set_os_enabled(OsEnabled::FSGSBASE);
        let back = CpuidDump::from_text(&format!("{d}")).unwrap();
        assert_eq!(back, d);
        assert_eq!(probe(&back), probe(&d));
        assert!(probe(&back).features.contains(Features::FSGSBASE));
        let plain = CpuidDump::from_text("os -\n").unwrap();
        assert_eq!(plain.os_enabled(), OsEnabled::empty());
        assert!(CpuidDump::from_text("os amx\n").is_err());

        assert_eq!(
            CpuidDump::from_text("1 0 1 2 3"),
            Err(DumpError::Parse {
                line: 1,
                reason: "expected: leaf subleaf eax ebx ecx edx"
            })
        );
        assert!(matches!(
            CpuidDump::from_text("# ok\n\n1 0 1 2 3 zz"),
            Err(DumpError::Parse { line: 3, .. })
        ));
        assert!(CpuidDump::from_text("1 0 1 2 3 100000000").is_err());
        assert!(CpuidDump::from_text("xcr0").is_err());
        assert!(CpuidDump::from_text("xcr0 0x").is_err());
        let d = CpuidDump::from_text("0x1 0x0 0x1 2 3 4 # c\nXCR0 0xe7\n").unwrap();
        assert_eq!(d.get(1, 0), Some([1, 2, 3, 4]));
        assert_eq!(d.xcr0(), 0xe7);
        let mut d = d;
        d.set(1, 0, [5; 4]);
        assert_eq!(
            (d.entries().len(), d.get(1, 0)),
            (1, Some([5; 4])),
            "replaced"
        );
    }

    #[test]
    fn a_full_dump_of_a_recent_server_part_fits() {
        // Granite Rapids answers 92 leaf/subleaf pairs, Zen 4 Genoa 79: the old fixed table of
        // 64 refused both. 200 distinct answers, in the text form and in the AIDA64 form.
        let mut text = String::from("0 0 00000023 756e6547 6c65746e 49656e69\n");
        let mut aida = String::from("CPUID 00000000: 00000023-756E6547-6C65746E-49656E69\n");
        for i in 1..200u32 {
            let (leaf, sub) = (i % 0x24, i / 0x24);
            text.push_str(&format!("{leaf:x} {sub:x} {i:x} 0 0 0\n"));
            aida.push_str(&format!(
                "CPUID {leaf:08X}: {i:08X}-00000000-00000000-00000000 [SL {sub:02X}]\n"
            ));
        }
        let d = CpuidDump::from_text(&text).unwrap();
        assert_eq!(d.entries().len(), 200);
        assert_eq!(d.get(0x11, 5), Some([0x11 + 5 * 0x24, 0, 0, 0]));
        let cpus = parse_dumps(&aida).unwrap();
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0].dump.entries().len(), 200);
        assert_eq!(cpus[0].dump.get(0x11, 5), d.get(0x11, 5));
    }

    /// Two logical CPUs of the InstLatx64 dump of a Xeon X5550 (Nehalem-EP, EVEREST v5.00,
    /// `GenuineIntel00106A2_Nehalem-EP_CPUID.txt`), shortened: no `[SL nn]` notes, leaf 4's
    /// subleaves in order, an MSR section after the CPUs.
    const NEHALEM_EP: &str = "\
------[ Versions ]------

Program Version : EVEREST v5.00.1650

------[ CPU Info ]------

CPUID Revision     : 000106A2h

------[ Logical CPU #0 ]------

allcpu: Valid

CPUID 00000000: 0000000B-756E6547-6C65746E-49656E69
CPUID 00000001: 000106A2-00100800-00BCE3BD-BFEBFBFF
CPUID 00000004: 1C004121-01C0003F-0000003F-00000000
CPUID 00000004: 1C004122-00C0003F-0000007F-00000000
CPUID 00000004: 1C004143-01C0003F-000001FF-00000000
CPUID 00000004: 1C03C163-03C0003F-00001FFF-00000002
CPUID 00000007: 00000000-00000000-00000000-00000000
CPUID 0000000B: 00000001-00000002-00000100-00000000
CPUID 0000000B: 00000004-00000008-00000201-00000000
CPUID 80000000: 80000008-00000000-00000000-00000000
CPUID 80000001: 00000000-00000000-00000001-28100000
CPUID 80000008: 00003028-00000000-00000000-00000000

L1    Data Cache:     32 KB,  8-way Associative, 64-byte Line

------[ Logical CPU #4 ]------

allcpu: Valid, Virtual

CPUID 00000000: 0000000B-756E6547-6C65746E-49656E69
CPUID 00000001: 000106A2-01100800-00BCE3BD-BFEBFBFF
CPUID 00000004: 1C004121-01C0003F-0000003F-00000000
CPUID 00000004: 1C004122-00C0003F-0000007F-00000000
CPUID 0000000B: 00000001-00000002-00000100-00000001
CPUID 80000000: 80000008-00000000-00000000-00000000
CPUID 80000001: 00000000-00000000-00000001-28100000

------[ MSR Registers ]------

MSR 00000017: 0000-0000-0000-0000 [PlatID = 0]
CPUID 00000001: FFFFFFFF-FFFFFFFF-FFFFFFFF-FFFFFFFF
";

    #[test]
    fn everest_dump_one_cpu_per_section_subleaves_in_order() {
        let cpus = parse_aida64(NEHALEM_EP).unwrap();
        assert_eq!(cpus.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 4]);
        let d0 = &cpus[0].dump;
        assert_eq!(d0.get(4, 2), Some([0x1c00_4143, 0x01c0_003f, 0x1ff, 0]));
        assert_eq!(d0.get(4, 3).map(|r| r[3]), Some(2));
        assert_eq!(d0.get(0xb, 1).map(|r| r[0]), Some(4));
        // The line after the MSR section header belongs to no CPU.
        assert_eq!(cpus[1].dump.get(1, 0).map(|r| r[1]), Some(0x0110_0800));
        let p = probe(d0);
        assert_eq!(p.vendor, Vendor::Intel);
        assert_eq!((p.family, p.model, p.stepping), (6, 0x1a, 2));
        assert!(p
            .features
            .contains(Features::SSE4_2 | Features::POPCNT | Features::SSSE3));
        // No OSXSAVE, no XSAVE on Nehalem: XCR0 0, no AVX.
        assert_eq!(d0.xcr0(), 0);
        assert!(!p.features.intersects(Features::AVX | Features::XSAVE));
        assert_eq!(probe(&cpus[1].dump).features, p.features);
    }

    /// A hybrid part (values shaped like an Alder Lake P-core and E-core) in the current AIDA64
    /// form: `[SL nn]` notes, a vendor note on leaf 0, core-type notes on leaf 0x1A. CPU #0's
    /// leaf 0xD lines have no notes: subleaves 0 and 1, then the AVX component's line, which a
    /// dump lists in whatever position the components present give it, so it is skipped.
    const HYBRID: &str = "\
------[ Logical CPU #0 ]------

CPUID 00000000: 00000020-756E6547-6C65746E-49656E69 [GenuineIntel]
CPUID 00000001: 00090672-00800800-7FFAFBFF-BFEBFBFF
CPUID 00000007: 00000001-239CA7EB-98C027AC-FC1CC410 [SL 00]
CPUID 00000007: 00400810-00000000-00000000-00000000 [SL 01]
CPUID 0000000D: 00000207-00000A88-00000A88-00000000
CPUID 0000000D: 0000000F-00000670-00019900-00000000
CPUID 0000000D: 00000100-00000240-00000000-00000000
CPUID 0000001A: 40000001-00000000-00000000-00000000 [Core]
CPUID 80000000: 80000008-00000000-00000000-00000000
CPUID 80000001: 00000000-00000000-00000121-2C100800

------[ Logical CPU #16 ]------

CPUID 00000000: 00000020-756E6547-6C65746E-49656E69 [GenuineIntel]
CPUID 00000001: 00090672-00800800-7FFAFBFF-BFEBFBFF
CPUID 00000007: 00000001-239CA7EB-98C027AC-FC1CC410 [SL 00]
CPUID 0000000D: 00000207-00000A88-00000A88-00000000 [SL 00]
CPUID 0000000D: 00000100-00000240-00000000-00000000 [SL 02]
CPUID 0000001A: 20000001-00000000-00000000-00000000 [Atom]
CPUID 80000000: 80000008-00000000-00000000-00000000
CPUID 80000001: 00000000-00000000-00000121-2C100800
";

    #[test]
    fn aida64_notes_give_subleaves_and_core_types() {
        let cpus = parse_dumps(HYBRID).unwrap();
        assert_eq!(cpus.len(), 2);
        let (p, e) = (&cpus[0].dump, &cpus[1].dump);
        assert_eq!(p.get(7, 1).map(|r| r[0]), Some(0x0040_0810));
        assert_eq!(p.get(0xd, 1).map(|r| r[0]), Some(0xf));
        assert_eq!(
            p.get(0xd, 2),
            None,
            "an unnoted component line is not a subleaf"
        );
        assert_eq!(e.get(0xd, 2).map(|r| r[0]), Some(0x100), "a noted one is");
        // OSXSAVE set: XCR0 is the supported mask of leaf 0xD subleaf 0 (x87, SSE, AVX, PKRU).
        assert_eq!(p.xcr0(), 0x207);
        assert_eq!(probe(p).core_type, CoreType::Core);
        assert_eq!(probe(e).core_type, CoreType::Atom);
        assert_eq!((cpus[0].index, cpus[1].index), (0, 16));
        assert!(probe(p)
            .features
            .contains(Features::AVX2 | Features::HYBRID));
    }

    #[test]
    fn aida64_errors_name_the_line() {
        assert_eq!(
            parse_aida64("CPUID 00000000: 0000000B-756E6547\n"),
            Err(DumpError::Parse {
                line: 1,
                reason: "expected EAX-EBX-ECX-EDX"
            })
        );
        assert!(matches!(
            parse_aida64("\n------[ Logical CPU #x ]------\n"),
            Err(DumpError::Parse { line: 2, .. })
        ));
        assert!(matches!(
            parse_aida64("CPUID 00000004: 0-0-0-0 [SL zz]"),
            Err(DumpError::Parse { line: 1, .. })
        ));
        assert_eq!(
            parse_aida64("------[ Logical CPU #0 ]------\n"),
            Err(DumpError::Empty)
        );
        assert_eq!(parse_dumps("# nothing\n"), Err(DumpError::Empty));
        // Without section headers, a dump of CPUID lines is one CPU.
        let one = parse_dumps("CPUID 00000000: 00000001-756E6547-6C65746E-49656E69\n").unwrap();
        assert_eq!((one.len(), one[0].index), (1, 0));
    }

    #[test]
    #[cfg(feature = "models")]
    fn qemu_models() {
        for name in CPU_MODELS {
            let d = cpu_model_dump(name).unwrap_or_else(|| panic!("{name} parses"));
            assert_ne!(probe(&d).max_leaf, 0, "{name}");
        }
        assert!(cpu_model_dump("haswell").is_some(), "case-insensitive");
        assert!(cpu_model_dump("Pentium5").is_none());
        let f = |n| model_features(n).unwrap();
        assert!(!f("qemu64").contains(Features::POPCNT));
        assert!(f("Nehalem").contains(Features::POPCNT | Features::SSE4_2));
        assert!(!f("Nehalem").intersects(Features::AVX | Features::AVX2));
        assert!(f("SandyBridge").contains(Features::AVX));
        assert!(!f("SandyBridge").contains(Features::AVX2));
        let hsw = Features::AVX2 | Features::BMI1 | Features::BMI2 | Features::FMA;
        assert!(f("Haswell").contains(hsw | Features::LZCNT | Features::MOVBE));
        assert!(f("Skylake-Client").contains(hsw | Features::ADX));
        assert!(f("Icelake-Server").contains(Features::CLWB | Features::CLFLUSHOPT));
        assert!(!f("Icelake-Server").contains(Features::AVX512F));
        let epyc = probe(&cpu_model_dump("EPYC").unwrap());
        assert_eq!(epyc.vendor, Vendor::Amd);
        assert_eq!((epyc.family, epyc.model, epyc.stepping), (0x17, 1, 2));
        let hsw = probe(&cpu_model_dump("Haswell").unwrap());
        assert_eq!(
            (hsw.vendor, hsw.family, hsw.model),
            (Vendor::Intel, 6, 0x3c)
        );
    }
}
