//! What the C library would provide: `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` (the
//! compiler emits calls to them; on the host target `compiler_builtins` leaves them to libc),
//! and a bump allocator over a static array for the runtime's plans and reports.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

// Written in assembly so that the compiler cannot turn their loops back into calls to
// themselves. The direction flag is clear on entry (System V ABI) and on return.
core::arch::global_asm!(
    r#"
    .text
    .globl memcpy
    .type memcpy, @function
memcpy:
    mov %rdi, %rax
    mov %rdx, %rcx
    rep movsb
    ret

    .globl memset
    .type memset, @function
memset:
    mov %rdi, %r9
    mov %esi, %eax
    mov %rdx, %rcx
    rep stosb
    mov %r9, %rax
    ret

    .globl memmove
    .type memmove, @function
memmove:
    mov %rdi, %rax
    mov %rdx, %rcx
    cmp %rsi, %rdi
    jbe .Lmemmove_forward
    lea -1(%rsi,%rdx), %rsi
    lea -1(%rdi,%rdx), %rdi
    std
    rep movsb
    cld
    ret
.Lmemmove_forward:
    rep movsb
    ret

    .globl memcmp
    .type memcmp, @function
    .globl bcmp
    .type bcmp, @function
memcmp:
bcmp:
    xor %eax, %eax
    test %rdx, %rdx
    jz .Lmemcmp_done
.Lmemcmp_loop:
    movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    sub %ecx, %eax
    jnz .Lmemcmp_done
    inc %rdi
    inc %rsi
    dec %rdx
    jnz .Lmemcmp_loop
.Lmemcmp_done:
    ret
"#,
    options(att_syntax)
);

const HEAP_SIZE: usize = 2 << 20;

#[repr(C, align(4096))]
struct Heap(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the heap's bytes are handed out by the allocator, each range to one owner.
unsafe impl Sync for Heap {}

static HEAP: Heap = Heap(UnsafeCell::new([0; HEAP_SIZE]));

/// Hands out the heap from the bottom up and never reuses memory: the kernel allocates a few
/// plans and reports, then exits.
pub struct Bump {
    used: AtomicUsize,
}

impl Bump {
    pub const fn new() -> Self {
        Self {
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes handed out so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

// SAFETY: every allocation is a distinct, suitably aligned range inside HEAP (the compare-and-swap
// gives each caller its own range), and ranges are never handed out twice.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = HEAP.0.get() as usize;
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(layout.align());
            let Some(end) = start.checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if end > base + HEAP_SIZE {
                return core::ptr::null_mut();
            }
            match self.used.compare_exchange_weak(
                used,
                end - base,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return start as *mut u8,
                Err(now) => used = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}
