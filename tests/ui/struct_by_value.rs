use alt::alternative;
pub struct Pair { a: u64, b: u64 }
#[alternative(popcnt => unsafe inline("popcnt {ret}, {p}"))]
fn count(p: Pair) -> u64 {
    p.a + p.b
}
fn main() {}
