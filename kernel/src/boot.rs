//! From the multiboot loader to `kmain`: the multiboot header, 32-bit entry, the switch to long
//! mode, and the boot page tables.
//!
//! qemu's multiboot loader refuses 64-bit ELF files unless the header carries the "a.out kludge"
//! (flag bit 16) with explicit load addresses, so the header names them: the loader copies the
//! file from `__load_start` to `__load_end`, zeroes up to `__bss_end` and jumps to `_start32` in
//! 32-bit protected mode with paging off, `eax` = the multiboot magic and `ebx` = the address of
//! the multiboot information.
//!
//! `_start32` identity-maps the first GiB with 2 MiB pages (the tables below, in `.bss`), enables
//! PAE, long mode and paging (with CR0.WP, so that read-only pages bind the kernel too), loads a
//! 64-bit GDT, far-jumps to 64-bit code, enables SSE and (where CPUID offers it) the XSAVE state
//! for AVX, and calls `kmain(magic, info)`. [`crate::paging`] later replaces the first 8 MiB of
//! that map with 4 KiB pages carrying real permissions.

use core::cell::UnsafeCell;

/// One page-table page (PML4, PDPT, PD or PT): 512 entries.
#[repr(C, align(4096))]
pub struct Table(pub UnsafeCell<[u64; 512]>);

// SAFETY: page tables are written only by the boot CPU, before any other CPU runs, or with the
// writes ordered by the caller (see crate::paging).
unsafe impl Sync for Table {}

impl Table {
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; 512]))
    }

    /// Address of the table (identity-mapped: also its physical address).
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// Reads entry `i`.
    pub fn get(&self, i: usize) -> u64 {
        // SAFETY: `i` is checked by the slice index; the table is plain memory; a volatile read
        // keeps the compiler from caching entries the MMU may have changed (accessed/dirty).
        unsafe { core::ptr::read_volatile(&(*self.0.get())[i]) }
    }

    /// Writes entry `i`. The caller flushes the TLB as the change requires.
    pub fn set(&self, i: usize, value: u64) {
        // SAFETY: as in `get`; volatile so that the store reaches memory before the MMU walks.
        unsafe { core::ptr::write_volatile(&mut (*self.0.get())[i], value) }
    }
}

/// The top-level table (CR3).
#[no_mangle]
pub static BOOT_PML4: Table = Table::new();
/// PML4[0]: the first 512 GiB.
#[no_mangle]
pub static BOOT_PDPT: Table = Table::new();
/// PDPT[0]: the first GiB, 2 MiB pages (identity), until crate::paging refines it.
#[no_mangle]
pub static BOOT_PD: Table = Table::new();

/// Size of the boot stack.
pub const STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(16))]
pub struct Stack(pub UnsafeCell<[u8; STACK_SIZE]>);
// SAFETY: the boot stack is used by the boot CPU only.
unsafe impl Sync for Stack {}

/// The boot CPU's stack.
#[no_mangle]
pub static BOOT_STACK: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));

/// Stack size of each application processor.
pub const AP_STACK_SIZE: usize = 64 * 1024;
/// Application processors this kernel can start.
pub const MAX_APS: usize = 7;
/// Where the real-mode trampoline is copied (page-aligned, below 1 MiB: the SIPI vector is its
/// page number).
pub const AP_TRAMPOLINE_ADDR: usize = 0x8000;

/// The application processors' stacks, one after the other.
#[no_mangle]
pub static AP_STACKS: ApStacks = ApStacks(UnsafeCell::new([0; AP_STACK_SIZE * MAX_APS]));

#[repr(C, align(16))]
pub struct ApStacks(pub UnsafeCell<[u8; AP_STACK_SIZE * MAX_APS]>);
// SAFETY: each AP takes its own stack by index (AP_STARTED, counted atomically).
unsafe impl Sync for ApStacks {}

/// Number of application processors that reached 64-bit code (each takes its index from it).
#[no_mangle]
pub static AP_STARTED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// Extra EFER bits the APs set (NXE when the page tables use NX).
#[no_mangle]
pub static AP_EFER_EXTRA: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

core::arch::global_asm!(
    r#"
    .macro ENABLE_SIMD
    /* SSE: CR0.EM = 0, CR0.MP = 1; CR4.OSFXSR | CR4.OSXMMEXCPT. */
    mov %cr0, %rax
    and $~(1 << 2), %rax
    or $(1 << 1), %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $((1 << 9) | (1 << 10)), %rax
    mov %rax, %cr4

    /* XSAVE and AVX state where CPUID offers them (cpuid clobbers eax, ebx, ecx, edx). */
    mov $1, %eax
    cpuid
    bt $26, %ecx                         /* XSAVE */
    jnc 8f
    mov %cr4, %rax
    or $(1 << 18), %rax                  /* OSXSAVE */
    mov %rax, %cr4
    mov $0xD, %eax
    xor %ecx, %ecx
    cpuid                                /* eax: XCR0 bits the CPU supports */
    and $7, %eax                         /* x87 | SSE | AVX, as far as supported */
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
8:
    .endm

    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00010000            /* bit 16: the address fields below are valid */

    .section .multiboot, "a"
    .balign 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header                      /* header_addr */
    .long __load_start                   /* load_addr */
    .long __load_end                     /* load_end_addr */
    .long __bss_end                      /* bss_end_addr */
    .long _start32                       /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .globl _start32
_start32:
    cli
    cld
    mov $(BOOT_STACK + {stack_size}), %esp
    mov %eax, %edi                       /* kmain's first argument: the magic */
    mov %ebx, %esi                       /* second: the multiboot information */

    /* PML4[0] -> PDPT, PDPT[0] -> PD (present, writable). */
    mov $BOOT_PDPT, %eax
    or $3, %eax
    mov %eax, BOOT_PML4
    mov $BOOT_PD, %eax
    or $3, %eax
    mov %eax, BOOT_PDPT

    /* PD[i] = i * 2 MiB | present | writable | page size. */
    xor %ecx, %ecx
.Lfill_pd:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, BOOT_PD(,%ecx,8)
    movl $0, BOOT_PD+4(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne .Lfill_pd

    mov $BOOT_PML4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax                   /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx                /* EFER */
    rdmsr
    or $(1 << 8), %eax                   /* LME */
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax  /* PG, WP, PE */
    mov %eax, %cr0

    lgdt gdt_pointer
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs

    ENABLE_SIMD
    and $-16, %rsp
    call kmain
.Lhalt:
    cli
    hlt
    jmp .Lhalt

    /* Application processors: the trampoline (crate::smp copies it to AP_TRAMPOLINE_ADDR, below
     * 1 MiB) switches to 32-bit protected mode without paging and jumps here, to code in the
     * boot page, which is mapped executable. */
    .code32
ap_start32:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $BOOT_PML4, %eax                 /* the boot CPU's tables, already refined */
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax                   /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx                /* EFER */
    rdmsr
    or $(1 << 8), %eax                   /* LME */
    or AP_EFER_EXTRA, %eax               /* NXE if the boot CPU uses NX pages */
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax  /* PG, WP, PE */
    mov %eax, %cr0
    ljmp $0x08, $ap_long_mode

    .code64
ap_long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $1, %eax
    lock xadd %eax, AP_STARTED           /* eax: how many APs started before this one */
    inc %eax                             /* this CPU's index: 1, 2, ... */
    mov %eax, %r12d
    mov %eax, %ecx
    imul ${ap_stack_size}, %rcx
    lea AP_STACKS(%rip), %rsp
    add %rcx, %rsp                       /* top of stack number (index - 1) */
    ENABLE_SIMD
    mov %r12d, %edi
    and $-16, %rsp
    call ap_main
    jmp .Lhalt

    /* The real-mode trampoline, assembled here and copied below 1 MiB: it runs at
     * AP_TRAMPOLINE_ADDR with CS = AP_TRAMPOLINE_ADDR >> 4, IP = 0. */
    .section .rodata
    .code16
    .globl AP_TRAMPOLINE, AP_TRAMPOLINE_END
AP_TRAMPOLINE:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl {tramp} + (ap_gdt_pointer - AP_TRAMPOLINE)
    mov %cr0, %eax
    or $1, %eax                          /* PE */
    mov %eax, %cr0
    ljmpl $0x18, $ap_start32
    .balign 8
ap_gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt
AP_TRAMPOLINE_END:
    .code64

    .section .rodata
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF             /* 0x08: 64-bit code (accessed: the GDT page becomes read-only) */
    .quad 0x00CF93000000FFFF             /* 0x10: data (accessed) */
    .quad 0x00CF9B000000FFFF             /* 0x18: 32-bit code, for the AP trampoline (accessed) */
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt
    .text
"#,
    stack_size = const STACK_SIZE,
    ap_stack_size = const AP_STACK_SIZE,
    tramp = const AP_TRAMPOLINE_ADDR,
    options(att_syntax)
);
