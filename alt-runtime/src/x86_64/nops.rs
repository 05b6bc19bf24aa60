//! x86-64 NOP padding: the recommended multi-byte NOPs and the filler for the unused tail of a
//! patched site.
//!
//! A site that is longer than the code written into it is padded so the CPU runs straight through
//! to the instruction after the site. Short runs are filled with the longest recommended NOPs
//! (at most [`MAX_NOP_LEN`] bytes each). Long runs would make the CPU decode many NOPs, so a run
//! longer than [`MAX_NOP_RUN`] bytes starts with a `jmp` to the end of the run and the bytes it
//! skips are `int3` (`0xcc`), which stops straight-line speculation into them:
//!
//! | run length `n`             | filler                                              |
//! |----------------------------|-----------------------------------------------------|
//! | `0`                        | nothing                                             |
//! | `1..=MAX_NOP_RUN` (22)     | NOPs, longest first: 11, 11, ..., the remainder     |
//! | `23..=129`                 | `eb rel8` (2 bytes, `rel8 = n - 2`), then `int3`s     |
//! | `130..`                    | `e9 rel32` (5 bytes, `rel32 = n - 5`), then `int3`s   |
//!
//! Runs too long for one `rel32` (more than 2 GiB) are filled piecewise. Every result decodes into
//! whole instructions ending exactly at the end of the buffer.
//!
//! ```
//! use alt_runtime::x86_64::nops;
//!
//! let mut buf = [0u8; 13];
//! nops::fill(&mut buf);
//! assert_eq!(&buf[..11], nops::nop(11).unwrap());
//! assert_eq!(&buf[11..], nops::nop(2).unwrap());
//! assert!(nops::is_fill(&buf));
//!
//! let mut long = [0u8; 40];
//! nops::fill(&mut long);
//! assert_eq!(&long[..2], &[0xeb, 38]);
//! assert!(long[2..].iter().all(|&b| b == 0xcc));
//! ```

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use super::insn;

/// Length of the longest recommended NOP, in bytes.
pub const MAX_NOP_LEN: usize = 11;

/// Longest run that [`fill`] pads with NOPs; longer runs start with a `jmp` over `int3`s.
pub const MAX_NOP_RUN: usize = 2 * MAX_NOP_LEN;

/// `int3`, the byte skipped-over padding is made of.
pub const INT3: u8 = 0xcc;

/// Longest run a single `jmp rel8` covers: the 2-byte jump plus 127 skipped bytes.
const MAX_JMP8_RUN: usize = 2 + i8::MAX as usize;

/// Longest run a single `jmp rel32` covers: the 5-byte jump plus `i32::MAX` skipped bytes.
const MAX_JMP32_RUN: usize = 5 + i32::MAX as usize;

/// The recommended NOPs, indexed by length (index 0 is unused).
const NOPS: [&[u8]; MAX_NOP_LEN + 1] = [
    &[],
    // nop
    &[0x90],
    // xchg ax, ax
    &[0x66, 0x90],
    // nop dword [rax]
    &[0x0f, 0x1f, 0x00],
    // nop dword [rax + 0]
    &[0x0f, 0x1f, 0x40, 0x00],
    // nop dword [rax + rax*1 + 0]
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    // nop word [rax + rax*1 + 0]
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    // nop dword [rax + 0] (disp32)
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    // nop dword [rax + rax*1 + 0] (disp32)
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    // nop word [rax + rax*1 + 0] (disp32)
    &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    // nop word cs:[rax + rax*1 + 0] (disp32)
    &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    // nop word cs:[rax + rax*1 + 0] (disp32), with a second operand-size prefix
    &[
        0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
    ],
];

/// The recommended NOP of exactly `len` bytes, for `len` in `1..=MAX_NOP_LEN`; `None` otherwise.
///
/// ```
/// use alt_runtime::x86_64::nops::nop;
///
/// assert_eq!(nop(1), Some(&[0x90][..]));
/// assert_eq!(nop(5), Some(&[0x0f, 0x1f, 0x44, 0x00, 0x00][..]));
/// assert_eq!(nop(0), None);
/// assert_eq!(nop(12), None);
/// ```
pub fn nop(len: usize) -> Option<&'static [u8]> {
    if len == 0 {
        return None;
    }
    NOPS.get(len).copied()
}

/// Fills `buf` with padding that runs straight through to the byte after it.
///
/// See the [module documentation](self) for the exact bytes: NOPs (longest first) for runs of up
/// to [`MAX_NOP_RUN`] bytes, a `jmp` to the end over `int3`s for longer runs.
pub fn fill(buf: &mut [u8]) {
    for run in buf.chunks_mut(MAX_JMP32_RUN) {
        fill_run(run);
    }
}

/// Fills one run of at most [`MAX_JMP32_RUN`] bytes.
fn fill_run(run: &mut [u8]) {
    let n = run.len();
    if n <= MAX_NOP_RUN {
        fill_nops(run);
    } else if n <= MAX_JMP8_RUN {
        let (jmp, rest) = run.split_at_mut(2);
        // `n - 2` is at most 127 here.
        jmp.copy_from_slice(&[0xeb, (n - 2) as u8]);
        rest.fill(INT3);
    } else {
        let (jmp, rest) = run.split_at_mut(5);
        // `n - 5` is at most `i32::MAX` here, so it fits in the (positive) rel32.
        let rel = ((n - 5) as u32).to_le_bytes();
        jmp.copy_from_slice(&[0xe9, rel[0], rel[1], rel[2], rel[3]]);
        rest.fill(INT3);
    }
}

/// Fills `buf` with NOPs only, longest first.
fn fill_nops(buf: &mut [u8]) {
    let mut rest = buf;
    while !rest.is_empty() {
        let len = rest.len().min(MAX_NOP_LEN);
        let (head, tail) = rest.split_at_mut(len);
        head.copy_from_slice(NOPS[len]);
        rest = tail;
    }
}

/// True if `bytes` is padding: whole instructions, each a recommended NOP (as returned by [`nop`],
/// which includes runs of `0x90`) or a forward `jmp` (`eb rel8` / `e9 rel32`) whose target is
/// inside or at the end of `bytes` and that skips only `int3` bytes. Everything [`fill`] writes
/// is recognised; the empty slice is padding too.
///
/// ```
/// use alt_runtime::x86_64::nops::is_fill;
///
/// assert!(is_fill(&[0x90, 0x90, 0x66, 0x90]));
/// assert!(is_fill(&[0xeb, 0x02, 0xcc, 0xcc]));
/// assert!(!is_fill(&[0xeb, 0x02, 0xcc])); // jumps past the end
/// assert!(!is_fill(&[0x0f, 0x1f])); // a NOP cut short
/// ```
pub fn is_fill(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some(&first) = rest.first() {
        let skipped = match first {
            0xeb => jump_over_int3(rest, 2),
            0xe9 => jump_over_int3(rest, 5),
            _ => NOPS[1..]
                .iter()
                .find(|nop| rest.starts_with(nop))
                .map(|nop| nop.len()),
        };
        match skipped.and_then(|len| rest.get(len..)) {
            Some(tail) => rest = tail,
            None => return false,
        }
    }
    true
}

/// If `code` starts with a forward jump of `insn_len` bytes (`eb rel8` or `e9 rel32`) whose
/// target lies within `code` and that skips only `int3`s, the number of bytes from the jump to its
/// target.
fn jump_over_int3(code: &[u8], insn_len: usize) -> Option<usize> {
    let rel = code.get(1..insn_len)?;
    let skip = match *rel {
        [r] => usize::try_from(r as i8).ok()?,
        [a, b, c, d] => usize::try_from(i32::from_le_bytes([a, b, c, d])).ok()?,
        _ => return None,
    };
    let end = insn_len.checked_add(skip)?;
    let skipped = code.get(insn_len..end)?;
    skipped.iter().all(|&b| b == INT3).then_some(end)
}

/// Rewrites every run of one-byte NOPs (`0x90`) in whole-instruction code into the fewest
/// recommended multi-byte NOPs, as Linux's `optimize_nops` does for default code whose padding
/// the assembler filled with `0x90`. Code that does not decode is returned unchanged.
#[cfg(feature = "alloc")]
pub fn optimize_nops(code: &[u8]) -> Vec<u8> {
    let mut out = code.to_vec();
    optimize_nops_into(code, &mut out);
    out
}

/// [`optimize_nops`] into `out`, which must be as long as `code`.
pub fn optimize_nops_into(code: &[u8], out: &mut [u8]) {
    out.copy_from_slice(code);
    // The layout the macros emit for a default call, recognised without decoding: one-byte
    // NOPs, then `call rel32` (or NOPs alone).
    let lead = code.iter().take_while(|&&b| b == 0x90).count();
    let rest = &code[lead..];
    if rest.is_empty() || (rest.len() == 5 && rest[0] == 0xe8) {
        fill(&mut out[..lead]);
        return;
    }
    let mut run_start = None;
    let mut offset = 0;
    while offset < code.len() {
        let len = match insn::decode(&code[offset..]) {
            Ok(i) => usize::from(i.len),
            Err(_) => {
                out.copy_from_slice(code);
                return;
            }
        };
        let single_nop = len == 1 && code[offset] == 0x90;
        match (single_nop, run_start) {
            (true, None) => run_start = Some(offset),
            (false, Some(s)) => {
                fill(&mut out[s..offset]);
                run_start = None;
            }
            _ => {}
        }
        offset += len;
    }
    if let Some(s) = run_start {
        fill(&mut out[s..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nop_forms_are_exact() {
        assert_eq!(nop(0), None);
        assert_eq!(nop(1), Some(&[0x90][..]));
        assert_eq!(nop(2), Some(&[0x66, 0x90][..]));
        assert_eq!(nop(3), Some(&[0x0f, 0x1f, 0x00][..]));
        assert_eq!(nop(4), Some(&[0x0f, 0x1f, 0x40, 0x00][..]));
        assert_eq!(nop(5), Some(&[0x0f, 0x1f, 0x44, 0x00, 0x00][..]));
        assert_eq!(nop(6), Some(&[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00][..]));
        assert_eq!(
            nop(7),
            Some(&[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00][..])
        );
        assert_eq!(
            nop(8),
            Some(&[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00][..])
        );
        assert_eq!(
            nop(9),
            Some(&[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00][..])
        );
        assert_eq!(
            nop(10),
            Some(&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00][..])
        );
        assert_eq!(
            nop(11),
            Some(&[0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00][..])
        );
        assert_eq!(nop(12), None);
        assert_eq!(nop(usize::MAX), None);
        for len in 1..=MAX_NOP_LEN {
            assert_eq!(nop(len).unwrap().len(), len);
        }
    }

    fn filled(len: usize) -> [u8; 300] {
        let mut buf = [0u8; 300];
        fill(&mut buf[..len]);
        buf
    }

    #[test]
    fn fill_short_runs_longest_first() {
        assert_eq!(filled(0), [0u8; 300]);
        assert_eq!(&filled(1)[..2], &[0x90, 0x00]);
        let b = filled(14);
        assert_eq!(&b[..11], nop(11).unwrap());
        assert_eq!(&b[11..14], nop(3).unwrap());
        assert_eq!(b[14], 0);
        let b = filled(22);
        assert_eq!(&b[..11], nop(11).unwrap());
        assert_eq!(&b[11..22], nop(11).unwrap());
    }

    #[test]
    fn fill_long_runs_jump() {
        let b = filled(23);
        assert_eq!(&b[..2], &[0xeb, 21]);
        assert!(b[2..23].iter().all(|&x| x == INT3));
        assert_eq!(b[23], 0);
        let b = filled(129);
        assert_eq!(&b[..2], &[0xeb, 127]);
        assert!(b[2..129].iter().all(|&x| x == INT3));
        let b = filled(130);
        assert_eq!(&b[..5], &[0xe9, 125, 0, 0, 0]);
        assert!(b[5..130].iter().all(|&x| x == INT3));
        let b = filled(300);
        assert_eq!(&b[..5], &[0xe9, 0x27, 0x01, 0, 0]);
    }

    /// Fills 2 GiB: not run by default; the mutation run (`docs/testing.md`) runs it.
    #[cfg(feature = "alloc")]
    #[test]
    #[ignore = "fills 2 GiB of memory"]
    fn a_run_longer_than_one_jmp_rel32_reaches_is_filled_piecewise() {
        let n = MAX_JMP32_RUN + 7;
        let mut buf = alloc::vec![0u8; n];
        fill(&mut buf);
        // jmp +i32::MAX over int3s, then the 7 bytes left as one NOP.
        assert_eq!(buf[..5], [0xe9, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!((buf[5], buf[MAX_JMP32_RUN - 1]), (INT3, INT3));
        assert_eq!(&buf[MAX_JMP32_RUN..], nop(7).unwrap());
    }

    #[test]
    fn is_fill_accepts_fill_and_rejects_others() {
        for len in 0..=300 {
            let b = filled(len);
            assert!(is_fill(&b[..len]), "len {len}");
            if len > 0 {
                assert!(!is_fill(&b[..len - 1]) || len <= MAX_NOP_RUN, "len {len}");
            }
        }
        assert!(is_fill(&[0x90; 7]));
        assert!(!is_fill(&[0x90, 0x00]));
        assert!(!is_fill(&[0xcc]));
        assert!(!is_fill(&[0xeb]));
        assert!(!is_fill(&[0xeb, 0xfe])); // backward jump
        assert!(!is_fill(&[0xeb, 0x01, 0x90])); // skips a non-int3
        assert!(!is_fill(&[0xe9, 0x01, 0x00, 0x00]));
        assert!(!is_fill(&[0xe9, 0xff, 0xff, 0xff, 0xff]));
        assert!(is_fill(&[0xe9, 0x01, 0x00, 0x00, 0x00, 0xcc, 0x90]));
        assert!(!is_fill(&[0x66, 0x66, 0x90])); // not a recommended form
    }
}
