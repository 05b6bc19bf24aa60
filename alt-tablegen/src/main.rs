//! `alt-tablegen`: find paravirt call sites from relocations, emit their table, and inspect,
//! verify and plan the tables of a built binary. See the crate documentation for the commands
//! and the JSON schemas.

use std::path::PathBuf;
use std::process::ExitCode;

use alt_tablegen::inspect::{self, CpuSpec, Tables};
use alt_tablegen::{Error, ErrorKind, Input, Location, Machine};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "alt-tablegen",
    version,
    about = "Build-time table generator and inspector for alt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every reference to the given symbols in executable sections.
    Scan {
        /// A symbol to look for (an operations table or a function); repeatable.
        #[arg(long = "symbol", required = true)]
        symbols: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Relocatable objects, archives, or final binaries linked with --emit-relocs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write the paravirt table of the calls through TABLE-symbol as a relocatable object.
    Emit {
        /// The operations table symbol the sites call through (e.g. `pv_ops`).
        #[arg(long)]
        symbol: String,
        /// The table's name: the section is `alt_pv_<NAME>`.
        #[arg(long)]
        table: String,
        /// Clobber set of every entry: `c_abi` (the default), a `|`/`,`-separated list of
        /// register names (`rax,rcx,...,vector`), or a number.
        #[arg(long)]
        clobbers: Option<String>,
        /// The object to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Relocatable objects and archives (the ones linked with the table).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the alternative and paravirt tables of a linked binary.
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// A linked executable, shared object or kernel image.
        file: PathBuf,
    },
    /// Check every table entry of a linked binary, and that every variant of every site changes
    /// only the registers, flags, memory and stack its site declares; exit 1 if any is wrong.
    Verify {
        /// Print JSON (`{"problems":[...],"effects":{"sites_checked":N,...,"problems":[...]}}`).
        #[arg(long)]
        json: bool,
        /// A linked executable, shared object or kernel image.
        file: PathBuf,
    },
    /// Print which entry each alternative site would use on a CPU or a recorded system.
    Plan {
        /// Capabilities the CPU has, by name: `popcnt,avx2,erratum_amd_div0`.
        #[arg(long, value_name = "LIST", required_unless_present = "cpu")]
        cpu_features: Option<String>,
        /// The CPU or system: a QEMU model (`Haswell`, `cortex-a53`), `CORE:rXpY`
        /// (`cortex-a72:r0p2`), a MIDR (`0x410fd034[/REVIDR]`), a comma-separated list of
        /// AArch64 CPUs, a sysfs tree (directory), or a CPUID dump file (this tool's text form
        /// or AIDA64 / InstLatx64, every logical CPU).
        #[arg(long, value_name = "SYSTEM", conflicts_with = "cpu_features")]
        cpu: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// A linked executable, shared object or kernel image (x86-64 or AArch64).
        file: PathBuf,
    },
    /// Write a copy of a linked image with its alternatives applied for a CPU or system, as
    /// the runtime would patch it (the runtime's planner and validator).
    Apply {
        /// Capabilities the CPU has, by name.
        #[arg(long, value_name = "LIST", required_unless_present = "cpu")]
        cpu_features: Option<String>,
        /// The CPU or system, as for `plan`.
        #[arg(long, value_name = "SYSTEM", conflicts_with = "cpu_features")]
        cpu: Option<String>,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
        /// A linked executable, shared object or kernel image (x86-64 or AArch64).
        input: PathBuf,
        /// Where to write the patched copy.
        output: PathBuf,
    },
}

/// The `--cpu-features` / `--cpu` spec, for an image of instruction set `machine`.
fn cpu_spec(
    cpu_features: Option<String>,
    cpu: Option<String>,
    machine: Option<Machine>,
) -> Result<CpuSpec, Error> {
    match (cpu_features, cpu) {
        (Some(list), _) => CpuSpec::from_names(&list),
        (None, Some(model)) => CpuSpec::for_image(&model, machine),
        (None, None) => CpuSpec::from_names(""),
    }
    .map_err(|e| Error::new(Location::default(), ErrorKind::Other(e)))
}

/// The instruction set of the image at `file`, if it is one ELF image plan and apply read.
fn image_machine(file: &std::path::Path) -> Option<Machine> {
    let input = Input::open(file).ok()?;
    let objects = input
        .objects_for(&[Machine::X86_64, Machine::Aarch64])
        .ok()?;
    objects.first().map(|o| o.machine)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("alt-tablegen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn out(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn run(cli: Cli) -> Result<ExitCode, alt_tablegen::Error> {
    match cli.command {
        Command::Scan {
            symbols,
            json,
            files,
        } => {
            let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
            let report = alt_tablegen::scan::scan_files(&files, &names)?;
            if json {
                out(&format!("{}\n", report.to_json()));
            } else {
                out(&alt_tablegen::scan::format_human(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            symbol,
            table,
            clobbers,
            output,
            files,
        } => {
            let clobbers = match clobbers {
                None => None,
                Some(s) => Some(alt_tablegen::emit::parse_clobbers(&s).map_err(|e| {
                    alt_tablegen::Error::new(
                        alt_tablegen::Location::default(),
                        alt_tablegen::ErrorKind::Other(e),
                    )
                })?),
            };
            let opts = alt_tablegen::emit::EmitOptions { table, clobbers };
            let emitted = alt_tablegen::emit::emit_files(&files, &symbol, &opts)?;
            std::fs::write(&output, &emitted.object).map_err(|e| {
                alt_tablegen::Error::new(
                    alt_tablegen::Location::file(&output),
                    alt_tablegen::ErrorKind::Io(e),
                )
            })?;
            for s in &emitted.skipped {
                eprintln!(
                    "alt-tablegen: note: {} {}+{:#x}: {} reference to {}+{} is not a call through the table; no entry",
                    s.file, s.section, s.offset, s.form.name(), s.symbol, s.addend
                );
            }
            eprintln!(
                "alt-tablegen: wrote {} entries to {}",
                emitted.entries.len(),
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { json, file } => {
            let input = Input::open(&file)?;
            for obj in input.objects()? {
                let tables = Tables::read(&obj)?;
                if json {
                    out(&format!("{}\n", tables.to_json()));
                } else {
                    out(&tables.format_human());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { json, file } => {
            let input = Input::open(&file)?;
            let mut failed = false;
            for obj in input.objects()? {
                let tables = Tables::read(&obj)?;
                let problems = inspect::verify(&obj, &tables);
                let effects = alt_tablegen::effects::check(&obj, &tables);
                failed |= !problems.is_empty() || !effects.problems.is_empty();
                if json {
                    let v = serde_json::json!({ "problems": problems, "effects": effects });
                    out(&format!("{v:#}\n"));
                } else if problems.is_empty() && effects.problems.is_empty() {
                    out(&format!(
                        "{}: ok: {} alternative and {} paravirt entries verified; every variant of {} site(s) keeps what its site declares{}\n",
                        file.display(),
                        tables.alt.len(),
                        tables.pv.len(),
                        effects.sites_checked,
                        if effects.sites_without_record > 0 {
                            format!(
                                " ({} site(s) without an effects record not checked)",
                                effects.sites_without_record
                            )
                        } else {
                            String::new()
                        }
                    ));
                } else {
                    for p in &problems {
                        eprintln!("alt-tablegen: {}: {p}", file.display());
                    }
                    for p in &effects.problems {
                        eprintln!("alt-tablegen: {}: {p}", file.display());
                    }
                    eprintln!(
                        "alt-tablegen: {}: {} problem(s) in the tables, {} broken site promise(s)",
                        file.display(),
                        problems.len(),
                        effects.problems.len()
                    );
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Plan {
            cpu_features,
            cpu,
            json,
            file,
        } => {
            let spec = cpu_spec(cpu_features, cpu, image_machine(&file))?;
            let input = Input::open(&file)?;
            for obj in input.objects_for(&[Machine::X86_64, Machine::Aarch64])? {
                spec.check_machine(obj.machine, &file)
                    .map_err(|e| Error::new(obj.location(), ErrorKind::Other(e)))?;
                let tables = Tables::read(&obj)?;
                let decisions = inspect::plan(&obj, &tables, &spec).map_err(|e| {
                    Error::new(
                        obj.location(),
                        ErrorKind::Other(format!("the runtime would refuse this table: {e}")),
                    )
                })?;
                if json {
                    let v = serde_json::json!({ "sites": decisions });
                    out(&format!("{v:#}\n"));
                } else {
                    for d in &decisions {
                        out(&format!(
                            "site {:#x} len {}: {}\n",
                            d.site, d.site_len, d.outcome
                        ));
                    }
                    let pv = tables.pv.len();
                    if pv > 0 {
                        out(&format!(
                            "{pv} paravirt sites: patched by the backend chosen at start-up\n"
                        ));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            cpu_features,
            cpu,
            json,
            input,
            output,
        } => {
            let spec = cpu_spec(cpu_features, cpu, image_machine(&input))?;
            let applied = alt_tablegen::apply::apply_file(&input, &output, &spec)?;
            if json {
                out(&format!("{}\n", applied.to_json()));
            } else {
                for s in &applied.sites {
                    let what = match (s.choice, s.entry, &s.condition) {
                        ("call", Some(e), Some(c)) => {
                            format!("call {:#x} (alt_instr[{e}], {c})", s.target.unwrap_or(0))
                        }
                        (_, Some(e), Some(c)) => format!("replacement (alt_instr[{e}], {c})"),
                        _ => "default code".to_string(),
                    };
                    out(&format!(
                        "site {:#x} len {}: {what}: {} -> {}\n",
                        s.site, s.len, s.before, s.after
                    ));
                }
                eprintln!(
                    "alt-tablegen: wrote {} ({} of {} sites changed)",
                    output.display(),
                    applied.changed().count(),
                    applied.sites.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
