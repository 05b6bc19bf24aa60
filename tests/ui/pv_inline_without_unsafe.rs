extern "C" fn native_cycles() -> u64 {
    0
}
alt::paravirt_ops! {
    pub table PV_OPS {
        fn cycles() -> u64 {
            native: native_cycles,
            inline: ["rdtsc", "shl rdx, 32", "or rax, rdx"],
            clobbers: [rax, rdx],
        }
    }
}
fn main() {}
