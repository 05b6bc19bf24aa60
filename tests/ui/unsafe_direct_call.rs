use alt::alternative;
#[alternative(avx2 => unsafe double_avx2)]
fn double(x: u32) -> u32 {
    x * 2
}
#[target_feature(enable = "avx2")]
fn double_avx2(x: u32) -> u32 {
    x << 1
}
fn main() {}
