//! Register-saving thunks.
//!
//! A site whose replacements are inline instructions promises the compiler that only the
//! result register (`rax`), the flags, any registers named in `clobber(...)` and (unless the
//! site says `preserve_vectors`) the vector registers change, so that the native instruction
//! costs nothing around it in integer code. When the site instead calls a function (the default,
//! or a function replacement), it calls a thunk that saves every other caller-saved register,
//! calls the `extern "C"` implementation, and restores them.
//!
//! [`VectorState::None`] thunks save only general-purpose registers (the site declares the
//! vector registers clobbered). The saving variants follow the target features the crate is
//! compiled with: the 128-bit `xmm0`-`xmm15` by default, the 256-bit `ymm0`-`ymm15` with AVX,
//! and `zmm0`-`zmm31` plus the opmask registers with AVX-512F (the generated code carries all
//! three under `cfg`).
//!
//! Stack: the caller's `asm!` block has a 16-byte-aligned stack pointer before its `call`
//! (guaranteed for blocks without `nostack`), so the thunk is entered at 8 mod 16; eight pushes
//! keep that, and the save area is sized to realign to 16 for the inner call.

/// General-purpose registers a thunk saves (all caller-saved ones but `rax`).
const SAVED_GPRS: [&str; 8] = ["rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"];

/// Vector state a thunk variant saves.
#[derive(Clone, Copy)]
pub enum VectorState {
    /// No vector state: the site declares the vector registers clobbered.
    None,
    Sse,
    Avx,
    Avx512 {
        bw: bool,
    },
}

/// The thunk's instruction lines; `{target}` is the `sym` operand of the implementation.
pub fn thunk_lines(v: VectorState) -> Vec<String> {
    let mut out = Vec::new();
    for r in SAVED_GPRS {
        out.push(format!("push {r}"));
    }
    let (save, restore, area): (Vec<String>, Vec<String>, usize) = match v {
        VectorState::None => (Vec::new(), Vec::new(), 0),
        VectorState::Sse => {
            let s = (0..16)
                .map(|i| format!("movdqu xmmword ptr [rsp + {}], xmm{i}", i * 16))
                .collect();
            let r = (0..16)
                .map(|i| format!("movdqu xmm{i}, xmmword ptr [rsp + {}]", i * 16))
                .collect();
            (s, r, 16 * 16)
        }
        VectorState::Avx => {
            let s = (0..16)
                .map(|i| format!("vmovdqu ymmword ptr [rsp + {}], ymm{i}", i * 32))
                .collect();
            let r = (0..16)
                .map(|i| format!("vmovdqu ymm{i}, ymmword ptr [rsp + {}]", i * 32))
                .collect();
            (s, r, 16 * 32)
        }
        VectorState::Avx512 { bw } => {
            let kmov = if bw { "kmovq" } else { "kmovw" };
            let kptr = if bw { "qword" } else { "word" };
            let mut s: Vec<String> = (0..32)
                .map(|i| format!("vmovdqu64 zmmword ptr [rsp + {}], zmm{i}", i * 64))
                .collect();
            let mut r: Vec<String> = (0..32)
                .map(|i| format!("vmovdqu64 zmm{i}, zmmword ptr [rsp + {}]", i * 64))
                .collect();
            for k in 0..8 {
                s.push(format!("{kmov} {kptr} ptr [rsp + {}], k{k}", 2048 + k * 8));
                r.push(format!("{kmov} k{k}, {kptr} ptr [rsp + {}]", 2048 + k * 8));
            }
            (s, r, 32 * 64 + 64)
        }
    };
    // Entered at 8 mod 16, eight pushes keep 8 mod 16: 8 more bytes realign.
    let frame = area + 8;
    out.push(format!("sub rsp, {frame}"));
    out.extend(save);
    out.push("call {target}".to_string());
    out.extend(restore);
    out.push(format!("add rsp, {frame}"));
    for r in SAVED_GPRS.iter().rev() {
        out.push(format!("pop {r}"));
    }
    out.push("ret".to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_the_inner_call_aligned() {
        for v in [
            VectorState::None,
            VectorState::Sse,
            VectorState::Avx,
            VectorState::Avx512 { bw: true },
            VectorState::Avx512 { bw: false },
        ] {
            let lines = thunk_lines(v);
            let sub = lines.iter().find(|l| l.starts_with("sub rsp, ")).unwrap();
            let frame: usize = sub["sub rsp, ".len()..].parse().unwrap();
            // Entry: rsp = 8 mod 16; after 8 pushes and the frame, the call must see 0 mod 16.
            assert_eq!((8 + 8 * 8 + frame) % 16, 0);
            assert_eq!(lines.last().unwrap(), "ret");
            assert_eq!(lines.iter().filter(|l| l.starts_with("push")).count(), 8);
            assert_eq!(lines.iter().filter(|l| l.starts_with("pop")).count(), 8);
        }
    }
}
