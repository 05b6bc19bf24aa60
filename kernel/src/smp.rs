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

use alt::cpu::CpuDescriptor;
use alt::policy::{CpuRegistry, LateCpuPolicy, RegistryError};

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

/// Sends an IPI to every CPU but this one and waits until it is delivered.
fn ipi_all_but_self(low: u32) {
    const ALL_EXCLUDING_SELF: u32 = 0b11 << 18;
    apic_write(APIC_ICR_HIGH, 0);
    apic_write(APIC_ICR_LOW, ALL_EXCLUDING_SELF | low);
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

/// Starts every other CPU (`cpus - 1` of them) and waits until each has reported its
/// descriptor. Returns how many reported.
pub fn start_aps(cpus: u32) -> Result<u32, &'static str> {
    let aps = cpus - 1;
    if aps == 0 {
        return Ok(0);
    }
    if aps as usize > MAX_APS {
        return Err("more CPUs than this kernel has AP stacks for");
    }
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
    const INIT: u32 = (0b101 << 8) | (1 << 14);
    const STARTUP: u32 = (0b110 << 8) | (1 << 14);
    let vector = (AP_TRAMPOLINE_ADDR >> 12) as u32;
    ipi_all_but_self(INIT);
    spin(100_000);
    ipi_all_but_self(STARTUP | vector);
    spin(10_000);
    if AP_STARTED.load(Ordering::Acquire) < aps {
        ipi_all_but_self(STARTUP | vector);
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

/// Entry of every application processor, from boot.rs, with its index (1, 2, ...).
#[no_mangle]
extern "C" fn ap_main(index: u32) -> ! {
    crate::idt::load();
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
    alt::writer::serialize();
    AFTER[slot].store(crate::work::run(), Ordering::Relaxed);
    FINISHED.fetch_add(1, Ordering::Release);
    loop {
        // SAFETY: interrupts are off; this CPU has nothing left to do.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Brings every AP to the rendezvous; returns when all `aps` spin there.
pub fn enter_rendezvous(aps: u32) {
    PHASE.store(Phase::Patching as u32, Ordering::Release);
    while ARRIVED.load(Ordering::Acquire) < aps {
        core::hint::spin_loop();
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
