alt::paravirt_ops! {
    pub table PV_OPS {
        fn cycles() -> u64 { clobbers: C }
    }
}
fn main() {}
