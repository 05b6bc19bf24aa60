//! Scale benchmark: `alt-tablegen scan` against `objdump -r -j .text` on a large synthetic
//! relocatable ELF (not a timed test; it prints figures).
//!
//! ```text
//! cargo bench -p alt-tablegen --bench scan_vs_objdump                # 200 MB, 500k relocations
//! ALT_BENCH_MB=8 cargo bench -p alt-tablegen --bench scan_vs_objdump # quick
//! ```
//!
//! Environment: `ALT_BENCH_MB` (size of `.text`, default 200), `ALT_BENCH_RELOCS` (relocations
//! in `.text`, default 500000), `ALT_BENCH_PV_PERMILLE` (share of them that are calls through
//! `pv_ops`, per mille, default 10), `ALT_BENCH_FUNC` (average function size in bytes, default
//! 400, as in a kernel).
//!
//! The file looks like compiled code: functions (`STT_FUNC` symbols with sizes) of multi-byte
//! NOPs, direct calls to other functions (`e8`, `R_X86_64_PLT32`), RIP-relative loads of a data
//! symbol (`R_X86_64_PC32`), and calls through `pv_ops` (`ff 15`, `R_X86_64_PC32`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::BufWriter;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use object::write::{Object, Relocation, Symbol, SymbolSection};
use object::{
    elf, Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags,
    SymbolKind, SymbolScope,
};

/// Counts heap bytes in use and their peak, so the scan's own memory can be told apart from
/// the file pages its mapping makes resident.
struct CountingAlloc;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
// statistics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The recommended multi-byte NOPs, 1 to 8 bytes.
const NOPS: [&[u8]; 8] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

struct Generated {
    path: PathBuf,
    relocs: u64,
    pv_sites: u64,
    functions: u64,
}

fn generate(path: &Path, text_bytes: u64, relocs: u64, pv_permille: u64, func: u64) -> Generated {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    let data = obj.add_section(Vec::new(), b".data".to_vec(), SectionKind::Data);
    obj.append_section_data(data, &[0; 64], 8);
    let gdata = obj.add_symbol(Symbol {
        name: b"gdata".to_vec(),
        value: 0,
        size: 64,
        kind: SymbolKind::Data,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(data),
        flags: SymbolFlags::None,
    });
    let pv_ops = obj.add_symbol(Symbol {
        name: b"pv_ops".to_vec(),
        value: 0,
        size: 0,
        kind: SymbolKind::Unknown,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Undefined,
        flags: SymbolFlags::None,
    });

    let mut code = Vec::with_capacity(text_bytes as usize + 4096);
    let mut relocations = Vec::with_capacity(relocs as usize);
    let mut funcs: Vec<(u64, u64)> = Vec::new();
    let gap = (text_bytes / relocs.max(1)).max(8);
    let mut next_reloc = rng.below(2 * gap);
    let mut pv_sites = 0;
    while (code.len() as u64) < text_bytes {
        let start = code.len() as u64;
        let size = func / 2 + rng.below(func);
        while (code.len() as u64) < start + size {
            let at = code.len() as u64;
            if at >= next_reloc && (relocations.len() as u64) < relocs {
                next_reloc = at + 1 + rng.below(2 * gap);
                let kind = rng.below(1000);
                if kind < pv_permille {
                    let op = rng.below(32) as i64;
                    code.extend_from_slice(&[0xff, 0x15, 0, 0, 0, 0]);
                    relocations.push((at + 2, None, 8 * op - 4, elf::R_X86_64_PC32));
                    pv_sites += 1;
                } else if kind.is_multiple_of(2) {
                    code.extend_from_slice(&[0xe8, 0, 0, 0, 0]);
                    let callee = rng.below(funcs.len() as u64 + 1) as usize;
                    relocations.push((at + 1, Some(callee), -4, elf::R_X86_64_PLT32));
                } else {
                    code.extend_from_slice(&[0x48, 0x8b, 0x05, 0, 0, 0, 0]);
                    relocations.push((at + 3, None, -4 + 8, u32::MAX));
                }
            } else {
                code.extend_from_slice(NOPS[rng.below(8) as usize]);
            }
        }
        code.push(0xc3);
        funcs.push((start, code.len() as u64 - start));
    }
    let text_len = code.len() as u64;
    obj.set_section_data(text, code, 16);
    let mut func_syms = Vec::with_capacity(funcs.len());
    for (i, (start, size)) in funcs.iter().enumerate() {
        func_syms.push(obj.add_symbol(Symbol {
            name: format!("f_{i}").into_bytes(),
            value: *start,
            size: *size,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        }));
    }
    let n = relocations.len() as u64;
    for (offset, callee, addend, r_type) in relocations {
        let (symbol, r_type) = match (callee, r_type) {
            (Some(c), t) => (func_syms[c.min(func_syms.len() - 1)], t),
            (None, u32::MAX) => (gdata, elf::R_X86_64_PC32),
            (None, t) => (pv_ops, t),
        };
        obj.add_relocation(
            text,
            Relocation {
                offset,
                symbol,
                addend,
                flags: RelocationFlags::Elf { r_type },
            },
        )
        .expect("relocation");
    }
    assert!(text_len >= text_bytes);
    let f = std::fs::File::create(path).expect("create benchmark file");
    obj.write_stream(BufWriter::new(f))
        .expect("write benchmark file");
    Generated {
        path: path.to_path_buf(),
        relocs: n,
        pv_sites,
        functions: funcs.len() as u64,
    }
}

/// Runs a command with stdout to /dev/null; returns (seconds, peak RSS in KiB, success).
// The child is reaped by wait4, which std does not know about.
#[allow(clippy::zombie_processes)]
fn run_child(cmd: &mut Command) -> (f64, i64, bool) {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4");
    let ok = std::process::ExitStatus::from_raw(status).success();
    (secs, usage.ru_maxrss, ok)
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test,
    // on a small file unless the environment says otherwise.
    let full = std::env::args().any(|a| a == "--bench");
    let mb = env_u64("ALT_BENCH_MB", if full { 200 } else { 4 });
    let relocs = env_u64("ALT_BENCH_RELOCS", if full { 500_000 } else { 10_000 });
    let pv_permille = env_u64("ALT_BENCH_PV_PERMILLE", 10);
    let func = env_u64("ALT_BENCH_FUNC", 400).max(16);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("alt-bench-{mb}mb-{relocs}-{pv_permille}-{func}.o"));

    // Generate in a child process: a child's peak RSS (wait4) starts from its parent's peak,
    // so this process stays small until the children have been measured.
    if let Ok(p) = std::env::var("ALT_BENCH_GENERATE_TO") {
        let t = Instant::now();
        let g = generate(Path::new(&p), mb << 20, relocs, pv_permille, func);
        let size = std::fs::metadata(&g.path).map(|m| m.len()).unwrap_or(0);
        println!(
            "generated {} in {:.2}s: {:.1} MB file, {} functions, {} relocations in .text, {} through pv_ops",
            g.path.display(),
            t.elapsed().as_secs_f64(),
            size as f64 / 1e6,
            g.functions,
            g.relocs,
            g.pv_sites
        );
        println!("pv_sites={}", g.pv_sites);
        return;
    }
    let me = std::env::current_exe().expect("current exe");
    let out = Command::new(me)
        .env("ALT_BENCH_GENERATE_TO", &path)
        .env("ALT_BENCH_MB", mb.to_string())
        .env("ALT_BENCH_RELOCS", relocs.to_string())
        .env("ALT_BENCH_PV_PERMILLE", pv_permille.to_string())
        .env("ALT_BENCH_FUNC", func.to_string())
        .output()
        .expect("run the generator");
    assert!(out.status.success(), "generator failed");
    let text = String::from_utf8_lossy(&out.stdout);
    print!(
        "{}",
        text.lines().next().unwrap_or_default().to_owned() + "\n"
    );
    let pv_sites: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pv_sites="))
        .and_then(|v| v.parse().ok())
        .expect("generator output");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    // Warm the page cache so both tools read from memory.
    let _ = run_child(Command::new("cat").arg(&path));

    let (objdump_s, objdump_rss, ok) = run_child(
        Command::new("objdump")
            .args(["-r", "-j", ".text"])
            .arg(&path),
    );
    assert!(ok, "objdump failed");

    let bin = env!("CARGO_BIN_EXE_alt-tablegen");
    let (cli_s, cli_rss, ok) = run_child(
        Command::new(bin)
            .args(["scan", "--symbol", "pv_ops", "--json"])
            .arg(&path),
    );
    assert!(ok, "alt-tablegen scan failed");

    PEAK.store(IN_USE.load(Ordering::Relaxed), Ordering::Relaxed);
    let heap_before = IN_USE.load(Ordering::Relaxed);
    let t = Instant::now();
    let report = alt_tablegen::scan::scan_files(&[&path], &["pv_ops"]).expect("scan");
    let inproc_s = t.elapsed().as_secs_f64();
    let heap_peak = PEAK.load(Ordering::Relaxed) - heap_before;
    assert_eq!(report.summary.sites as u64, pv_sites);
    assert_eq!(report.summary.patchable as u64, pv_sites);

    println!(
        "objdump -r -j .text     : {objdump_s:8.3} s, peak RSS {:7.1} MB",
        objdump_rss as f64 / 1024.0
    );
    println!("alt-tablegen scan (CLI) : {cli_s:8.3} s, peak RSS {:7.1} MB (file pages of the mapping included)", cli_rss as f64 / 1024.0);
    println!(
        "alt-tablegen scan (lib) : {inproc_s:8.3} s, peak heap {:7.1} MB (VmHWM {} with the mapping's file pages)",
        heap_peak as f64 / 1e6,
        proc_status("VmHWM:")
    );
    println!(
        "ratio scan/objdump      : {:.3} (CLI), {:.3} (lib); peak heap / file size {:.3}; peak RSS / file size {:.3}",
        cli_s / objdump_s,
        inproc_s / objdump_s,
        heap_peak as f64 / size.max(1) as f64,
        (cli_rss as f64 * 1024.0) / size.max(1) as f64
    );
    println!(
        "(peak RSS counts file pages the kernel maps around each touched page of the mapping \
         (fault-around, 64 KiB); they are shared page cache, not copies)"
    );
    let _ = std::fs::remove_file(&path);
}
