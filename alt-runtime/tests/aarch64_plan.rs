//! AArch64 alternatives planned on the host: the same planner as x86-64 with the A64 rules
//! (`isa::Aarch64`): 4-byte instructions, PC-relative forms re-targeted when a replacement moves
//! to its site, `NOP` words as padding, `BL` for direct calls, misalignment refused. Expected
//! words are computed from the manual's field layouts and cross-checked with
//! `aarch64::reloc::branch_target`.

use std::cell::RefCell;

use alt_runtime::aarch64::reloc::{branch_target, RelocErrorKind};
use alt_runtime::aarch64::A64_NOP;
use alt_runtime::driver::Prepared;
use alt_runtime::isa::{Aarch64, CodeError};
use alt_runtime::memory::{Memory, MemoryError};
use alt_runtime::plan::{plan_alternatives_for, Choice, Layout, TableEntry, TableErrorKind};
use alt_runtime::rendezvous::Alone;
use alt_runtime::table::{AltEntry, AltFlags};
use alt_runtime::writer::{Chunks, WriteError, WriteStats, Writer};
use alt_runtime::{Capability, CapabilitySet, Errata, Features};

const TEXT: u64 = 0x10_0000;
const REPL: u64 = 0x20_0000;
const TABLE: u64 = 0x30_0000;

struct Sim(RefCell<std::collections::BTreeMap<u64, u8>>);

impl Sim {
    fn new() -> Self {
        Sim(RefCell::new(Default::default()))
    }
    fn put(&self, addr: u64, words: &[u32]) {
        let mut m = self.0.borrow_mut();
        for (i, w) in words.iter().enumerate() {
            for (j, b) in w.to_le_bytes().iter().enumerate() {
                m.insert(addr + 4 * i as u64 + j as u64, *b);
            }
        }
    }
    fn words(&self, addr: u64, n: usize) -> Vec<u32> {
        let m = self.0.borrow();
        (0..n as u64)
            .map(|i| {
                let b: Vec<u8> = (0..4).map(|j| m[&(addr + 4 * i + j)]).collect();
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect()
    }
}

impl Memory for Sim {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let m = self.0.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr + i as u64;
            *b = *m.get(&a).ok_or(MemoryError { addr: a })?;
        }
        Ok(())
    }
}

impl Writer for Sim {
    unsafe fn write<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<WriteStats, WriteError> {
        let mut m = self.0.borrow_mut();
        for c in chunks.iter() {
            for (i, b) in c.bytes.iter().enumerate() {
                m.insert(c.addr + i as u64, *b);
            }
        }
        Ok(WriteStats::default())
    }
}

/// `BL` at `pc` to `target` (imm26, word offset).
fn bl(pc: u64, target: u64) -> u32 {
    0x9400_0000 | ((((target as i64 - pc as i64) >> 2) as u32) & 0x03ff_ffff)
}

/// `ADRP x0, page-of(target)` at `pc` (immhi:immlo, 4 KiB pages).
fn adrp_x0(pc: u64, target: u64) -> u32 {
    let pages = ((target & !0xfff) as i64 - (pc & !0xfff) as i64) >> 12;
    let imm = (pages as u32) & 0x1f_ffff;
    0x9000_0000 | ((imm & 3) << 29) | ((imm >> 2) << 5)
}

fn entry(i: u64, site: u64, repl: u64, key: u16, site_len: u8, repl_len: u8) -> TableEntry {
    let addr = TABLE + 12 * i;
    TableEntry {
        addr,
        entry: AltEntry {
            site: (site as i64 - addr as i64) as i32,
            replacement: (repl as i64 - (addr + 4) as i64) as i32,
            key,
            site_len,
            replacement_len: repl_len,
        },
    }
}

fn key(cap: Capability, flags: AltFlags) -> u16 {
    AltEntry::make_key(cap.id(), flags)
}

fn caps(e: Errata) -> CapabilitySet {
    CapabilitySet::new(Features::empty(), e)
}

const ERRATUM: Errata = Errata::ARM64_843419;

#[test]
fn replacements_are_retargeted_padded_and_calls_become_bl() {
    let mem = Sim::new();
    let cap = Capability::erratum(ERRATUM).unwrap();
    // Site A (12 bytes): default `BL 0x100800; NOP; NOP`. Its replacement, assembled at REPL:
    // `BL 0x100c00; ADRP x0, 0x345000` (both PC-relative, both outside the block).
    let a = TEXT;
    mem.put(a, &[bl(a, 0x10_0800), A64_NOP, A64_NOP]);
    mem.put(REPL, &[bl(REPL, 0x10_0c00), adrp_x0(REPL + 4, 0x34_5678)]);
    // Site B (4 bytes): default `BL 0x100800`; a direct call to 0x100400 when the erratum is
    // present.
    let b = TEXT + 0x100;
    mem.put(b, &[bl(b, 0x10_0800)]);
    // Targets exist in the text.
    mem.put(0x10_0400, &[A64_NOP]);
    mem.put(0x10_0800, &[A64_NOP]);

    let entries = [
        entry(0, a, REPL, key(cap, AltFlags::empty()), 12, 8),
        entry(1, b, 0x10_0400, key(cap, AltFlags::DIRECT_CALL), 4, 0),
    ];
    let text = TEXT..TEXT + 0x1000;
    let layout = Layout {
        text: std::slice::from_ref(&text),
        replacements: REPL..REPL + 0x100,
    };

    // Erratum absent: both sites keep their default, byte for byte.
    let plan = plan_alternatives_for::<Aarch64, _>(&entries, &layout, &caps(Errata::empty()), &mem)
        .unwrap();
    assert!(plan.sites.iter().all(|s| s.after == s.before));
    assert!(plan.sites.iter().all(|s| s.choice == Choice::Default));

    // Present: site A gets the relocated block and a NOP; site B a BL to the target.
    let plan =
        plan_alternatives_for::<Aarch64, _>(&entries, &layout, &caps(ERRATUM), &mem).unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 0 });
    assert_eq!(
        plan.sites.at(1).choice,
        Choice::DirectCall {
            entry: 1,
            target: 0x10_0400
        }
    );
    let mut sim = mem;
    // SAFETY: the simulated memory is no one's code; nothing else runs it.
    let (prepared, mut alone) =
        unsafe { (Prepared::<Aarch64>::from_alternatives(plan), Alone::new()) };
    let patched = prepared.apply(&mut sim, &mut alone).unwrap();
    let got = sim.words(a, 3);
    assert_eq!(got, [bl(a, 0x10_0c00), adrp_x0(a + 4, 0x34_5678), A64_NOP]);
    assert_eq!(branch_target(got[0], a), Some(0x10_0c00));
    assert_eq!(branch_target(got[1], a + 4), Some(0x34_5000));
    let call = sim.words(b, 1)[0];
    assert_eq!(call, 0x9400_0000 | (0x300 >> 2));
    assert_eq!(branch_target(call, b), Some(0x10_0400));

    // Revert restores the defaults.
    patched
        .revert(&mut sim, &mut alone)
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(sim.words(a, 3), [bl(a, 0x10_0800), A64_NOP, A64_NOP]);
    assert_eq!(sim.words(b, 1), [bl(b, 0x10_0800)]);
}

#[test]
fn a_site_like_the_one_before_but_misaligned_is_refused_as_on_its_own() {
    // Two sites of one NOP each, the same entry for both (a replacement that moves
    // unchanged), the second at a misaligned address: in table order as the linker leaves
    // it, and alone. Planning the second from the first must not skip its alignment check.
    let cap = Capability::erratum(ERRATUM).unwrap();
    let text = TEXT..TEXT + 0x1000;
    let layout = Layout {
        text: std::slice::from_ref(&text),
        replacements: REPL..REPL + 0x100,
    };
    let mem = Sim::new();
    mem.put(TEXT, &[A64_NOP]);
    mem.put(TEXT + 6, &[A64_NOP]);
    mem.put(REPL, &[0xd280_0020]); // mov x0, #1
    let k = key(cap, AltFlags::empty());
    let misaligned = |entries: &[TableEntry]| {
        let e = plan_alternatives_for::<Aarch64, _>(entries, &layout, &caps(ERRATUM), &mem)
            .unwrap_err();
        // Alone its replacement is moved to it and refused; after the first site the
        // replacement moves unchanged and the site's own code is refused.
        assert!(
            matches!(
                e.kind,
                TableErrorKind::Site(CodeError::A64Misaligned { addr: TEXT_6 })
                    | TableErrorKind::Replacement(CodeError::A64Misaligned { addr: TEXT_6 })
            ),
            "{e}"
        );
        e.index
    };
    const TEXT_6: u64 = TEXT + 6;
    let both = [
        entry(0, TEXT, REPL, k, 4, 4),
        entry(1, TEXT_6, REPL, k, 4, 4),
    ];
    assert_eq!(misaligned(&both), 1);
    assert_eq!(misaligned(&both[1..]), 0);
}

#[test]
fn a64_problems_are_refused_naming_the_entry() {
    let cap = Capability::erratum(ERRATUM).unwrap();
    let text = TEXT..TEXT + 0x1000;
    let layout = Layout {
        text: std::slice::from_ref(&text),
        replacements: REPL..REPL + 0x100,
    };
    let plan = |mem: &Sim, entries: &[TableEntry]| {
        plan_alternatives_for::<Aarch64, _>(entries, &layout, &caps(ERRATUM), mem).unwrap_err()
    };

    // A literal load in the replacement (LDR x0, #8) is refused, never guessed.
    let mem = Sim::new();
    mem.put(TEXT, &[A64_NOP]);
    mem.put(REPL, &[0x5800_0040]);
    let e = plan(
        &mem,
        &[entry(0, TEXT, REPL, key(cap, AltFlags::empty()), 4, 4)],
    );
    assert_eq!(e.index, 0);
    match e.kind {
        TableErrorKind::Replacement(CodeError::A64Relocation(r)) => {
            assert_eq!(r.kind, RelocErrorKind::UnsupportedLiteral)
        }
        other => panic!("{other:?}"),
    }

    // A misaligned site.
    let mem = Sim::new();
    mem.put(TEXT, &[A64_NOP, A64_NOP]);
    mem.put(REPL, &[A64_NOP]);
    let e = plan(
        &mem,
        &[entry(0, TEXT + 2, REPL, key(cap, AltFlags::empty()), 4, 4)],
    );
    assert_eq!(
        e.kind,
        TableErrorKind::Replacement(CodeError::A64Misaligned { addr: TEXT + 2 }),
        "{e}"
    );

    // A direct call out of BL's ±128 MiB reach.
    let mem = Sim::new();
    mem.put(TEXT, &[A64_NOP]);
    let far = 0x1000_0000u64;
    let text = [TEXT..TEXT + 0x1000, far..far + 4];
    let wide = Layout {
        text: &text,
        replacements: REPL..REPL + 0x100,
    };
    mem.put(far, &[A64_NOP]);
    let e = plan_alternatives_for::<Aarch64, _>(
        &[entry(0, TEXT, far, key(cap, AltFlags::DIRECT_CALL), 4, 0)],
        &wide,
        &caps(ERRATUM),
        &mem,
    )
    .unwrap_err();
    match e.kind {
        TableErrorKind::Replacement(CodeError::A64Relocation(r)) => {
            assert!(matches!(r.kind, RelocErrorKind::OutOfRange { .. }), "{r}")
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("alternative entry 0"), "{e}");
}

/// The AArch64 rules, with `sync` recorded: what the driver asks the instruction set to make
/// coherent after writing (on an AArch64 CPU, `Aarch64::sync` runs the cache maintenance of
/// `aarch64::cache::sync_sequence` for each range, then `ISB`).
#[derive(Debug)]
struct RecordingA64;

static SYNCED: std::sync::Mutex<Vec<(std::ops::Range<u64>, bool)>> =
    std::sync::Mutex::new(Vec::new());
static WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl alt_runtime::isa::Isa for RecordingA64 {
    const CALL_LEN: u8 = Aarch64::CALL_LEN;
    fn shape(addr: u64, code: &[u8]) -> Result<alt_runtime::isa::Shape, CodeError> {
        Aarch64::shape(addr, code)
    }
    fn relocate(
        src: &[u8],
        from: u64,
        to: u64,
        out: &mut [u8],
    ) -> Result<alt_runtime::isa::Shape, CodeError> {
        Aarch64::relocate(src, from, to, out)
    }
    fn call(at: u64, target: u64) -> Result<alt_runtime::isa::CallBytes, CodeError> {
        Aarch64::call(at, target)
    }
    fn fill(buf: &mut [u8]) {
        Aarch64::fill(buf)
    }
    fn keep_default(code: &[u8], out: &mut [u8]) {
        Aarch64::keep_default(code, out)
    }
    unsafe fn sync(ranges: &mut dyn Iterator<Item = std::ops::Range<u64>>) {
        let written = WRITTEN.load(std::sync::atomic::Ordering::SeqCst);
        SYNCED.lock().unwrap().extend(ranges.map(|r| (r, written)));
    }
    fn sync_cpu() {}
}

/// A simulated memory that notes when it was written.
struct NotingSim(Sim);

impl Memory for NotingSim {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0.read(addr, buf)
    }
}

impl Writer for NotingSim {
    unsafe fn write<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<WriteStats, WriteError> {
        WRITTEN.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: simulated memory.
        unsafe { self.0.write(chunks) }
    }
}

#[test]
fn every_written_range_is_synchronised_after_the_write() {
    let mem = Sim::new();
    let cap = Capability::erratum(ERRATUM).unwrap();
    let (a, b) = (TEXT, TEXT + 0x100);
    mem.put(a, &[A64_NOP, A64_NOP]);
    mem.put(b, &[A64_NOP]);
    mem.put(REPL, &[0xd503_3fdf, 0xd503_3f9f]); // isb; dsb sy
    mem.put(REPL + 8, &[0xd503_3fdf]);
    let entries = [
        entry(0, a, REPL, key(cap, AltFlags::empty()), 8, 8),
        entry(1, b, REPL + 8, key(cap, AltFlags::empty()), 4, 4),
    ];
    let text = TEXT..TEXT + 0x1000;
    let layout = Layout {
        text: std::slice::from_ref(&text),
        replacements: REPL..REPL + 0x100,
    };
    // SAFETY: simulated memory, no one's code.
    let patcher =
        unsafe { alt_runtime::driver::Patcher::<RecordingA64>::for_isa(caps(ERRATUM), layout) }
            .alternatives(entries);
    let prepared = patcher.plan(&mem).unwrap();
    let mut sim = NotingSim(mem);
    // SAFETY: simulated memory; nothing else runs it.
    let mut alone = unsafe { Alone::new() };
    let patched = prepared.apply(&mut sim, &mut alone).unwrap();
    assert_eq!(
        *SYNCED.lock().unwrap(),
        [(a..a + 8, true), (b..b + 4, true)],
        "each written site, after the write"
    );
    // The sequence an AArch64 CPU runs for the first range, with 64-byte lines: clean the data
    // line, DSB ISH, invalidate the instruction line, DSB ISH, ISB.
    use alt_runtime::aarch64::cache::{sync_sequence, CacheOp, Domain};
    let ctr = (4 << 16) | 4; // DminLine = IminLine = 4: 16 words = 64 bytes
    let seq = sync_sequence(ctr, a, 8);
    assert_eq!(
        seq.ops(),
        [
            CacheOp::CleanDcacheToPoU {
                addr: a,
                len: 64,
                line: 64
            },
            CacheOp::Dsb(Domain::Ish),
            CacheOp::InvalidateIcacheToPoU {
                addr: a,
                len: 64,
                line: 64
            },
            CacheOp::Dsb(Domain::Ish),
            CacheOp::Isb,
        ]
    );
    SYNCED.lock().unwrap().clear();
    patched
        .revert(&mut sim, &mut alone)
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(
        SYNCED.lock().unwrap().len(),
        2,
        "reverting synchronises too"
    );
}
