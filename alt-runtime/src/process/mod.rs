//! Patching the running process (hosted Linux x86-64): probe, override, plan, write, report,
//! revert. Everything goes through the [driver](crate::driver).
//!
//! # Who calls what
//!
//! - **A library** writes `#[alternative]` (and `paravirt_ops!`) and nothing else. It cannot
//!   know whether the application patches, and need not: its sites are patched when the object
//!   holding them is loaded.
//! - **An application** does nothing: every object that links the runtime (the executable,
//!   each shared library) patches its own sites when it is loaded ([`load`]: an ELF
//!   constructor, before `main` runs or before `dlopen` returns; `ALT_PATCH=off|report`;
//!   [`report`] says what it did). Or it opts out with
//!   [`no_patch_at_load!`](crate::no_patch_at_load) and patches where it wants with
//!   [`patch_self`] or [`patch_self_with`].
//! - **Each object patches only its own sites**: the executable's copy of the runtime patches
//!   the executable; a `cdylib` that links its own copy patches the library, from its own
//!   constructor, with its own state and its own signal.
//!
//! ```no_run
//! // Already patched at load; idempotent, so a library and its application may both call it.
//! let report = alt_runtime::process::patch_self().expect("patching");
//! println!("{report}");
//! ```
//!
//! [`revert_self`] restores every site's original bytes, after which [`patch_self_with`] may
//! patch again, for other capabilities; [`install_paravirt`] patches an operations table for a
//! backend at run time.
//!
//! # Other threads
//!
//! All of these work while other threads run and call the sites. While a batch is written,
//! every other thread of the process waits in a signal handler, none of them strictly inside a
//! site being rewritten, and each serialises before it runs on ([`Threads`], over
//! [`crate::os::rendezvous`]; see `docs/threads.md`). When the caller is the only thread (as at
//! load, in most programs) nothing is signalled at all. What a program must allow: a free
//! real-time signal (the first of `SIGRTMAX - 3` downwards that has no handler and is not
//! blocked by the caller; [`PatchOptions::signal`] names another), and no thread that keeps it
//! blocked: such a thread is named in the error, and nothing is written. Under qemu-user the
//! emulator's helper thread is such a thread once the program has threads of its own (before
//! that the C library says the program is alone, and the helper runs no guest code): patching
//! then fails in about 10 ms (the sites keep their defaults), and a program that knows its own
//! threads lets it run with the unsafe [`PatchOptions::assume_blocking_threads_run_no_sites`].

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use crate::capability::{CapabilitySet, Errata, Features};
use crate::driver::{ApplyError, Patched, Patcher, PlanError};
use crate::linker::sections;
use crate::memory::LiveMemory;
use crate::os::linux::{executable_segments_containing, LoadSegments, MprotectWriter};
use crate::os::rendezvous::StopOptions;
use crate::overrides::{Overrides, ENV_VAR};
use crate::paravirt::{Backend, TableDesc};
use crate::patch::PatchError;
use crate::plan::Layout;
use crate::report::Report;
use alloc::sync::Arc;

pub mod load;
mod threads;

pub use load::{report, LoadOutcome, ALT_PATCH};
pub use threads::{StopRecord, Threads};

/// Why patching the process failed.
#[derive(Debug)]
pub enum ProcessError {
    /// The sites are patched already and the options ask for other capabilities.
    AlreadyPatched,
    /// [`revert_self`] found nothing patched.
    NotPatched,
    /// Probing the CPUs failed.
    Probe(std::string::String),
    /// The override variable names an unknown capability.
    Override(std::string::String),
    /// A table is invalid; nothing was written.
    Plan(PlanError),
    /// Writing failed.
    Patch(alloc::boxed::Box<ApplyError>),
    /// Reverting failed; the record is kept and the revert may be retried.
    Revert(PatchError),
    /// [`PatchOptions::capabilities`] names features some online CPU lacks (listed); nothing
    /// was written.
    Unavailable(Features),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::AlreadyPatched => f.write_str(
                "this object is already patched; revert it before patching for other capabilities",
            ),
            ProcessError::NotPatched => f.write_str("this process is not patched"),
            ProcessError::Probe(e) => write!(f, "probing the CPUs failed: {e}"),
            ProcessError::Override(e) => f.write_str(e),
            ProcessError::Plan(e) => write!(f, "{e}; nothing written"),
            ProcessError::Patch(e) => write!(f, "patching failed: {e}"),
            ProcessError::Revert(e) => write!(f, "reverting failed: {e}; the sites stay patched"),
            ProcessError::Unavailable(missing) => {
                f.write_str("the capabilities given name features some online CPU lacks:")?;
                for cap in CapabilitySet::new(*missing, Errata::empty()).iter() {
                    write!(f, " {cap}")?;
                }
                f.write_str("; nothing written")
            }
        }
    }
}

impl std::error::Error for ProcessError {}

static PATCHED: Mutex<Option<Patched>> = Mutex::new(None);

/// The capabilities of this system: features every online CPU has, errata any has (from one
/// probe of each kind of CPU: [`crate::cpu::probe_cpu_kinds`]).
pub fn system_capabilities() -> Result<CapabilitySet, ProcessError> {
    let cpus =
        crate::cpu::probe_cpu_kinds().map_err(|e| ProcessError::Probe(std::format!("{e}")))?;
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

/// The text of the loaded object holding `addr` and this object's replacement section.
fn object_text(addr: u64) -> (Vec<Range<u64>>, Range<u64>) {
    (
        executable_segments_containing(addr),
        sections().replacements(),
    )
}

/// The layout of this program's text and replacement section.
pub fn process_text() -> (Vec<Range<u64>>, Range<u64>) {
    object_text(sections().alt_instr().start)
}

/// How [`patch_self_with`] patches: which capabilities (probed, or given), whether other threads
/// are allowed, and how text is written.
///
/// ```no_run
/// use alt_runtime::process::{patch_self_with, PatchOptions};
///
/// let options = PatchOptions::new().strict_wx(); // never make a page writable
/// let report = patch_self_with(&options).expect("patching");
/// assert!(report.sites_changed() <= report.sites.len());
/// ```
#[derive(Clone, Debug, Default)]
pub struct PatchOptions {
    capabilities: Option<CapabilitySet>,
    strict_wx: bool,
    stop: StopOptions,
}

/// The last stop and release of the other threads, by any function of this module.
static LAST_STOP: Mutex<Option<StopRecord>> = Mutex::new(None);

/// What the last stop and release of the other threads cost (by [`patch_self`],
/// [`revert_self`], [`install_paravirt`], ... or load-time patching), if there was one.
pub fn last_stop() -> Option<StopRecord> {
    *LAST_STOP.lock().unwrap_or_else(|p| p.into_inner())
}

fn note_stop(threads: &Threads) {
    if let Some(r) = threads.last() {
        *LAST_STOP.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
}

impl PatchOptions {
    /// Probe every CPU, apply the environment overrides, stop every other thread while sites
    /// are written (see [`Threads`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Patch for these capabilities instead of the probed ones (the environment overrides still
    /// apply): fewer features than the system has, or errata it does not have (their
    /// workarounds applied anyway), or errata left out (like [`ALT_CLEARCPUID`]).
    ///
    /// Features can only be taken away: a variant chosen for a feature runs that feature's
    /// instructions, and `#[alternative]` direct calls and `has!` arms call `#[target_feature]`
    /// functions from safe code on its word. So the CPUs are still probed, and a feature some
    /// online CPU lacks makes patching fail with [`ProcessError::Unavailable`], nothing
    /// written. (To see a program decide for another CPU, run it under `qemu-x86_64 -cpu
    /// MODEL`, or plan it offline with `alt-tablegen plan --cpu`.)
    ///
    /// [`ALT_CLEARCPUID`]: crate::overrides::ENV_VAR
    pub fn capabilities(mut self, caps: CapabilitySet) -> Self {
        self.capabilities = Some(caps);
        self
    }

    /// Leave running, instead of refusing, a thread that keeps the rendezvous signal blocked for
    /// the whole one-second wait (and, in later calls, at once if it still blocks it): see
    /// [`StopOptions::assume_blocking_threads_run_no_sites`].
    ///
    /// The case for it is qemu-user: its own helper thread shows in `/proc/self/task`, blocks
    /// every signal for its whole life and never runs guest code. Nothing the guest can read
    /// tells it from a program thread that blocks every signal, so without this option
    /// patching under qemu-user is refused once the program has made a thread (in about 10 ms,
    /// naming the helper; before that the program is alone by its C library's word); with it,
    /// the first call waits one second for the helper.
    ///
    /// # Safety
    ///
    /// No thread that keeps the signal blocked may run a site of this object, or be inside one,
    /// while patching runs, nor create a thread that does.
    pub unsafe fn assume_blocking_threads_run_no_sites(mut self) -> Self {
        // SAFETY: the caller's contract is the same.
        self.stop = unsafe { self.stop.assume_blocking_threads_run_no_sites() };
        self
    }

    /// Stop the other threads with `signal` (a real-time signal the program does not use)
    /// instead of the first free one from `SIGRTMAX - 3` down.
    pub fn signal(mut self, signal: i32) -> Self {
        self.stop = self.stop.signal(signal);
        self
    }

    /// How the other threads are stopped.
    pub fn stop_options(&self) -> &StopOptions {
        &self.stop
    }

    /// Never make a page writable, not even for the moment of the copy: write through
    /// `/proc/self/mem` (see [`MprotectWriter::through_proc_self_mem`]).
    pub fn strict_wx(mut self) -> Self {
        self.strict_wx = true;
        self
    }

    /// A writer for this process's text that honours these options.
    pub fn writer(&self) -> MprotectWriter {
        let writer = MprotectWriter::new();
        if self.strict_wx {
            writer.through_proc_self_mem()
        } else {
            writer
        }
    }

    /// The rendezvous these options ask for.
    pub fn rendezvous(&self) -> Threads {
        Threads::new(self.stop.clone())
    }

    fn decide(&self) -> Result<CapabilitySet, ProcessError> {
        let system = system_capabilities()?;
        let mut caps = match self.capabilities {
            Some(c) => {
                let missing = c.features - system.features;
                if !missing.is_empty() {
                    return Err(ProcessError::Unavailable(missing));
                }
                c
            }
            None => system,
        };
        env_overrides()?.apply(&mut caps);
        Ok(caps)
    }
}

/// Probes, applies the environment overrides, and patches every site of this program; if the
/// sites are patched already (at load, or by an earlier call), returns that report.
pub fn patch_self() -> Result<Arc<Report>, ProcessError> {
    patch_self_with(&PatchOptions::new())
}

/// The writer for this object's own sites: reads `readable` (its text and replacement section)
/// directly. At load (`at_load`: `segments` are this object's), it also takes the text pages to
/// have the protection the loader gave them, so that no `/proc/self/maps` is read: while the
/// object's constructor runs, nothing but the loader has touched them. Later (a tool that hooks
/// functions may have changed them since) the exact protections are read from the maps.
fn own_text_writer(
    options: &PatchOptions,
    readable: Vec<Range<u64>>,
    at_load: Option<&LoadSegments>,
) -> MprotectWriter {
    // SAFETY: `readable` is this object's own text and replacement section, mapped readable for
    // its lifetime.
    let writer = unsafe { options.writer().reading_directly(readable) };
    let Some(segments) = at_load else {
        return writer;
    };
    // SAFETY: these are this object's executable segments' pages as the dynamic loader mapped
    // them (private, with the segments' protections), and its constructor runs now: only the
    // loader has mapped them, and this runtime changes and restores them.
    unsafe { writer.loader_mappings(segments.loader_text_mappings()) }
}

/// Patches every site of this program as the options say. If the sites are patched already,
/// returns that report, unless the options name capabilities of their own: then
/// [`ProcessError::AlreadyPatched`] (revert first).
pub fn patch_self_with(options: &PatchOptions) -> Result<Arc<Report>, ProcessError> {
    if let Some(p) = PATCHED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return match options.capabilities {
            None => Ok(p.shared_report()),
            Some(_) => Err(ProcessError::AlreadyPatched),
        };
    }
    patch_now(options, false)
}

/// Patches now (nothing is patched yet); `at_load` from the object's constructor.
fn patch_now(options: &PatchOptions, at_load: bool) -> Result<Arc<Report>, ProcessError> {
    let caps = options.decide()?;
    let mut guard = PATCHED.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_some() {
        return Err(ProcessError::AlreadyPatched);
    }
    let started = Instant::now();
    let s = sections();
    let segments = LoadSegments::containing(s.alt_instr().start);
    let (text, replacements) = (segments.executable(), s.replacements());
    let mut readable = text.clone();
    readable.push(replacements.clone());
    // SAFETY: these are this program's executable segments and its replacement section, mapped
    // readable for the program's lifetime.
    let mem = unsafe { LiveMemory::new(&readable) };
    let layout = Layout {
        text: &text,
        replacements,
    };
    // SAFETY: the layout is this program's text and the table is its own alt_instr section,
    // emitted by the macros.
    let patcher = unsafe { Patcher::new(caps, layout) }.sections(&s);
    let prepared = patcher.plan(&mem).map_err(ProcessError::Plan)?;
    let mut writer = own_text_writer(options, readable, at_load.then_some(&segments));
    let mut threads = options.rendezvous();
    // SAFETY: planned just now from the text, holding the lock that this module's patching
    // and reverting of the object's alternatives sites take (a paravirt install writes other
    // sites); no one else writes them: the readers' contracts above (`LiveMemory`,
    // `reading_directly`: written by no one but this writer) and `Patcher::new`'s say so.
    let applied = unsafe { prepared.apply_as_planned(&mut writer, &mut threads) };
    note_stop(&threads);
    let mut patched = applied.map_err(|e| ProcessError::Patch(alloc::boxed::Box::new(e)))?;
    patched.set_elapsed_ns(Some(started.elapsed().as_nanos() as u64));
    let report = patched.shared_report();
    *guard = Some(patched);
    Ok(report)
}

/// Restores every site patched by [`patch_self`] to its original bytes.
pub fn revert_self() -> Result<(), ProcessError> {
    revert_self_with(&PatchOptions::new())
}

/// Restores every site patched by [`patch_self`] to its original bytes; the options' choice of
/// capabilities does not matter.
pub fn revert_self_with(options: &PatchOptions) -> Result<(), ProcessError> {
    let mut guard = PATCHED.lock().unwrap_or_else(|p| p.into_inner());
    let patched = guard.take().ok_or(ProcessError::NotPatched)?;
    let (mut readable, replacements) = process_text();
    readable.push(replacements);
    let mut writer = own_text_writer(options, readable, None);
    let mut threads = options.rendezvous();
    let reverted = patched.revert(&mut writer, &mut threads);
    note_stop(&threads);
    match reverted {
        Ok(_) => Ok(()),
        Err((patched, e)) => {
            *guard = Some(patched);
            Err(ProcessError::Revert(e))
        }
    }
}

/// Patches every call site of one operations table of this process for `backend` and stores
/// the backend's functions in the table's slots: what the generated `install` calls.
///
/// # Safety
///
/// `table` must describe a live operations table of this process, as the generated
/// `descriptor()` does, and every [`crate::paravirt::OpChoice::Function`] must be an
/// `extern "C"` function with the operation's signature that is sound to call wherever the
/// operation is called.
pub unsafe fn install_paravirt(
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
    options: &PatchOptions,
) -> Result<Patched, ProcessError> {
    let started = Instant::now();
    let mut text = executable_segments_containing(table.table);
    if text.is_empty() {
        text = executable_segments_containing(table.entries.start);
    }
    let (_, replacements) = object_text(table.entries.start);
    let mut readable = text.clone();
    readable.push(replacements.clone());
    // SAFETY: the object's executable segments and replacement section are mapped readable.
    let mem = unsafe { LiveMemory::new(&readable) };
    let layout = Layout {
        text: &text,
        replacements,
    };
    // SAFETY: the layout is this object's text; the caller's contract covers the table and the
    // backend. No alternatives table is given: those are patch_self's.
    let patcher =
        unsafe { Patcher::new(CapabilitySet::default(), layout).paravirt(table.clone(), *backend) };
    let prepared = patcher.plan(&mem).map_err(ProcessError::Plan)?;
    // SAFETY: as for `mem`.
    let mut writer = unsafe { options.writer().reading_directly(readable.clone()) };
    let mut threads = options.rendezvous();
    let applied = prepared.apply(&mut writer, &mut threads);
    note_stop(&threads);
    let mut patched = applied.map_err(|e| ProcessError::Patch(alloc::boxed::Box::new(e)))?;
    patched.set_elapsed_ns(Some(started.elapsed().as_nanos() as u64));
    Ok(patched)
}

/// Restores a table patched by [`install_paravirt`] (with the same options).
#[allow(clippy::result_large_err)]
pub fn uninstall_paravirt(
    patched: Patched,
    options: &PatchOptions,
) -> Result<(), (Patched, ProcessError)> {
    let mut writer = options.writer();
    let mut threads = options.rendezvous();
    let reverted = patched.revert(&mut writer, &mut threads);
    note_stop(&threads);
    reverted
        .map(|_| ())
        .map_err(|(p, e)| (p, ProcessError::Revert(e)))
}
