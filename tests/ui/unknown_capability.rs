use alt::alternative;
#[alternative(popcnt2 => unsafe inline("popcnt {ret}, {x}"))]
fn count(x: u64) -> u64 {
    x.count_ones() as u64
}
fn main() {}
