//! Patching at load: every object (the executable, each shared library) that links the runtime
//! patches its own sites from an ELF constructor, before `main` runs or before `dlopen` returns.
//!
//! - `ALT_PATCH=off` (or `0`) keeps every default; `ALT_PATCH=report` also prints the report to
//!   standard error, naming the object (like Linux's `debug-alternative`); unset, `on` or `1`
//!   patch silently. Any other value keeps the defaults and is kept as the reason.
//! - An application (not a library: Cargo features unify, so a library could not be overruled)
//!   opts out with [`no_patch_at_load!`](crate::no_patch_at_load), which defines a symbol the
//!   constructor looks for; it then patches where it wants with [`super::patch_self`].
//! - A failure never aborts the process: the sites keep their defaults, which are always
//!   correct, and [`report`] says why.
//!
//! An object with no sites does nothing at all (it does not probe the CPUs). Other threads may
//! already run (a `dlopen` from a threaded host, a thread started by an earlier constructor):
//! they are stopped while the sites are written, as for [`super::patch_self`]; when the loading
//! thread is alone, nothing is signalled.

use std::sync::OnceLock;

use super::{patch_now, PatchOptions, ProcessError};
use crate::report::Report;

/// What load-time patching did in this object.
#[derive(Debug)]
pub enum LoadOutcome {
    /// The sites were patched; the report says how.
    Patched(alloc::sync::Arc<Report>),
    /// Not attempted, and why (`ALT_PATCH=off`, the application opted out, no sites).
    Skipped(&'static str),
    /// It failed; every site keeps its default.
    Failed(ProcessError),
}

impl LoadOutcome {
    /// The report, if the sites were patched.
    pub fn report(&self) -> Option<&Report> {
        match self {
            LoadOutcome::Patched(r) => Some(r),
            _ => None,
        }
    }
}

impl core::fmt::Display for LoadOutcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadOutcome::Patched(r) => write!(f, "{r}"),
            LoadOutcome::Skipped(why) => write!(f, "not patched at load: {why}"),
            LoadOutcome::Failed(e) => {
                write!(f, "not patched at load, every site keeps its default: {e}")
            }
        }
    }
}

/// Opts this application out of patching at load: the sites of the executable keep their
/// defaults until it calls [`crate::process::patch_self`] (or one of its variants) itself. Write it
/// once, at the top level of the binary crate (not in a library: a library cannot know what the
/// application wants, and shared libraries patch their own sites whatever the application
/// says; `ALT_PATCH=off` keeps every object's defaults).
///
/// ```no_run
/// alt_runtime::no_patch_at_load!(); // alt::no_patch_at_load!() through the facade
///
/// fn main() {
///     // ... start-up, then patch where this program wants:
///     alt_runtime::process::patch_self().expect("patching");
/// }
/// ```
#[macro_export]
macro_rules! no_patch_at_load {
    () => {
        /// Read by `alt`'s load-time constructor, which then leaves this object's sites alone.
        #[no_mangle]
        #[used]
        static alt_patch_at_load_disabled: u8 = 1;
    };
}

static OUTCOME: OnceLock<LoadOutcome> = OnceLock::new();

/// What load-time patching did in the object this function is linked into: the report, why it
/// was skipped, or the error that kept the defaults. `None` only while the constructor has not
/// run yet (code running in an earlier constructor).
pub fn report() -> Option<&'static LoadOutcome> {
    OUTCOME.get()
}

/// What `ALT_PATCH` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Off,
    On,
    Report,
}

/// The environment variable that controls load-time patching.
pub const ALT_PATCH: &str = "ALT_PATCH";

pub(crate) fn mode_from(value: Option<&str>) -> Result<Mode, ProcessError> {
    match value {
        None | Some("" | "on" | "1") => Ok(Mode::On),
        Some("off" | "0") => Ok(Mode::Off),
        Some("report") => Ok(Mode::Report),
        Some(other) => Err(ProcessError::Override(std::format!(
            "{ALT_PATCH}={other:?} is not on, off or report"
        ))),
    }
}

/// Whether the application defined the opt-out symbol of [`crate::no_patch_at_load!`].
fn opted_out() -> bool {
    !crate::os::linux::weak_symbol_address!("alt_patch_at_load_disabled").is_null()
}

fn at_load() -> LoadOutcome {
    let mode = match mode_from(std::env::var(ALT_PATCH).ok().as_deref()) {
        Ok(m) => m,
        Err(e) => return LoadOutcome::Failed(e),
    };
    if mode == Mode::Off {
        return LoadOutcome::Skipped("ALT_PATCH=off");
    }
    if opted_out() {
        return LoadOutcome::Skipped("the application opted out (no_patch_at_load!)");
    }
    let s = crate::linker::sections();
    let placeholder = [0u8; crate::table::ALT_ENTRY_SIZE];
    if s.alt_entries().iter().all(|e| e.to_bytes() == placeholder) {
        return LoadOutcome::Skipped("no sites");
    }
    let outcome = match patch_now(&PatchOptions::new(), true) {
        Ok(r) => LoadOutcome::Patched(r),
        Err(e) => LoadOutcome::Failed(e),
    };
    if mode == Mode::Report {
        let object = crate::os::linux::object_name_containing(s.alt_instr().start);
        std::eprintln!("alt: {object}: {outcome}");
    }
    outcome
}

extern "C" fn patch_at_load() {
    // Never unwind out of a constructor, and never abort: a panic keeps the defaults.
    let outcome = std::panic::catch_unwind(at_load).unwrap_or(LoadOutcome::Failed(
        ProcessError::Probe(std::string::String::from("load-time patching panicked")),
    ));
    let _ = OUTCOME.set(outcome);
}

/// The constructor: an `.init_array` entry in every object that links the runtime.
#[used]
#[link_section = ".init_array"]
static PATCH_AT_LOAD: extern "C" fn() = patch_at_load;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_patch_values() {
        assert_eq!(mode_from(None).unwrap(), Mode::On);
        assert_eq!(mode_from(Some("on")).unwrap(), Mode::On);
        assert_eq!(mode_from(Some("1")).unwrap(), Mode::On);
        assert_eq!(mode_from(Some("off")).unwrap(), Mode::Off);
        assert_eq!(mode_from(Some("0")).unwrap(), Mode::Off);
        assert_eq!(mode_from(Some("report")).unwrap(), Mode::Report);
        let e = mode_from(Some("yes")).unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "ALT_PATCH=\"yes\" is not on, off or report"
        );
    }

    #[test]
    fn the_constructor_ran_before_the_tests() {
        // The runtime's own unit tests have no sites: skipped without probing.
        let outcome = report().expect("the constructor ran");
        assert!(matches!(outcome, LoadOutcome::Skipped(_)), "{outcome}");
    }
}
