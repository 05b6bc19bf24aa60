#![forbid(unsafe_code)]
extern "C" fn native_cycles() -> u64 {
    0
}
alt::paravirt_ops! {
    pub table PV_OPS {
        fn cycles() -> u64 {
            native: native_cycles,
            // SAFETY: a crate that forbids unsafe code cannot vouch for this.
            unsafe inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
            clobbers: [rax, rdx],
        }
    }
}
fn main() {
    let _ = PV_OPS.cycles();
}
