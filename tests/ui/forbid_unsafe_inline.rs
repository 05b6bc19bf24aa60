#![forbid(unsafe_code)]
use alt::alternative;
#[alternative(
    // SAFETY: a crate that forbids unsafe code cannot vouch for this.
    popcnt => unsafe inline("popcnt {ret}, {x}")
)]
fn count(x: u64) -> u64 {
    x.count_ones() as u64
}
fn main() {
    let _ = count(1);
}
