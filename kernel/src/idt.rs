//! CPU exceptions: every vector 0-31 prints what happened and leaves qemu with
//! [`ExitCode::Exception`], so that a wrong patch (`#UD`), a write to read-only text (`#PF`) or
//! any other fault is a clear failure, never a silent reboot.

use core::cell::UnsafeCell;

use crate::io::{exit, ExitCode};

core::arch::global_asm!(
    r#"
    .text
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
exception_\n:
    pushq $0                             /* no error code: push one for a uniform frame */
    pushq $\n
    jmp exception_common
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
exception_\n:
    pushq $\n
    jmp exception_common
    .endr
exception_common:
    mov %rsp, %rdi                       /* &ExceptionFrame */
    and $-16, %rsp
    call kernel_exception
    ud2

    .section .rodata
    .balign 8
    .globl EXCEPTION_STUBS
EXCEPTION_STUBS:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_\n
    .endr
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static EXCEPTION_STUBS: [u64; 32];
}

/// What the stubs push, followed by what the CPU pushed.
#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 64]>);
// SAFETY: written once by the boot CPU before `lidt`; read only by the CPU afterwards.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 64]));

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Fills the IDT and loads it on this CPU. Other CPUs call [`load`].
pub fn install() {
    let idt = IDT.0.get();
    // SAFETY: EXCEPTION_STUBS is a 32-entry table of code addresses defined above.
    let stubs = unsafe { &EXCEPTION_STUBS };
    for (v, &handler) in stubs.iter().enumerate() {
        // 64-bit interrupt gate: selector 0x08, present, DPL 0, type 0xE.
        let low = (handler & 0xffff)
            | (0x08 << 16)
            | (0x8e00u64 << 32)
            | ((handler >> 16) & 0xffff) << 48;
        let high = handler >> 32;
        // SAFETY: IDT is this module's own table; entries are written before lidt makes the CPU
        // read them, by one CPU at a time.
        unsafe {
            (*idt)[2 * v] = low;
            (*idt)[2 * v + 1] = high;
        }
    }
    load();
}

/// Loads the IDT on this CPU (after [`install`] filled it).
pub fn load() {
    let idt = IDT.0.get();
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (64 * 8 - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT above is complete and lives for the whole run; every gate points at a
    // stub in this kernel's text.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags))
    };
}

/// Called by the stubs with interrupts off; never returns.
#[no_mangle]
extern "C" fn kernel_exception(frame: &ExceptionFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
    };
    let v = frame.vector as usize;
    crate::println!(
        "exception {} ({}) error {:#x} rip {:#x} rsp {:#x} cr2 {:#x}",
        v,
        NAMES.get(v).copied().unwrap_or("?"),
        frame.error,
        frame.rip,
        frame.rsp,
        cr2
    );
    let _ = (frame.cs, frame.rflags, frame.ss);
    exit(ExitCode::Exception)
}
