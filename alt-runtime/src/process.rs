//! Patching the running process (hosted Linux): probe, override, plan, write, report, revert.
//!
//! ```no_run
//! let report = alt_runtime::process::patch_self().expect("patching");
//! println!("{report}");
//! ```
//!
//! [`patch_self`] patches once per process; later calls return [`ProcessError::AlreadyPatched`].
//! [`revert_self`] restores every site's original bytes. Both refuse while the process has
//! other threads (see [`crate::os::linux::MprotectWriter`]): patch first, then start threads.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use crate::capability::CapabilitySet;
use crate::linker::{lookup_name, sections};
use crate::os::linux::{executable_segments_containing, MprotectWriter};
use crate::overrides::{Overrides, ENV_VAR};
use crate::patch::{apply, PatchError, Patched};
use crate::plan::{plan_alternatives, Layout, LiveMemory, TableEntry, TableError};
use crate::report::Report;

/// Why patching the process failed.
#[derive(Debug)]
pub enum ProcessError {
    /// [`patch_self`] already ran.
    AlreadyPatched,
    /// [`revert_self`] found nothing patched.
    NotPatched,
    /// Probing the CPUs failed.
    Probe(std::string::String),
    /// The override variable names an unknown capability.
    Override(std::string::String),
    /// The table is invalid; nothing was written.
    Table(TableError),
    /// Writing failed.
    Patch(PatchError),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::AlreadyPatched => f.write_str("this process is already patched"),
            ProcessError::NotPatched => f.write_str("this process is not patched"),
            ProcessError::Probe(e) => write!(f, "probing the CPUs failed: {e}"),
            ProcessError::Override(e) => f.write_str(e),
            ProcessError::Table(e) => write!(f, "invalid alternatives table: {e}"),
            ProcessError::Patch(e) => write!(f, "patching failed: {e}"),
        }
    }
}

impl std::error::Error for ProcessError {}

static PATCHED: Mutex<Option<Patched>> = Mutex::new(None);

/// The capabilities of this system: features every online CPU has, errata any has.
pub fn system_capabilities() -> Result<CapabilitySet, ProcessError> {
    let cpus =
        crate::cpu::probe_online_cpus().map_err(|e| ProcessError::Probe(std::format!("{e}")))?;
    Ok(crate::policy::SystemCaps::from_cpus(&cpus).capabilities())
}

/// The overrides from the environment ([`ENV_VAR`]).
pub fn env_overrides() -> Result<Overrides, ProcessError> {
    match std::env::var(ENV_VAR) {
        Ok(v) => Overrides::parse(&v).map_err(|e| ProcessError::Override(std::format!("{e}"))),
        Err(std::env::VarError::NotPresent) => Ok(Overrides::default()),
        Err(std::env::VarError::NotUnicode(_)) => Err(ProcessError::Override(std::format!(
            "{ENV_VAR} is not valid UTF-8"
        ))),
    }
}

/// The layout of this program's text and replacement section.
pub fn process_text() -> (Vec<Range<u64>>, Range<u64>) {
    let s = sections();
    let text = executable_segments_containing(s.alt_instr.0 as u64);
    (text, s.alt_replacement.0 as u64..s.alt_replacement.1 as u64)
}

/// How [`patch_self_with`] patches.
#[derive(Clone, Debug, Default)]
pub struct PatchOptions {
    capabilities: Option<CapabilitySet>,
    allow_other_threads: bool,
    strict_wx: bool,
}

impl PatchOptions {
    /// Probe every CPU, apply the environment overrides, refuse if other threads exist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Patch for these capabilities instead of probing (the environment overrides still apply).
    pub fn capabilities(mut self, caps: CapabilitySet) -> Self {
        self.capabilities = Some(caps);
        self
    }

    /// Patch even though the process has other threads.
    ///
    /// # Safety
    ///
    /// No other thread may execute any site while patching runs, and each must serialise
    /// before it next runs patched code (see [`MprotectWriter::allow_other_threads`]). Under
    /// `qemu-user` the emulator's own helper thread shows as a thread of the process; it never
    /// runs guest code, so a single-threaded guest program may take this responsibility.
    pub unsafe fn allow_other_threads(mut self) -> Self {
        self.allow_other_threads = true;
        self
    }

    /// Whether [`PatchOptions::allow_other_threads`] was given.
    pub fn allows_other_threads(&self) -> bool {
        self.allow_other_threads
    }

    /// Never make a page writable, not even for the moment of the copy: write through
    /// `/proc/self/mem` (see [`MprotectWriter::through_proc_self_mem`]).
    pub fn strict_wx(mut self) -> Self {
        self.strict_wx = true;
        self
    }

    /// A writer for this process's text that honours these options.
    pub fn writer(&self) -> MprotectWriter {
        let mut writer = MprotectWriter::new();
        if self.strict_wx {
            writer = writer.through_proc_self_mem();
        }
        if self.allow_other_threads {
            // SAFETY: the caller of PatchOptions::allow_other_threads took this responsibility.
            unsafe { writer.allow_other_threads() }
        } else {
            writer
        }
    }
}

/// Probes, applies the environment overrides, and patches every site of this program.
pub fn patch_self() -> Result<Report, ProcessError> {
    patch_self_with(&PatchOptions::new())
}

/// Patches every site of this program as the options say.
pub fn patch_self_with(options: &PatchOptions) -> Result<Report, ProcessError> {
    let mut caps = match options.capabilities {
        Some(c) => c,
        None => system_capabilities()?,
    };
    env_overrides()?.apply(&mut caps);
    let caps = &caps;
    let mut guard = PATCHED.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_some() {
        return Err(ProcessError::AlreadyPatched);
    }
    let started = Instant::now();
    let s = sections();
    let (text, replacements) = process_text();
    let layout = Layout {
        text: &text,
        replacements,
    };
    let entries: Vec<TableEntry> = s
        .alt_entries()
        .iter()
        .map(|e| TableEntry {
            addr: e as *const _ as u64,
            entry: *e,
        })
        .collect();
    // SAFETY: the layout's ranges are this program's executable segments and its replacement
    // section, mapped readable for the program's lifetime.
    let mem = unsafe { LiveMemory::new() };
    let plan = plan_alternatives(&entries, &layout, caps, &mem).map_err(ProcessError::Table)?;
    let mut writer = options.writer();
    let mut patched = apply(plan, &mut writer).map_err(ProcessError::Patch)?;
    let report = patched.report_mut();
    report.elapsed_ns = Some(started.elapsed().as_nanos() as u64);
    // SAFETY: name entries are emitted by the macros and point at `&'static str` statics.
    report.name_sites(
        |addr| unsafe { lookup_name(s.site_names(), addr) },
        |index| {
            let addr = entries.get(index)?.addr;
            // SAFETY: as above.
            unsafe { lookup_name(s.entry_names(), addr) }
        },
    );
    let report = report.clone();
    *guard = Some(patched);
    Ok(report)
}

/// Restores every site patched by [`patch_self`] to its original bytes.
pub fn revert_self() -> Result<(), ProcessError> {
    revert_self_with(&PatchOptions::new())
}

/// Restores every site patched by [`patch_self`] to its original bytes; of the options only
/// [`PatchOptions::allow_other_threads`] and [`PatchOptions::strict_wx`] matter.
pub fn revert_self_with(options: &PatchOptions) -> Result<(), ProcessError> {
    let mut guard = PATCHED.lock().unwrap_or_else(|p| p.into_inner());
    let patched = guard.take().ok_or(ProcessError::NotPatched)?;
    let mut writer = options.writer();
    match patched.revert(&mut writer) {
        Ok(_) => Ok(()),
        Err((patched, e)) => {
            *guard = Some(patched);
            Err(ProcessError::Patch(e))
        }
    }
}
