//! A second CPU (and more): INIT-SIPI-SIPI through the local APIC, each application processor
//! reporting its descriptor to the [`CpuRegistry`], and the rendezvous around patching.
//!
//! The boot CPU learns how many CPUs qemu has from its fw_cfg device, copies the real-mode
//! trampoline (boot.rs) below 1 MiB and starts the others. Each reports its descriptor and runs
//! the workload once unpatched, then waits. Patching is a rendezvous, as Linux's `stop_machine`:
//! the boot CPU raises [`Phase::Patching`], waits until every other CPU has arrived and spins in
//! code that holds no site, writes, and raises [`Phase::Patched`]; each waiting CPU then
//! serialises (`cpuid`) before it runs patched code again, and runs the workload once more.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use alloc::vec::Vec;
use alt::cpu::CpuDescriptor;
use alt::policy::{CpuRegistry, LateCpuPolicy, RegistryError};
use alt::rendezvous::RendezvousError;
use alt::CapabilitySet;

use crate::boot::{AP_EFER_EXTRA, AP_STARTED, AP_TRAMPOLINE_ADDR, MAX_APS};
use crate::paging::{self, LOCAL_APIC};

/// A spin lock: the registry is not synchronised, CPUs report under this lock.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `with`, which holds the lock.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held: no other reference to the value exists until it is released.
        let r = f(unsafe { &mut *self.value.get() });
        self.locked.store(false, Ordering::Release);
        r
    }
}

/// Every CPU's descriptor; the boot CPU finalizes it before patching.
pub static REGISTRY: SpinLock<CpuRegistry<8>> =
    SpinLock::new(CpuRegistry::new(LateCpuPolicy::MustMatch));

/// Where the patching rendezvous stands.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    /// Before patching: APs start, report and run the workload unpatched.
    Boot = 0,
    /// The boot CPU wants to write: every AP comes to the rendezvous and spins.
    Patching = 1,
    /// Written: each AP serialises and continues.
    Patched = 2,
}

static PHASE: AtomicU32 = AtomicU32::new(Phase::Boot as u32);
/// APs that reported (or failed to: see REPORT_ERRORS).
static REPORTED: AtomicU32 = AtomicU32::new(0);
static REPORT_ERRORS: AtomicU32 = AtomicU32::new(0);
/// APs waiting at the rendezvous.
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// APs that serialised after patching and ran the workload again.
static FINISHED: AtomicU32 = AtomicU32::new(0);

/// Per-AP results: checksum before and after patching.
static BEFORE: [AtomicU64; MAX_APS] = [const { AtomicU64::new(0) }; MAX_APS];
static AFTER: [AtomicU64; MAX_APS] = [const { AtomicU64::new(0) }; MAX_APS];

fn outw(port: u16, value: u16) {
    // SAFETY: selects a fw_cfg item; I/O port writes have no effect on memory.
    unsafe {
        core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: reads the selected fw_cfg item's next byte; no effect on memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// The number of CPUs qemu was started with (`-smp N`), from fw_cfg; 1 without fw_cfg.
pub fn qemu_cpu_count() -> u32 {
    const SELECT: u16 = 0x510;
    const DATA: u16 = 0x511;
    outw(SELECT, 0x0000); // signature
    let sig = [inb(DATA), inb(DATA), inb(DATA), inb(DATA)];
    if &sig != b"QEMU" {
        return 1;
    }
    outw(SELECT, 0x0005); // FW_CFG_NB_CPUS, 16-bit little-endian
    let n = u32::from(inb(DATA)) | u32::from(inb(DATA)) << 8;
    n.max(1)
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: `reg` is a local APIC register offset; the APIC page is mapped uncached
    // (paging::map_local_apic).
    unsafe { core::ptr::read_volatile((LOCAL_APIC + reg) as *const u32) }
}

fn apic_write(reg: u64, value: u32) {
    // SAFETY: as in apic_read; writing the registers used here (SVR, ICR) sends IPIs and
    // enables the APIC, nothing else.
    unsafe { core::ptr::write_volatile((LOCAL_APIC + reg) as *mut u32, value) }
}

const APIC_SVR: u64 = 0xF0;
const APIC_ICR_LOW: u64 = 0x300;
const APIC_ICR_HIGH: u64 = 0x310;

/// Sends an IPI to the CPU whose local APIC id is `apic_id` and waits until it is delivered.
fn ipi(apic_id: u32, low: u32) {
    apic_write(APIC_ICR_HIGH, apic_id << 24);
    apic_write(APIC_ICR_LOW, low);
    while apic_read(APIC_ICR_LOW) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

fn spin(iterations: u64) {
    for _ in 0..iterations {
        core::hint::spin_loop();
    }
}

extern "C" {
    static AP_TRAMPOLINE: u8;
    static AP_TRAMPOLINE_END: u8;
}

/// Maps the local APIC and copies the trampoline below 1 MiB: once, before the first CPU is
/// started.
fn prepare_startup() {
    paging::map_local_apic();
    apic_write(APIC_SVR, apic_read(APIC_SVR) | 0x100 | 0xFF); // software-enable, spurious 0xff
    if paging::nx_bit() != 0 {
        AP_EFER_EXTRA.store(1 << 11, Ordering::Relaxed);
    }
    // SAFETY: AP_TRAMPOLINE..AP_TRAMPOLINE_END is the trampoline's code in .rodata; the target
    // page below 1 MiB is identity-mapped writable and used by nothing else.
    unsafe {
        let start = &AP_TRAMPOLINE as *const u8;
        let len = (&AP_TRAMPOLINE_END as *const u8).offset_from(start) as usize;
        assert!(len <= 4096);
        core::ptr::copy_nonoverlapping(start, AP_TRAMPOLINE_ADDR as *mut u8, len);
    }
}

/// INIT-SIPI-SIPI to one CPU; waits until it reaches 64-bit code (it then takes index
/// `AP_STARTED + 1`). Returns whether it did.
fn start_cpu(apic_id: u32) -> bool {
    const INIT: u32 = (0b101 << 8) | (1 << 14);
    const STARTUP: u32 = (0b110 << 8) | (1 << 14);
    let vector = (AP_TRAMPOLINE_ADDR >> 12) as u32;
    let before = AP_STARTED.load(Ordering::Acquire);
    ipi(apic_id, INIT);
    spin(100_000);
    ipi(apic_id, STARTUP | vector);
    spin(10_000);
    if AP_STARTED.load(Ordering::Acquire) == before {
        ipi(apic_id, STARTUP | vector);
    }
    for _ in 0..200_000_000u64 {
        if AP_STARTED.load(Ordering::Acquire) > before {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Starts the CPUs with local APIC ids `1..=aps` (qemu numbers them 0, 1, ... in `-smp`
/// order), one after the other so that each one's index is its APIC id, and waits until each
/// has reported its descriptor. CPUs above `aps` stay in wait-for-SIPI. Returns how many
/// reported.
pub fn start_aps(aps: u32) -> Result<u32, &'static str> {
    if aps == 0 {
        return Ok(0);
    }
    if aps as usize > MAX_APS {
        return Err("more CPUs than this kernel has AP stacks for");
    }
    prepare_startup();
    EARLY_APS.store(aps, Ordering::Release);
    for id in 1..=aps {
        if !start_cpu(id) {
            return Err("an application processor did not start");
        }
    }
    for _ in 0..200_000_000u64 {
        if REPORTED.load(Ordering::Acquire) >= aps {
            break;
        }
        core::hint::spin_loop();
    }
    let reported = REPORTED.load(Ordering::Acquire);
    if REPORT_ERRORS.load(Ordering::Acquire) != 0 {
        return Err("an application processor's report was refused");
    }
    Ok(reported)
}

/// What a CPU started after patching came to.
#[derive(Clone, Copy)]
pub enum LateOutcome {
    /// The registry accepted it; it serialised and ran the workload on the patched text.
    Accepted {
        /// Its descriptor, as reported (test knobs applied).
        desc: CpuDescriptor,
        /// The workload's checksum on this CPU.
        checksum: u64,
    },
    /// The registry refused it; it is parked (`cli; hlt`) and ran no patched code.
    Refused {
        /// Its descriptor, as reported (test knobs applied).
        desc: CpuDescriptor,
        /// Why.
        error: RegistryError,
    },
}

/// Test knobs for late CPUs (`alt.test=late-cpu-lacks=CAP`, `alt.test=late-cpu-needs=CAP`):
/// capabilities removed from, and added to, a late CPU's descriptor before it reports,
/// simulating a CPU unlike the others (qemu gives every CPU the same model).
#[derive(Clone, Copy, Default)]
pub struct LateCpuTest {
    /// Removed from the descriptor.
    pub lacks: CapabilitySet,
    /// Added to the descriptor.
    pub needs: CapabilitySet,
}

/// The knobs the boot CPU set for late CPUs.
pub static LATE_TEST: SpinLock<LateCpuTest> = SpinLock::new(LateCpuTest {
    lacks: CapabilitySet::new(alt::Features::empty(), alt::Errata::empty()),
    needs: CapabilitySet::new(alt::Features::empty(), alt::Errata::empty()),
});

/// Number of CPUs started before patching (besides the boot CPU); later indices are late.
static EARLY_APS: AtomicU32 = AtomicU32::new(0);
/// The outcome of the late CPU being started.
static LATE_OUTCOME: SpinLock<Option<LateOutcome>> = SpinLock::new(None);

/// Starts the CPU with local APIC id `apic_id` after patching and waits until the registry has
/// accepted it (and it ran the workload) or refused it (and it parked).
pub fn start_late_cpu(apic_id: u32) -> Result<LateOutcome, &'static str> {
    if apic_id as usize > MAX_APS {
        return Err("more CPUs than this kernel has AP stacks for");
    }
    if EARLY_APS.load(Ordering::Acquire) == 0 {
        prepare_startup();
    }
    LATE_OUTCOME.with(|o| *o = None);
    if !start_cpu(apic_id) {
        return Err("the late CPU did not start");
    }
    for _ in 0..200_000_000u64 {
        if let Some(o) = LATE_OUTCOME.with(|o| *o) {
            return Ok(o);
        }
        core::hint::spin_loop();
    }
    Err("the late CPU did not report")
}

/// A CPU started after patching: it reports to the finalized registry, which checks it under
/// its [`LateCpuPolicy`]. Refused, it parks without touching a site; accepted, it serialises and
/// runs the workload on the patched text.
fn late_cpu(index: u32) -> ! {
    let mut desc = CpuDescriptor::probe_native(index);
    let test = LATE_TEST.with(|t| *t);
    desc.features &= !test.lacks.features;
    desc.errata &= !test.lacks.errata;
    desc.features |= test.needs.features;
    desc.errata |= test.needs.errata;
    match REGISTRY.with(|r| r.report(desc)) {
        Err(error) => {
            LATE_OUTCOME.with(|o| *o = Some(LateOutcome::Refused { desc, error }));
            park()
        }
        Ok(()) => {
            // This CPU never ran the text before, but serialise as every CPU does before it
            // runs code another CPU wrote.
            alt::x86_64::serialize();
            let checksum = crate::work::run();
            LATE_OUTCOME.with(|o| *o = Some(LateOutcome::Accepted { desc, checksum }));
            park()
        }
    }
}

fn park() -> ! {
    loop {
        // SAFETY: interrupts are off; this CPU has nothing left to do.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Entry of every application processor, from boot.rs, with its index (1, 2, ...).
#[no_mangle]
extern "C" fn ap_main(index: u32) -> ! {
    crate::idt::load();
    if index > EARLY_APS.load(Ordering::Acquire) {
        late_cpu(index)
    }
    let desc = CpuDescriptor::probe_native(index);
    let ok: Result<(), RegistryError> = REGISTRY.with(|r| r.report(desc));
    if ok.is_err() {
        REPORT_ERRORS.fetch_add(1, Ordering::Release);
    }
    let slot = index as usize - 1;
    BEFORE[slot].store(crate::work::run(), Ordering::Relaxed);
    REPORTED.fetch_add(1, Ordering::Release);

    // The rendezvous: nothing below runs a site until the boot CPU says the text is written
    // and this CPU has serialised.
    while PHASE.load(Ordering::Acquire) != Phase::Patching as u32 {
        core::hint::spin_loop();
    }
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    while PHASE.load(Ordering::Acquire) != Phase::Patched as u32 {
        core::hint::spin_loop();
    }
    alt::x86_64::serialize();
    AFTER[slot].store(crate::work::run(), Ordering::Relaxed);
    FINISHED.fetch_add(1, Ordering::Release);
    park()
}

/// Brings every AP to the rendezvous; returns when all `aps` spin there.
pub fn enter_rendezvous(aps: u32) {
    PHASE.store(Phase::Patching as u32, Ordering::Release);
    while ARRIVED.load(Ordering::Acquire) < aps {
        core::hint::spin_loop();
    }
}

/// The driver's rendezvous: the APs spin in code that holds no site while the boot CPU writes.
pub struct Rendezvous {
    aps: u32,
    /// Each AP's checksums `(index, before, after)`, once released.
    pub results: Vec<(u32, u64, u64)>,
}

impl Rendezvous {
    /// A rendezvous of the boot CPU with `aps` started APs.
    pub fn new(aps: u32) -> Self {
        Self {
            aps,
            results: Vec::new(),
        }
    }
}

// SAFETY: `stop` returns once every AP has arrived in `ap_main`'s wait loop, which holds no site
// and runs no patched code until `release` raises `Phase::Patched`; each AP then serialises
// (`cpuid`) before it runs the workload again.
unsafe impl alt::rendezvous::Rendezvous for Rendezvous {
    fn stop(&mut self, _sites: &dyn alt::rendezvous::Spans) -> Result<(), RendezvousError> {
        enter_rendezvous(self.aps);
        Ok(())
    }

    fn release(&mut self) {
        self.results = leave_rendezvous(self.aps).collect();
    }
}

/// Releases the APs after writing and waits until each has serialised and run the workload
/// again. Returns each AP's checksums `(index, before, after)`.
pub fn leave_rendezvous(aps: u32) -> impl Iterator<Item = (u32, u64, u64)> {
    PHASE.store(Phase::Patched as u32, Ordering::Release);
    while FINISHED.load(Ordering::Acquire) < aps {
        core::hint::spin_loop();
    }
    (0..aps as usize).map(|i| {
        (
            i as u32 + 1,
            BEFORE[i].load(Ordering::Relaxed),
            AFTER[i].load(Ordering::Relaxed),
        )
    })
}
