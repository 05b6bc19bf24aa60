//! All or nothing under faults: the hosted writer's operating-system calls fail one at a time
//! (fault injection at the `TextSys` seam), and after every single failure the text is byte for
//! byte what it was, or the error hands back a record that restores it exactly; no page is ever
//! left writable and executable, and every page keeps its protection. The same for revert.
//!
//! The fixture has sites on three text pages in two runs (pages 0, and 2-3), so that a failure
//! can come after an earlier run was written. Each kind of call (maps, mprotect, copy,
//! `/proc/self/mem`, read) fails at its first, second, ... call, until a pass makes fewer calls
//! than that, with each kind of fault (refused, other error, half done, silently not done).

#![cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]

mod common;

use alt_runtime::driver::{Patched, Prepared};
use alt_runtime::os::linux::{read_maps, Call, Fault, FaultInjector, LinuxSys, MprotectWriter};
use alt_runtime::plan::Plan;
use alt_runtime::{CapabilitySet, Errata, Features};
use common::*;

struct Fixture {
    buf: Buf,
    table: Vec<alt_runtime::plan::TableEntry>,
}

/// Four sites: two on text page 0, one at the end of page 2 running into page 3, one on page 3.
fn fixture() -> Fixture {
    let mut buf = Buf::new();
    let sites = [
        buf.text(0x100),
        buf.text(0x200),
        buf.text(2 * PAGE + 0xffc),
        buf.text(3 * PAGE + 0x400),
    ];
    let mut specs = Vec::new();
    for (i, &site) in sites.iter().enumerate() {
        buf.put(site, &cat(&[&mov_eax(1), &[0x90, 0x90, 0x90, 0xc3]]));
        let repl = buf.repl(0x10 * i as u64);
        buf.put(repl, &mov_eax(10 + i as u32));
        specs.push(Spec::inline(site, 8, repl, 5, feature(Features::POPCNT)));
    }
    buf.seal();
    let table = buf.table(0, &specs);
    Fixture { buf, table }
}

fn plan(f: &Fixture) -> Plan {
    f.buf
        .plan(&f.table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap()
}

/// Protections of every page of the buffer, and that no mapping anywhere is W+X.
fn protections(buf: &Buf) -> Vec<String> {
    let maps = read_maps().unwrap();
    let wx: Vec<_> = maps
        .iter()
        .filter(|m| m.is_writable_and_executable())
        .collect();
    assert!(wx.is_empty(), "writable and executable: {wx:#x?}");
    (0..PAGES)
        .map(|i| {
            let a = buf.base + i * PAGE;
            maps.iter()
                .find(|m| m.range.contains(&a))
                .map_or(String::from("unmapped"), |m| m.perms.clone())
        })
        .collect()
}

fn faulty(target: (Call, usize, Fault), proc_mem: bool) -> MprotectWriter<FaultInjector> {
    let w = MprotectWriter::with_sys(FaultInjector::new(LinuxSys::default(), Some(target)));
    if proc_mem {
        w.through_proc_self_mem()
    } else {
        w
    }
}

fn revert_clean(p: Patched) {
    if let Err((_, e)) = p.revert(&mut writer(), &mut alone()) {
        panic!("clean revert: {e}");
    }
}

/// The faults worth injecting into each kind of call. A lying `mprotect` would make the copy
/// fault, and a lying read would make the writer restore zeros: `TextSys` promises neither
/// happens, and the injector keeps the promise by failing them with `EIO` instead (injected
/// here: they must be survived as any failure).
fn faults(call: Call) -> &'static [Fault] {
    const REFUSED: Fault = Fault::Fail(libc::EACCES);
    const OTHER: Fault = Fault::Fail(libc::ENOMEM);
    const HALF: Fault = Fault::Partial(libc::EIO);
    match call {
        Call::Maps => &[OTHER, Fault::Lie],
        Call::Protect => &[REFUSED, OTHER, Fault::Lie],
        Call::Copy | Call::MemWrite => &[OTHER, HALF, Fault::Lie],
        Call::Read => &[Fault::Fail(libc::EFAULT), Fault::Lie],
    }
}

const CALLS: [Call; 5] = [
    Call::Maps,
    Call::Protect,
    Call::Copy,
    Call::MemWrite,
    Call::Read,
];

#[test]
fn every_single_fault_while_patching_leaves_the_text_as_it_was_or_a_record_that_restores_it() {
    let _g = lock();
    let f = fixture();
    let pristine = f.buf.snapshot();
    let perms = protections(&f.buf);
    let mut outcomes = std::collections::BTreeMap::new();
    for proc_mem in [false, true] {
        for call in CALLS {
            for &fault in faults(call) {
                for k in 1.. {
                    let mut w = faulty((call, k, fault), proc_mem);
                    // SAFETY: as `common::apply`.
                    let prepared: Prepared = unsafe { Prepared::from_alternatives(plan(&f)) };
                    let result = prepared.apply(&mut w, &mut alone());
                    let fired = w.sys().fired();
                    let what = format!("{call:?} #{k} {fault:?} proc_mem={proc_mem}");
                    let outcome = match result {
                        Ok(p) => {
                            // The fault was absorbed (a refused mprotect falls back to
                            // /proc/self/mem; a failed restore is retried): fully patched.
                            for s in &p.report().sites {
                                assert_eq!(f.buf.read(s.addr, 8), s.after, "{what}");
                            }
                            assert_eq!(protections(&f.buf), perms, "{what}");
                            revert_clean(p);
                            "patched"
                        }
                        Err(e) => {
                            let leftover = e.leftover.is_some();
                            if let Some(p) = e.leftover {
                                revert_clean(*p);
                            }
                            if leftover {
                                "left a record"
                            } else {
                                "nothing changed"
                            }
                        }
                    };
                    assert_eq!(f.buf.snapshot(), pristine, "{what}: {outcome}");
                    assert_eq!(protections(&f.buf), perms, "{what}: {outcome}");
                    if !fired {
                        break;
                    }
                    *outcomes.entry((format!("{call:?}"), outcome)).or_insert(0) += 1;
                }
            }
        }
    }
    eprintln!("{outcomes:#?}");
    // One fault is always survived or rolled back: the roll back itself runs without faults,
    // so it restores every byte (from what the batch says each site held) and leaves nothing
    // to revert.
    assert!(
        !outcomes.keys().any(|(_, o)| *o == "left a record"),
        "{outcomes:?}"
    );
    // Every kind of call was made and failed at least once, in both modes.
    for call in CALLS {
        let name = format!("{call:?}");
        assert!(
            outcomes.keys().any(|(c, _)| *c == name),
            "{name} never failed: {outcomes:?}"
        );
    }
}

#[test]
fn every_single_fault_while_reverting_leaves_a_record_that_still_reverts() {
    let _g = lock();
    let f = fixture();
    let pristine = f.buf.snapshot();
    let perms = protections(&f.buf);
    let mut faults_seen = 0;
    for proc_mem in [false, true] {
        for call in CALLS {
            for &fault in faults(call) {
                for k in 1.. {
                    let p = apply(plan(&f)).expect("clean patch");
                    let patched = f.buf.snapshot();
                    let mut w = faulty((call, k, fault), proc_mem);
                    let result = p.revert(&mut w, &mut alone());
                    let fired = w.sys().fired();
                    let what = format!("{call:?} #{k} {fault:?} proc_mem={proc_mem}");
                    match result {
                        Ok(_) => assert_eq!(f.buf.snapshot(), pristine, "{what}"),
                        Err((p, _)) => {
                            // The sites are as patched, or some already restored: the record
                            // handed back reverts the rest.
                            assert!(f.buf.snapshot() == patched || fired, "{what}");
                            revert_clean(p);
                            assert_eq!(f.buf.snapshot(), pristine, "{what}");
                        }
                    }
                    assert_eq!(protections(&f.buf), perms, "{what}");
                    if !fired {
                        break;
                    }
                    faults_seen += 1;
                }
            }
        }
    }
    assert!(faults_seen > 20, "{faults_seen} faults injected");
}

#[test]
fn a_revert_that_failed_part_way_can_be_retried() {
    let _g = lock();
    let f = fixture();
    let pristine = f.buf.snapshot();
    let p = apply(plan(&f)).expect("patch");
    // Restore the sites of page 0 behind the record's back, as a revert that failed after its
    // first run would have left them.
    for s in p.report().sites.iter().take(2) {
        f.buf.put(s.addr, &s.before);
    }
    let stats = p
        .revert(&mut writer(), &mut alone())
        .map_err(|(_, e)| e)
        .expect("the restored site is skipped, the others reverted");
    assert_eq!(f.buf.snapshot(), pristine);
    // Sites on pages 2 and 3 only: page 0 was not written again.
    assert_eq!(stats.pages, 2);
}

#[test]
fn text_in_a_shared_mapping_is_refused_and_the_file_is_unchanged() {
    use std::io::Write;
    let _g = lock();
    let path = std::env::temp_dir().join(format!("alt-shared-text-{}", std::process::id()));
    let code = cat(&[&mov_eax(1), &[0xc3]]);
    let mut page = vec![0xcc_u8; PAGE as usize];
    page[..code.len()].copy_from_slice(&code);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&page)
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of the file just written; unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let addr = p as u64;
    for proc_mem in [false, true] {
        let mut w = MprotectWriter::new();
        if proc_mem {
            w = w.through_proc_self_mem();
        }
        // SAFETY: the page is this test's own and runs on no thread.
        let e = unsafe {
            alt_runtime::writer::Writer::write(
                &mut w,
                &[alt_runtime::writer::Chunk {
                    addr: addr + 1,
                    bytes: &[0x42],
                }][..],
            )
        }
        .unwrap_err();
        assert!(e.reason.contains("shared mapping"), "{e}");
        assert!(!e.text_changed);
    }
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p, PAGE as usize) };
    assert_eq!(std::fs::read(&path).unwrap(), page, "the file is unchanged");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_read_of_memory_unmapped_since_is_an_error_not_a_crash() {
    use alt_runtime::memory::Memory;
    // Every test here maps under the lock, so no other test reuses the range unmapped below.
    let _g = lock();
    let w = MprotectWriter::new();
    let b = Buf::new();
    let addr = b.text(0);
    let mut buf = [0u8; 4];
    w.read(addr, &mut buf).unwrap();
    assert_eq!(buf, [0xcc; 4]);
    drop(b); // unmapped
    let e = w.read(addr, &mut buf).unwrap_err();
    assert_eq!(e.addr, addr);
    // A batch with one unmapped range names it.
    let ok = [0u8; 4];
    let ranges = [ok.as_ptr() as u64..ok.as_ptr() as u64 + 4, addr..addr + 4];
    let mut out = [0u8; 8];
    assert_eq!(w.read_each(&ranges, &mut out).unwrap_err().addr, addr);
}

#[test]
fn the_injector_counts_the_calls_of_a_clean_pass() {
    let _g = lock();
    let f = fixture();
    let mut w = MprotectWriter::with_sys(FaultInjector::new(LinuxSys::default(), None));
    // SAFETY: as `common::apply`.
    let prepared: Prepared = unsafe { Prepared::from_alternatives(plan(&f)) };
    let p = prepared.apply(&mut w, &mut alone()).unwrap();
    let s = w.sys();
    // Two runs: one mprotect to writable and one back for each, one copy per chunk part
    // (the site across the page 2-3 boundary is one copy: both pages are one run).
    assert_eq!(s.count(Call::Maps), 1);
    assert_eq!(s.count(Call::Protect), 4);
    assert_eq!(s.count(Call::Copy), 4);
    assert_eq!(s.count(Call::MemWrite), 0);
    assert!(!s.fired());
    assert_eq!(p.report().pages, 3);
    revert_clean(p);
    let _ = CapabilitySet::default();
}

/// The buffer's executable pages as `(range, prot)`, read from the maps: what
/// `loader_mappings` is told for an object's text.
fn known_text(buf: &Buf) -> Vec<(core::ops::Range<u64>, i32)> {
    let end = buf.base + PAGES * PAGE;
    read_maps()
        .unwrap()
        .into_iter()
        .filter(|m| m.prot & libc::PROT_EXEC != 0 && m.range.start < end && buf.base < m.range.end)
        .map(|m| (m.range.start.max(buf.base)..m.range.end.min(end), m.prot))
        .collect()
}

#[test]
fn text_inside_the_loader_mappings_is_written_without_reading_the_maps() {
    let _g = lock();
    let f = fixture();
    let before = protections(&f.buf);
    let known = known_text(&f.buf);
    assert!(!known.is_empty());
    // SAFETY: the ranges are the buffer's own executable pages with the protection they have.
    let mut w = unsafe {
        MprotectWriter::with_sys(FaultInjector::new(LinuxSys::default(), None))
            .loader_mappings(known.clone())
    };
    // SAFETY: as `common::apply`.
    let prepared: Prepared = unsafe { Prepared::from_alternatives(plan(&f)) };
    let p = prepared.apply(&mut w, &mut alone()).unwrap();
    assert_eq!(w.sys().count(Call::Maps), 0);
    assert_eq!(w.sys().count(Call::Protect), 4);
    assert_eq!(
        protections(&f.buf),
        before,
        "each page got back its protection"
    );
    revert_clean(p);

    // A site outside every known mapping: the maps are read, as without them.
    let mut partial = known;
    partial.retain(|(r, _)| !r.contains(&(f.buf.base + 3 * PAGE)));
    partial
        .iter_mut()
        .for_each(|(r, _)| r.end = r.end.min(f.buf.base + 3 * PAGE));
    // SAFETY: as above, fewer pages.
    let mut w = unsafe {
        MprotectWriter::with_sys(FaultInjector::new(LinuxSys::default(), None))
            .loader_mappings(partial)
    };
    // SAFETY: as `common::apply`.
    let prepared: Prepared = unsafe { Prepared::from_alternatives(plan(&f)) };
    let p = prepared.apply(&mut w, &mut alone()).unwrap();
    assert_eq!(w.sys().count(Call::Maps), 1);
    assert_eq!(protections(&f.buf), before);
    revert_clean(p);
}

/// A rendezvous that records the value of the slot at `.0` when asked to stop, then refuses.
struct RefuseAndLook(u64, Option<u64>);

fn load(addr: u64) -> u64 {
    // SAFETY: the slot lies in the test buffer's data page, 8-aligned, alive.
    unsafe { std::sync::atomic::AtomicU64::from_ptr(addr as *mut u64) }
        .load(std::sync::atomic::Ordering::SeqCst)
}

// SAFETY: it never lets anyone write.
unsafe impl alt_runtime::rendezvous::Rendezvous for RefuseAndLook {
    fn stop(
        &mut self,
        _sites: &dyn alt_runtime::rendezvous::Spans,
    ) -> Result<(), alt_runtime::rendezvous::RendezvousError> {
        self.1 = Some(load(self.0));
        Err(alt_runtime::rendezvous::RendezvousError::new("refused"))
    }

    fn release(&mut self) {
        panic!("released without a stop");
    }
}

#[test]
fn a_refused_paravirt_install_never_stores_the_new_backend() {
    use alt_runtime::driver::Patcher;
    use alt_runtime::paravirt::{Backend, OpChoice, OpDesc, PvTableEntry, TableDesc};
    use alt_runtime::plan::Layout;
    use alt_runtime::table::{relative, Clobbers, PvEntry};
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    let slot = buf.data(0x100);
    buf.put(slot, &0x1111u64.to_le_bytes());
    // call qword ptr [rip + SLOT]
    let disp = (slot as i64 - (site as i64 + 6)) as i32;
    buf.put(site, &cat(&[&[0xff, 0x15], &disp.to_le_bytes()]));
    let native = buf.text(0x800);
    let function = buf.text(0x900);
    buf.seal();
    let entry_addr = buf.data(0);
    let entry = PvEntry {
        site: relative(entry_addr, site).unwrap(),
        op: 0,
        site_len: 6,
        clobbers: Clobbers::C_ABI.bits(),
    };
    let ops = [OpDesc {
        name: "op",
        native,
        native_thunk: None,
        dispatch_thunk: None,
        dispatch_slot: 0,
        inline: None,
        clobbers: Clobbers::C_ABI,
        returns: true,
    }];
    let choices = [OpChoice::Function(function)];
    let text = buf.text_ranges();
    let layout = Layout {
        text: &text,
        replacements: buf.repl_range(),
    };
    let table = TableDesc {
        name: "T",
        table: slot,
        ops: &ops,
        entries: 0..0,
    };
    let backend = Backend {
        name: "b",
        ops: &choices,
    };
    // SAFETY: the layout is the test buffer; the table's slot is in its data page, and the
    // backend's function is never called (the site never runs).
    let patcher = unsafe {
        Patcher::new(CapabilitySet::default(), layout).paravirt_entries(
            table,
            backend,
            vec![PvTableEntry {
                addr: entry_addr,
                entry,
            }],
            None,
        )
    };
    let prepared = patcher.plan(&writer()).unwrap();
    assert_eq!(prepared.paravirt()[0].slots[0].value, function);
    let before = buf.snapshot();
    let mut r = RefuseAndLook(slot, None);
    let e = prepared.apply(&mut writer(), &mut r).unwrap_err();
    assert!(e.leftover.is_none());
    assert_eq!(
        r.1,
        Some(0x1111),
        "the slot held the old value when the rendezvous ran"
    );
    assert_eq!(load(slot), 0x1111);
    assert_eq!(buf.snapshot(), before);
}

// --- The writer's calls, against a simulated address space -------------------------------------

use alt_runtime::os::linux::{Mapping, TextSys};
use alt_runtime::writer::{Chunk, WriteStats, Writer};
use std::cell::RefCell;

const R: i32 = libc::PROT_READ;
const W: i32 = libc::PROT_WRITE;
const X: i32 = libc::PROT_EXEC;
const SIM: u64 = 0x7000_0000;

/// A call the writer made.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Made {
    Protect(u64, u64, i32),
    Copy(u64, Vec<u8>),
    MemWrite(u64, Vec<u8>),
}

/// Six simulated pages at `SIM`, each with a protection, listed as `mappings`; every call the
/// writer makes is recorded (addresses relative to `SIM`). A copy into a page that is not
/// writable fails the test, as it would crash the process.
struct Sim {
    mappings: Vec<Mapping>,
    prot: RefCell<Vec<i32>>,
    bytes: RefCell<Vec<u8>>,
    made: RefCell<Vec<Made>>,
}

impl Sim {
    /// One mapping per `(first page, pages, prot, shared)`.
    fn new(layout: &[(u64, u64, i32, bool)]) -> Sim {
        let mut prot = vec![0; 6];
        let mappings = layout
            .iter()
            .map(|&(first, n, p, shared)| {
                for page in first..first + n {
                    prot[page as usize] = p;
                }
                Mapping {
                    range: SIM + first * PAGE..SIM + (first + n) * PAGE,
                    prot: p,
                    perms: String::new(),
                    shared,
                    path: String::new(),
                    deleted: false,
                }
            })
            .collect();
        Sim {
            mappings,
            prot: RefCell::new(prot),
            bytes: RefCell::new(vec![0xcc; 6 * PAGE as usize]),
            made: RefCell::new(Vec::new()),
        }
    }

    fn offset(addr: u64, len: usize) -> std::ops::Range<usize> {
        let at = (addr - SIM) as usize;
        at..at + len
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.bytes.borrow_mut()[Self::offset(addr, bytes.len())].copy_from_slice(bytes);
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        self.bytes.borrow()[Self::offset(addr, len)].to_vec()
    }
}

// SAFETY: a simulation: its maps, protections and reads are its own pages' and say what it did.
unsafe impl TextSys for Sim {
    fn maps(&self) -> Result<Vec<Mapping>, alt_runtime::writer::WriteError> {
        Ok(self.mappings.clone())
    }

    unsafe fn protect(&self, range: std::ops::Range<u64>, prot: i32) -> Result<(), i32> {
        assert_eq!(range.start % PAGE, 0);
        assert_eq!(range.end % PAGE, 0);
        for page in (range.start - SIM) / PAGE..(range.end - SIM) / PAGE {
            self.prot.borrow_mut()[page as usize] = prot;
        }
        self.made
            .borrow_mut()
            .push(Made::Protect(range.start - SIM, range.end - SIM, prot));
        Ok(())
    }

    unsafe fn copy(&self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        for page in (addr - SIM) / PAGE..=(addr - SIM + bytes.len() as u64 - 1) / PAGE {
            let p = self.prot.borrow()[page as usize];
            assert!(
                p & W != 0,
                "copy to {addr:#x}: page {page} is not writable ({p:#x})"
            );
        }
        self.put(addr, bytes);
        self.made
            .borrow_mut()
            .push(Made::Copy(addr - SIM, bytes.to_vec()));
        Ok(())
    }

    unsafe fn mem_write(&self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        self.put(addr, bytes);
        self.made
            .borrow_mut()
            .push(Made::MemWrite(addr - SIM, bytes.to_vec()));
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let r = addr
            .checked_sub(SIM)
            .map(|a| a as usize..a as usize + buf.len())
            .filter(|r| r.end <= 6 * PAGE as usize)
            .ok_or(libc::EFAULT)?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }
}

/// Every byte of the simulated pages, read through `s`.
fn snapshot<S: TextSys>(s: &S) -> Vec<u8> {
    let mut all = vec![0; 6 * PAGE as usize];
    s.read(SIM, &mut all).unwrap();
    all
}

/// Pages 0-1 `r-x` (one mapping), page 2 `r--`, page 3 `r-x` (another mapping), page 4 `rwx`.
fn sim() -> Sim {
    Sim::new(&[
        (0, 2, R | X, false),
        (2, 1, R, false),
        (3, 1, R | X, false),
        (4, 1, R | W | X, false),
    ])
}

/// Chunks: one on page 0, one across the page 0-1 boundary, one on page 2, one on page 3.
fn chunks() -> [(u64, Vec<u8>); 4] {
    [
        (SIM + 0x10, vec![1, 2, 3]),
        (SIM + PAGE - 2, vec![4, 5, 6, 7]),
        (SIM + 2 * PAGE + 0x20, vec![8]),
        (SIM + 3 * PAGE + PAGE - 1, vec![9]),
    ]
}

fn as_chunks(c: &[(u64, Vec<u8>)]) -> Vec<Chunk<'_>> {
    c.iter()
        .map(|(addr, bytes)| Chunk { addr: *addr, bytes })
        .collect()
}

/// Writes `c` through `w`.
fn write_all<S: TextSys>(
    w: &mut MprotectWriter<S>,
    c: &[(u64, Vec<u8>)],
) -> Result<WriteStats, alt_runtime::writer::WriteError> {
    // SAFETY: the writer's system calls go to a simulation: no real memory is written.
    unsafe { w.write(&as_chunks(c)) }
}

#[test]
fn each_run_of_pages_is_made_writable_keeping_execute_written_and_given_back_its_protection() {
    let c = chunks();
    let mut w = MprotectWriter::with_sys(sim());
    let stats = write_all(&mut w, &c).unwrap();
    use Made::*;
    let p = PAGE;
    assert_eq!(
        *w.sys().made.borrow(),
        [
            // Pages 0-1, one run: both chunks copied while it is writable.
            Protect(0, 2 * p, R | X | W),
            Copy(0x10, vec![1, 2, 3]),
            Copy(p - 2, vec![4, 5, 6, 7]),
            Protect(0, 2 * p, R | X),
            // Page 2: another protection, another run.
            Protect(2 * p, 3 * p, R | W),
            Copy(2 * p + 0x20, vec![8]),
            Protect(2 * p, 3 * p, R),
            // Page 3: the same protection as pages 0-1 but not next to them.
            Protect(3 * p, 4 * p, R | X | W),
            Copy(4 * p - 1, vec![9]),
            Protect(3 * p, 4 * p, R | X),
        ]
    );
    assert_eq!(
        stats,
        WriteStats {
            pages: 4,
            protection_changes: 6
        }
    );
    for (addr, bytes) in &c {
        assert_eq!(w.sys().get(*addr, bytes.len()), *bytes);
    }
    assert_eq!(
        *w.sys().prot.borrow(),
        [R | X, R | X, R, R | X, R | W | X, 0]
    );
}

#[test]
fn a_chunk_in_two_runs_is_copied_in_two_parts() {
    // Page 0 `r-x`, page 1 `r--`: a chunk across the boundary is one copy per run.
    let s = Sim::new(&[(0, 1, R | X, false), (1, 1, R, false)]);
    let c = [(SIM + PAGE - 3, vec![1, 2, 3, 4, 5])];
    let mut w = MprotectWriter::with_sys(s);
    write_all(&mut w, &c).unwrap();
    use Made::*;
    assert_eq!(
        *w.sys().made.borrow(),
        [
            Protect(0, PAGE, R | X | W),
            Copy(PAGE - 3, vec![1, 2, 3]),
            Protect(0, PAGE, R | X),
            Protect(PAGE, 2 * PAGE, R | W),
            Copy(PAGE, vec![4, 5]),
            Protect(PAGE, 2 * PAGE, R),
        ]
    );
}

#[test]
fn a_refused_mprotect_sends_that_run_and_every_later_one_through_proc_self_mem() {
    let p = PAGE;
    for errno in [libc::EACCES, libc::EPERM] {
        // The third mprotect (making page 2 writable) is refused.
        let s = FaultInjector::new(sim(), Some((Call::Protect, 3, Fault::Fail(errno))));
        let mut w = MprotectWriter::with_sys(s);
        let stats = write_all(&mut w, &chunks()).unwrap();
        assert_eq!(stats.protection_changes, 2, "errno {errno}");
        let made = w.sys().count(Call::MemWrite);
        assert_eq!(made, 2, "pages 2 and 3 through /proc/self/mem");
        assert_eq!(
            w.sys().count(Call::Protect),
            3,
            "none tried after the refusal"
        );
        for (addr, bytes) in &chunks() {
            let mut now = vec![0; bytes.len()];
            w.sys().read(*addr, &mut now).unwrap();
            assert_eq!(now, *bytes);
        }
    }
    // Any other error is a failure: the first run is restored, by the path that wrote it.
    let s = FaultInjector::new(sim(), Some((Call::Protect, 3, Fault::Fail(libc::ENOMEM))));
    let mut w = MprotectWriter::with_sys(s);
    let before = snapshot(w.sys());
    let e = write_all(&mut w, &chunks()).unwrap_err();
    assert_eq!(e.addr, SIM + 2 * p);
    assert_eq!(e.reason, "mprotect to writable failed");
    assert_eq!(e.os_error, Some(libc::ENOMEM));
    assert!(!e.text_changed);
    assert_eq!(snapshot(w.sys()), before);
    assert_eq!(w.sys().count(Call::MemWrite), 0);
    // Written, then restored with the saved bytes: two copies per chunk of the run.
    assert_eq!(w.sys().count(Call::Copy), 4);
    assert_eq!(w.sys().count(Call::Protect), 5);
}

#[test]
fn a_failure_after_proc_self_mem_runs_restores_them_through_proc_self_mem() {
    // Strict W^X: every run through /proc/self/mem; the write of page 3's run fails, so the
    // runs of pages 0-1 and 2 are restored the same way, last first.
    let s = FaultInjector::new(sim(), Some((Call::MemWrite, 4, Fault::Fail(libc::EIO))));
    let mut w = MprotectWriter::with_sys(s).through_proc_self_mem();
    let before = snapshot(w.sys());
    let e = write_all(&mut w, &chunks()).unwrap_err();
    assert_eq!(e.reason, "writing through /proc/self/mem failed");
    assert_eq!(e.addr, SIM + 4 * PAGE - 1);
    assert!(!e.text_changed);
    assert_eq!(snapshot(w.sys()), before);
    assert_eq!(
        w.sys().count(Call::Protect),
        0,
        "no page was ever made writable"
    );
    // Three writes, the failed one, then the four chunks' originals (page 3's too: it may be
    // half written).
    assert_eq!(w.sys().count(Call::MemWrite), 3 + 1 + 4);
}

#[test]
fn text_the_writer_cannot_write_is_refused_in_prepare_before_anyone_is_stopped() {
    let s = Sim::new(&[(0, 1, R | X, true), (1, 1, R | X, false)]);
    let mut w = MprotectWriter::with_sys(s);
    let refusal = |w: &mut MprotectWriter<Sim>, c: &[(u64, Vec<u8>)]| {
        let e = w.prepare(&as_chunks(c)).unwrap_err();
        assert!(!e.text_changed);
        (e.addr - SIM, e.reason)
    };
    assert_eq!(
        refusal(&mut w, &[(SIM + PAGE + 8, vec![1]), (SIM + 0x10, vec![1])]),
        (0x10, "chunks are not sorted by address or overlap")
    );
    assert_eq!(
        refusal(
            &mut w,
            &[(SIM + PAGE + 8, vec![1, 2]), (SIM + PAGE + 9, vec![1])]
        ),
        (PAGE + 9, "chunks are not sorted by address or overlap")
    );
    assert_eq!(
        refusal(
            &mut w,
            &[(SIM + PAGE + 8, vec![1]), (SIM + 3 * PAGE, vec![1])]
        ),
        (3 * PAGE, "page is not mapped")
    );
    assert_eq!(
        refusal(&mut w, &[(SIM + 0x10, vec![1])]),
        (
            0,
            "page is in a shared mapping: writing it would change the file or another process"
        )
    );
    assert!(w.sys().made.borrow().is_empty(), "nothing was written");
    // Chunks that touch are fine.
    let c = [(SIM + PAGE + 8, vec![1, 2]), (SIM + PAGE + 10, vec![3])];
    w.prepare(&as_chunks(&c)).unwrap();
    write_all(&mut w, &c).unwrap();
    assert_eq!(w.sys().get(SIM + PAGE + 8, 3), [1, 2, 3]);

    // Through the driver: the refusal comes before the rendezvous is asked to stop anyone.
    use alt_runtime::patch::PatchError;
    use alt_runtime::plan::Choice;
    use alt_runtime::report::SiteReport;
    struct Watch(usize);
    // SAFETY: it stops no one; the writer below writes a simulation only.
    unsafe impl alt_runtime::rendezvous::Rendezvous for Watch {
        fn stop(
            &mut self,
            _: &dyn alt_runtime::rendezvous::Spans,
        ) -> Result<(), alt_runtime::rendezvous::RendezvousError> {
            self.0 += 1;
            Ok(())
        }
        fn release(&mut self) {}
    }
    let plan = Plan {
        sites: [SiteReport {
            addr: SIM + 0x10,
            function: None,
            choice: Choice::Default,
            candidates: Default::default(),
            before: [0xcc].into(),
            after: [0x90].into(),
        }]
        .into_iter()
        .collect(),
        capabilities: CapabilitySet::default(),
    };
    // SAFETY: the writer's system calls go to a simulation: no real memory is written.
    let prepared: Prepared = unsafe { Prepared::from_alternatives(plan) };
    let mut watch = Watch(0);
    let e = prepared.apply(&mut w, &mut watch).unwrap_err();
    assert!(
        matches!(&e.error, PatchError::Write(we) if we.reason.contains("shared mapping")),
        "{e}"
    );
    assert!(e.leftover.is_none());
    assert_eq!(watch.0, 0, "no one was stopped");
}

#[test]
fn a_write_of_other_chunks_than_those_prepared_is_prepared_anew() {
    let s = sim();
    s.put(SIM + 0x10, &[0xa1, 0xa2, 0xa3]);
    s.put(SIM + 2 * PAGE + 0x20, &[0xb1]);
    let mut w = MprotectWriter::with_sys(s);
    let prepared = [(SIM + 0x10, vec![1, 2, 3])];
    w.prepare(&as_chunks(&prepared)).unwrap();
    // As many chunks and bytes, but on another page (`r--`, another run): written only if
    // that page is made writable, which the prepared run does not cover.
    let other = [(SIM + 2 * PAGE + 0x20, vec![8])];
    let longer = [(SIM + 0x10, vec![1, 2, 3, 4])];
    write_all(&mut w, &other).unwrap();
    assert_eq!(w.sys().get(SIM + 2 * PAGE + 0x20, 1), [8]);
    assert_eq!(
        *w.sys().prot.borrow(),
        [R | X, R | X, R, R | X, R | W | X, 0]
    );
    // A chunk longer than the one prepared, in the same run.
    w.prepare(&as_chunks(&prepared)).unwrap();
    write_all(&mut w, &longer).unwrap();
    assert_eq!(w.sys().get(SIM + 0x10, 4), [1, 2, 3, 4]);
}

#[test]
fn a_batch_that_fits_the_runs_but_not_their_saved_bytes_is_prepared_anew_and_rolls_back_exactly() {
    use alt_runtime::os::linux::{Call, Fault, FaultInjector};
    // Prepared: 1 byte on page 0, 3 on page 3; written: 3 and 1. As many chunks and bytes,
    // all inside the runs; but page 3's run would restore its bytes from the wrong place
    // (or past the end of the saved bytes, the other way round).
    for (prepared, written) in [((1, 3), (3, 1)), ((3, 1), (1, 3))] {
        let s = sim();
        s.put(SIM + 0x10, &[0xa1, 0xa2, 0xa3]);
        s.put(SIM + 3 * PAGE + 0x10, &[0xb1, 0xb2, 0xb3]);
        let before = snapshot(&s);
        // The second copy (page 3's run) fails: the first run is rolled back.
        let inj = FaultInjector::new(s, Some((Call::Copy, 2, Fault::Fail(libc::ENOMEM))));
        let mut w = MprotectWriter::with_sys(inj);
        let batch = |(a, b): (usize, usize)| {
            [
                (SIM + 0x10, vec![7; a]),
                (SIM + 3 * PAGE + 0x10, vec![8; b]),
            ]
        };
        w.prepare(&as_chunks(&batch(prepared))).unwrap();
        let e = write_all(&mut w, &batch(written)).unwrap_err();
        assert!(!e.text_changed, "{e}");
        assert!(
            snapshot(w.sys()) == before,
            "every byte restored ({prepared:?} then {written:?})"
        );
    }
}

#[test]
fn a_batch_read_into_too_short_a_buffer_is_refused_and_writes_nothing_past_it() {
    let src = [0xabu8; 100];
    let r = src.as_ptr() as u64..src.as_ptr() as u64 + 100;
    let mut buf = [0u8; 200];
    let e = LinuxSys::default().read_each(std::slice::from_ref(&r), &mut buf[..10]);
    assert_eq!(e, Err((r.start, libc::EINVAL)));
    assert!(buf.iter().all(|&b| b == 0), "nothing read");
    // The trait's own batch read (the simulation has no other).
    let s = sim();
    let hundred = SIM..SIM + 100;
    let e = s.read_each(std::slice::from_ref(&hundred), &mut buf[..10]);
    assert_eq!(e, Err((SIM, libc::EINVAL)));
}

#[test]
fn reads_inside_the_ranges_read_directly_are_plain_copies_and_others_go_to_the_system() {
    use alt_runtime::memory::{Memory, MemoryError};
    // Real bytes outside the simulated pages: the simulation cannot read them (EFAULT).
    let real: Vec<u8> = (0..64).collect();
    let base = real.as_ptr() as u64;
    let first_32 = base..base + 32;
    // SAFETY: `real` outlives the writer and is not changed while it is used; only its first
    // 32 bytes are declared readable directly.
    let w = unsafe { MprotectWriter::with_sys(sim()).reading_directly(vec![first_32]) };
    let mut buf = [0; 32];
    w.read(base, &mut buf).unwrap();
    assert_eq!(buf[..], real[..32]);
    let mut two = [0; 8];
    w.read_each(&[base + 4..base + 8, base + 28..base + 32], &mut two)
        .unwrap();
    assert_eq!(two, [4, 5, 6, 7, 28, 29, 30, 31]);
    // Bytes 30..34 run past the direct range: the read goes to the system, which fails.
    let mut past = [0; 4];
    assert_eq!(
        w.read(base + 30, &mut past),
        Err(MemoryError { addr: base + 30 })
    );
    assert!(w
        .read_each(&[base..base + 4, base + 30..base + 34], &mut two)
        .is_err());
    // The simulated pages themselves are read through the system.
    let mut sim_bytes = [0; 2];
    w.read(SIM, &mut sim_bytes).unwrap();
    assert_eq!(sim_bytes, [0xcc, 0xcc]);
}

#[test]
fn a_chunk_from_a_shared_page_into_another_protection_is_written_whole() {
    // Chunk 0 on page 1 (r-x); chunk 1 starts on page 1 too and ends on page 2 (r--): its first
    // two bytes belong to page 1's run, its last two to a run of their own.
    let c = [
        (SIM + PAGE + 0x10, vec![1]),
        (SIM + 2 * PAGE - 2, vec![2, 3, 4, 5]),
    ];
    let mut w = MprotectWriter::with_sys(sim());
    write_all(&mut w, &c).unwrap();
    assert_eq!(w.sys().get(SIM + PAGE + 0x10, 1), [1]);
    assert_eq!(w.sys().get(SIM + 2 * PAGE - 2, 4), [2, 3, 4, 5]);
}

#[test]
fn a_page_that_is_writable_already_stays_writable_while_it_is_written() {
    // Page 4 is rwx: adding write must not take it away (the simulation fails a copy into a
    // page that is not writable).
    let c = [(SIM + 4 * PAGE + 8, vec![7, 7])];
    let mut w = MprotectWriter::with_sys(sim());
    write_all(&mut w, &c).unwrap();
    assert_eq!(w.sys().get(SIM + 4 * PAGE + 8, 2), [7, 7]);
    assert_eq!(w.sys().prot.borrow()[4], R | W | X);
}

#[test]
fn a_rolled_back_chunk_in_two_runs_gets_back_its_own_saved_bytes() {
    // Page 0 `r-x`, page 1 `r--`, page 2 `r-x`: three runs. The chunk across pages 0-1 is the
    // second chunk (its saved bytes start after the first chunk's) and its part in page 1
    // starts 3 bytes into it. Making page 2 writable fails: runs 1 and 0 are rolled back.
    let s = Sim::new(&[(0, 1, R | X, false), (1, 1, R, false), (2, 1, R | X, false)]);
    let pattern: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8).collect();
    s.put(SIM, &pattern);
    let s = FaultInjector::new(s, Some((Call::Protect, 5, Fault::Fail(libc::ENOMEM))));
    let c = [
        (SIM + 0x10, vec![1, 2, 3]),
        (SIM + PAGE - 3, vec![4, 5, 6, 7, 8]),
        (SIM + 2 * PAGE + 0x20, vec![9]),
    ];
    let mut w = MprotectWriter::with_sys(s);
    let before = snapshot(w.sys());
    let e = write_all(&mut w, &c).unwrap_err();
    assert_eq!(e.addr, SIM + 2 * PAGE);
    assert!(!e.text_changed);
    assert_eq!(snapshot(w.sys()), before, "every byte as it was");
}

/// `/proc/self/mem` writes fail from the `from`-th on, for good (or, `lying`, the `from`-th
/// fails and every later one says it wrote and does nothing: `TextSys` lets a write say so,
/// not a read).
struct FailingFrom {
    inner: Sim,
    from: usize,
    calls: std::cell::Cell<usize>,
    lying: bool,
}

// SAFETY: the simulation's answers, or a failure.
unsafe impl TextSys for FailingFrom {
    fn maps(&self) -> Result<Vec<Mapping>, alt_runtime::writer::WriteError> {
        self.inner.maps()
    }
    unsafe fn protect(&self, range: std::ops::Range<u64>, prot: i32) -> Result<(), i32> {
        // SAFETY: a simulation; the caller's contract passes through.
        unsafe { self.inner.protect(range, prot) }
    }
    unsafe fn copy(&self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        // SAFETY: a simulation; the caller's contract passes through.
        unsafe { self.inner.copy(addr, bytes) }
    }
    unsafe fn mem_write(&self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        self.calls.set(self.calls.get() + 1);
        if self.lying && self.calls.get() > self.from {
            return Ok(());
        }
        if self.calls.get() >= self.from {
            return Err(libc::EIO);
        }
        // SAFETY: a simulation; the caller's contract passes through.
        unsafe { self.inner.mem_write(addr, bytes) }
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        self.inner.read(addr, buf)
    }
}

#[test]
fn a_roll_back_that_fails_says_the_text_changed() {
    // Strict W^X: every run through /proc/self/mem. The write of page 3's run fails, and so does
    // every write after it: the runs already written cannot be restored, and the error must say
    // so (a caller that believed the text unchanged would run half-patched code unawares).
    // The same when the roll back's writes say they were done and were not: the writer reads
    // the runs back before it says the text is as before.
    for lying in [false, true] {
        let s = FailingFrom {
            inner: sim(),
            from: 4,
            calls: std::cell::Cell::new(0),
            lying,
        };
        let mut w = MprotectWriter::with_sys(s).through_proc_self_mem();
        let before = snapshot(w.sys());
        let e = write_all(&mut w, &chunks()).unwrap_err();
        assert_eq!(e.addr, SIM + 4 * PAGE - 1);
        assert!(e.text_changed, "lying {lying}: {e}");
        assert!(e.to_string().contains("could not be fully restored"), "{e}");
        assert_ne!(snapshot(w.sys()), before, "the first runs stay written");
    }
}
