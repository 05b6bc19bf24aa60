extern "C" fn native_scale(x: f64) -> u64 { x as u64 }
alt::paravirt_ops! {
    pub table PV_OPS {
        fn scale(x: f64) -> u64 { native: native_scale }
    }
}
fn main() {}
