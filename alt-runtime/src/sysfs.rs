//! What Linux says about the CPUs in sysfs, read from a root directory so that recorded trees
//! of other machines can be replayed.
//!
//! | file (under the root, which stands for `/sys`)                  | what it says |
//! |------------------------------------------------------------------|--------------|
//! | `devices/system/cpu/online`                                      | the online CPUs, a CPU list (`0-3,5`) |
//! | `devices/system/cpu/offline`                                     | CPUs present or possible but not online |
//! | `devices/system/cpu/cpuN/regs/identification/midr_el1`           | AArch64: CPU N's MIDR_EL1 (`0x00000000410fd034`), online CPUs only |
//! | `devices/system/cpu/cpuN/regs/identification/revidr_el1`         | AArch64: CPU N's REVIDR_EL1 |
//! | `devices/cpu_core/cpus`, `devices/cpu_atom/cpus`                 | x86 hybrid parts: the CPUs of each core type (the PMU of each kind) |
//!
//! Linux creates `regs/identification` when a CPU comes online and removes it when the CPU goes
//! offline (`arch/arm64/kernel/cpuinfo.c`), and prints both registers as 64-bit hexadecimal
//! numbers of which the low 32 bits are the register.
//!
//! ```
//! use alt_runtime::sysfs::CpuList;
//!
//! let l = CpuList::parse("0-3,5,7-8\n").unwrap();
//! assert_eq!(l.cpus(), &[0, 1, 2, 3, 5, 7, 8]);
//! assert_eq!(l.to_string(), "0-3,5,7-8");
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

use crate::x86_64::cpuid::CoreType;

/// A set of CPU numbers, as Linux's CPU-list format writes it (`0-3,5,7-8`), in increasing
/// order without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuList(Vec<u32>);

/// Largest CPU number accepted in a list (Linux's `NR_CPUS` tops out at 8192).
pub const MAX_CPU: u32 = 65_535;

impl CpuList {
    /// Parses a CPU list: comma-separated numbers and `a-b` ranges, surrounding whitespace and
    /// a trailing newline allowed; an empty text is the empty list.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut cpus = Vec::new();
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self(cpus));
        }
        for item in text.split(',') {
            let item = item.trim();
            let num = |s: &str| -> Result<u32, &'static str> {
                let n: u32 = s.trim().parse().map_err(|_| "not a CPU number")?;
                if n > MAX_CPU {
                    return Err("CPU number too large");
                }
                Ok(n)
            };
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err("range ends before it starts");
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(item)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }

    /// A list of these CPUs.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Self {
        let mut v: Vec<u32> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Self(v)
    }

    /// The CPUs, in increasing order.
    pub fn cpus(&self) -> &[u32] {
        &self.0
    }

    /// Whether `cpu` is in the list.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPUs of this list that are also in `other`.
    pub fn intersection(&self, other: &CpuList) -> CpuList {
        Self(
            self.0
                .iter()
                .copied()
                .filter(|c| other.contains(*c))
                .collect(),
        )
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// Why a sysfs file could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: SysfsErrorKind,
}

/// What went wrong with a sysfs file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysfsErrorKind {
    /// Reading it failed.
    Io(io::ErrorKind),
    /// Its content is not what Linux writes there.
    Parse(&'static str),
}

impl fmt::Display for SysfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SysfsErrorKind::Io(k) => write!(f, "{}: {}", self.path.display(), io::Error::from(*k)),
            SysfsErrorKind::Parse(why) => write!(f, "{}: {why}", self.path.display()),
        }
    }
}

impl std::error::Error for SysfsError {}

/// The CPUs of each core type of an x86 hybrid part, from the PMU devices Linux registers for
/// them (`cpu_core` for P-cores, `cpu_atom` for E-cores).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreTypes(pub Vec<(CoreType, CpuList)>);

/// A sysfs tree: the system's (`/sys`) or a recorded copy of one, laid out the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// This system's sysfs, `/sys`.
    pub fn system() -> Self {
        Self::at("/sys")
    }

    /// The tree whose root (standing for `/sys`) is `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self, rel: &str) -> Result<(PathBuf, String), SysfsError> {
        let path = self.root.join(rel);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok((path, s)),
            Err(e) => Err(SysfsError {
                path,
                kind: SysfsErrorKind::Io(e.kind()),
            }),
        }
    }

    fn read_list(&self, rel: &str) -> Result<CpuList, SysfsError> {
        let (path, text) = self.read(rel)?;
        CpuList::parse(&text).map_err(|why| SysfsError {
            path,
            kind: SysfsErrorKind::Parse(why),
        })
    }

    /// The online CPUs (`devices/system/cpu/online`).
    pub fn online_cpus(&self) -> Result<CpuList, SysfsError> {
        self.read_list("devices/system/cpu/online")
    }

    /// The CPUs that exist but are not online (`devices/system/cpu/offline`); empty when the
    /// file is missing (kernels without CPU hotplug).
    pub fn offline_cpus(&self) -> Result<CpuList, SysfsError> {
        match self.read_list("devices/system/cpu/offline") {
            Err(SysfsError {
                kind: SysfsErrorKind::Io(io::ErrorKind::NotFound),
                ..
            }) => Ok(CpuList::default()),
            other => other,
        }
    }

    fn read_reg(&self, cpu: u32, name: &str) -> Result<u32, SysfsError> {
        let rel = std::format!("devices/system/cpu/cpu{cpu}/regs/identification/{name}");
        let (path, text) = self.read(&rel)?;
        let bad = |why| SysfsError {
            path: path.clone(),
            kind: SysfsErrorKind::Parse(why),
        };
        let t = text.trim();
        if t.is_empty() {
            // Linux writes nothing when it has no value for the CPU.
            return Err(bad("empty: the kernel has no value for this CPU"));
        }
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .ok_or(bad("expected a 0x-prefixed hexadecimal number"))?;
        let v = u64::from_str_radix(digits, 16).map_err(|_| bad("not a hexadecimal number"))?;
        u32::try_from(v).map_err(|_| bad("value does not fit the 32-bit register"))
    }

    /// AArch64: CPU `cpu`'s MIDR_EL1 and REVIDR_EL1 (`cpuN/regs/identification`). Exists only
    /// while the CPU is online.
    pub fn arm64_identity(&self, cpu: u32) -> Result<(u32, u32), SysfsError> {
        Ok((
            self.read_reg(cpu, "midr_el1")?,
            self.read_reg(cpu, "revidr_el1")?,
        ))
    }

    /// x86: the CPUs of each core type of a hybrid part, or `None` when neither
    /// `devices/cpu_core/cpus` nor `devices/cpu_atom/cpus` exists (not a hybrid part, or a
    /// kernel or VM without the hybrid PMU devices).
    pub fn core_types(&self) -> Result<Option<CoreTypes>, SysfsError> {
        let mut kinds = Vec::new();
        for (rel, ty) in [
            ("devices/cpu_core/cpus", CoreType::Core),
            ("devices/cpu_atom/cpus", CoreType::Atom),
        ] {
            match self.read_list(rel) {
                Ok(list) => kinds.push((ty, list)),
                Err(SysfsError {
                    kind: SysfsErrorKind::Io(io::ErrorKind::NotFound),
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(if kinds.is_empty() {
            None
        } else {
            Some(CoreTypes(kinds))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn cpu_lists_parse_and_print_as_linux_writes_them() {
        let l = CpuList::parse("0-3,5,7-8\n").unwrap();
        assert_eq!(l.cpus(), &[0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(l.to_string(), "0-3,5,7-8");
        assert_eq!(CpuList::parse("\n").unwrap(), CpuList::default());
        assert_eq!(CpuList::parse("4").unwrap().cpus(), &[4]);
        assert_eq!(CpuList::parse("3,1-2,2").unwrap().to_string(), "1-3");
        assert!(CpuList::parse("1-").is_err());
        assert!(CpuList::parse("3-1").is_err());
        assert!(CpuList::parse("a").is_err());
        assert!(CpuList::parse("0-4294967295").is_err(), "bounded");
        let a = CpuList::parse("0-7").unwrap();
        let b = CpuList::parse("4-11").unwrap();
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert!(a.contains(7) && !a.contains(8));
    }

    #[test]
    fn this_machine() {
        let s = Sysfs::system();
        let online = s.online_cpus().unwrap();
        assert!(online.contains(0) || !online.is_empty());
        assert!(s.offline_cpus().is_ok());
        let missing = Sysfs::at("/nonexistent").online_cpus().unwrap_err();
        assert_eq!(missing.kind, SysfsErrorKind::Io(io::ErrorKind::NotFound));
        assert!(missing
            .to_string()
            .starts_with("/nonexistent/devices/system/cpu/online: "));
    }
}
