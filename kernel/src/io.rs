//! Port I/O: the serial port (COM1, qemu `-serial stdio`) and qemu's `isa-debug-exit` device.

use core::fmt;

const COM1: u16 = 0x3f8;
/// I/O port of `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
const DEBUG_EXIT: u16 = 0xf4;

/// qemu exits with `(code << 1) | 1`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum ExitCode {
    /// Every check passed: qemu exits with 33.
    Success = 0x10,
    /// A check failed or the kernel panicked: qemu exits with 35.
    Failure = 0x11,
    /// A CPU exception: qemu exits with 37.
    Exception = 0x12,
}

fn outb(port: u16, value: u8) {
    // SAFETY: writes one byte to an I/O port; the kernel runs at CPL 0 and the ports used here
    // (COM1, isa-debug-exit) have no effect on memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reads one byte from an I/O port (COM1's registers); no effect on memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Sets COM1 to 115200 baud, 8N1, FIFOs on, interrupts off.
pub fn serial_init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on, cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
}

fn serial_byte(b: u8) {
    // Wait for the transmit holding register to be empty (bounded: qemu is always ready).
    for _ in 0..100_000 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1, b);
}

/// Writes to the serial port.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial_byte(b'\r');
            }
            serial_byte(b);
        }
        Ok(())
    }
}

/// Prints to the serial port.
#[macro_export]
macro_rules! print {
    ($($t:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::io::Serial, format_args!($($t)*));
    }};
}

/// Prints a line to the serial port.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($t:tt)*) => {{
        $crate::print!($($t)*);
        $crate::print!("\n");
    }};
}

/// Leaves qemu through isa-debug-exit; halts forever if the device is absent.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: writes a 32-bit value to the isa-debug-exit port, which makes qemu exit; without
    // the device the write is ignored.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") DEBUG_EXIT, in("eax") code as u32, options(nomem, nostack, preserves_flags))
    };
    loop {
        // SAFETY: interrupts are off; hlt just stops this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
