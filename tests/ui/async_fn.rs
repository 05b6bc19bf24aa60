use alt::alternative;
#[alternative(popcnt => unsafe inline("popcnt {ret}, {x}"))]
async fn count(x: u64) -> u64 {
    x.count_ones() as u64
}
fn main() {}
