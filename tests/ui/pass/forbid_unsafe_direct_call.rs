//! A crate that forbids unsafe code may use direct-call variants: the capability guarantees the
//! target features of a safe `#[target_feature]` function.
#![forbid(unsafe_code)]
use alt::alternative;

#[alternative(avx2 => double_avx2, sse4.2 => double_plain)]
fn double(x: u32) -> u32 {
    x * 2
}

#[target_feature(enable = "avx2")]
fn double_avx2(x: u32) -> u32 {
    x << 1
}

fn double_plain(x: u32) -> u32 {
    x + x
}

fn main() {
    assert_eq!(double(21), 42);
}
