use alt::alternative;
#[alternative(fma => unsafe inline("vfmadd213sd xmm0, xmm1, xmm2"))]
fn fused(a: f64, b: f64) -> u64 {
    (a * b) as u64
}
fn main() {}
