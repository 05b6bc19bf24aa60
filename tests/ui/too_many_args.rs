use alt::alternative;
#[alternative(popcnt => unsafe inline("popcnt {ret}, {a}"))]
fn seven(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64) -> u64 {
    a + b + c + d + e + f + g
}
fn main() {}
