//! The build-script flow: compile C or assembly with `cc`, scan the objects for calls through
//! an operations table, emit the table object into `OUT_DIR`, and tell cargo how to link both.
//!
//! ```no_run
//! // In build.rs's main():
//! alt_tablegen::build::Build::new("pv_ops", "pv")
//!     .file("src/ops.c")
//!     .compile("pvops")
//!     .unwrap();
//! ```
//!
//! What is linked, by [`LinkMode`]:
//!
//! - [`LinkMode::Objects`] (the default): every compiled object and the table object are passed
//!   to the linker as `cargo:rustc-link-arg=<object>`. Objects on the command line are always
//!   linked, so nothing can drop the table. Cargo applies link arguments to the package's own
//!   binaries, tests, examples and benchmarks only, which is what a program needs.
//! - [`LinkMode::BinObjects`]: the same with `cargo:rustc-link-arg-bins=`, so only the package's
//!   binaries (and their unit tests) link them. For a program whose `main.rs` defines the table:
//!   its integration tests, which do not, would otherwise fail to link (undefined table symbol).
//! - [`LinkMode::WholeArchive`]: the objects and the table go into `lib<name>.a`, linked with
//!   `cargo:rustc-link-lib=static:+whole-archive=<name>`. This reaches crates that depend on a
//!   library package, and `+whole-archive` keeps the table member although nothing refers to it.
//!
//! Sources are compiled without `-fPIC` (position-independent *executable* code, the toolchain
//! default), so a call through an external table is `call *pv_ops+8(%rip)`, a patchable site.
//! With `-fPIC` every such call loads the table's address from the GOT first and nothing can
//! be patched; see the crate documentation.

use std::path::{Path, PathBuf};
use std::process::Command;

use alt_runtime::Clobbers;

use crate::emit::{emit_files, section_name, EmitOptions, Emitted};
use crate::read::{Error, ErrorKind, Location};

/// How the compiled objects and the table reach the linker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkMode {
    /// `cargo:rustc-link-arg=` for every object and the table.
    #[default]
    Objects,
    /// `cargo:rustc-link-arg-bins=` for every object and the table: binaries only.
    BinObjects,
    /// One archive holding the objects and the table, linked with `+whole-archive`.
    WholeArchive,
}

/// Compiles sources with `cc` and generates their paravirt table. See the
/// [module documentation](self).
#[derive(Clone, Debug)]
pub struct Build {
    cc: cc::Build,
    symbol: String,
    table: String,
    clobbers: Option<Clobbers>,
    out_dir: Option<PathBuf>,
    files: Vec<PathBuf>,
    cargo_metadata: bool,
    link_mode: LinkMode,
}

/// What [`Build::compile`] produced.
#[derive(Clone, Debug)]
pub struct Output {
    /// The compiled objects.
    pub objects: Vec<PathBuf>,
    /// The table object, `OUT_DIR/alt_pv_<table>.o`.
    pub table_object: PathBuf,
    /// The archive, for [`LinkMode::WholeArchive`].
    pub archive: Option<PathBuf>,
    /// The sites with entries, and the references without.
    pub emitted: Emitted,
    /// The `cargo:` lines (printed by [`Build::compile`] unless
    /// [`Build::cargo_metadata`]`(false)`).
    pub cargo_lines: Vec<String>,
}

fn other(what: String) -> Error {
    Error::new(Location::default(), ErrorKind::Other(what))
}

impl Build {
    /// A build whose C calls through the operations table `symbol` (such as `pv_ops`), whose
    /// entries go to the section `alt_pv_<table>`.
    pub fn new(symbol: &str, table: &str) -> Self {
        let mut cc = cc::Build::new();
        cc.pic(false);
        Self {
            cc,
            symbol: symbol.to_string(),
            table: table.to_string(),
            clobbers: None,
            out_dir: None,
            files: Vec::new(),
            cargo_metadata: true,
            link_mode: LinkMode::default(),
        }
    }

    /// Adds a C or assembly source.
    pub fn file(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.files.push(path.as_ref().to_path_buf());
        self.cc.file(path.as_ref());
        self
    }

    /// The underlying [`cc::Build`], for flags, defines and include paths.
    pub fn cc(&mut self) -> &mut cc::Build {
        &mut self.cc
    }

    /// The clobber set of every entry (default [`Clobbers::C_ABI`]).
    pub fn clobbers(&mut self, clobbers: Clobbers) -> &mut Self {
        self.clobbers = Some(clobbers);
        self
    }

    /// Where objects and the table go (default: `OUT_DIR`).
    pub fn out_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self.cc.out_dir(dir.as_ref());
        self
    }

    /// Whether to print the `cargo:` lines (default true; also passed to `cc`).
    pub fn cargo_metadata(&mut self, yes: bool) -> &mut Self {
        self.cargo_metadata = yes;
        self.cc.cargo_metadata(yes);
        self
    }

    /// How objects and table are linked (default [`LinkMode::Objects`]).
    pub fn link_mode(&mut self, mode: LinkMode) -> &mut Self {
        self.link_mode = mode;
        self
    }

    /// Compiles, scans, emits the table and (unless disabled) prints the `cargo:` lines.
    /// `name` names the archive in [`LinkMode::WholeArchive`].
    pub fn compile(&mut self, name: &str) -> Result<Output, Error> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| {
                other("OUT_DIR is not set: call from build.rs or set out_dir".into())
            })?),
        };
        let objects = self
            .cc
            .try_compile_intermediates()
            .map_err(|e| other(format!("compiling {name}: {e}")))?;
        let emitted = emit_files(
            &objects,
            &self.symbol,
            &EmitOptions {
                table: self.table.clone(),
                clobbers: self.clobbers,
            },
        )?;
        let table_object = out_dir.join(format!("{}.o", section_name(&self.table)));
        std::fs::write(&table_object, &emitted.object)
            .map_err(|e| Error::new(Location::file(&table_object), ErrorKind::Io(e)))?;

        let mut lines: Vec<String> = self
            .files
            .iter()
            .map(|f| format!("cargo:rerun-if-changed={}", f.display()))
            .collect();
        let mut archive = None;
        match self.link_mode {
            LinkMode::Objects | LinkMode::BinObjects => {
                let key = match self.link_mode {
                    LinkMode::BinObjects => "rustc-link-arg-bins",
                    _ => "rustc-link-arg",
                };
                for o in objects.iter().chain(Some(&table_object)) {
                    lines.push(format!("cargo:{key}={}", o.display()));
                }
            }
            LinkMode::WholeArchive => {
                let lib = out_dir.join(format!("lib{name}.a"));
                let _ = std::fs::remove_file(&lib);
                let mut ar: Command = self
                    .cc
                    .try_get_archiver()
                    .map_err(|e| other(format!("finding the archiver: {e}")))?;
                ar.arg("crs").arg(&lib).args(&objects).arg(&table_object);
                let status = ar
                    .status()
                    .map_err(|e| other(format!("running {ar:?}: {e}")))?;
                if !status.success() {
                    return Err(other(format!("{ar:?} failed: {status}")));
                }
                lines.push(format!(
                    "cargo:rustc-link-search=native={}",
                    out_dir.display()
                ));
                lines.push(format!("cargo:rustc-link-lib=static:+whole-archive={name}"));
                archive = Some(lib);
            }
        }
        if self.cargo_metadata {
            for l in &lines {
                println!("{l}");
            }
        }
        Ok(Output {
            objects,
            table_object,
            archive,
            emitted,
            cargo_lines: lines,
        })
    }
}
