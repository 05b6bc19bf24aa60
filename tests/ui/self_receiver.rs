use alt::alternative;
struct S;
impl S {
    #[alternative(popcnt => unsafe inline("popcnt {ret}, {x}"))]
    fn count(&self, x: u64) -> u64 {
        x.count_ones() as u64
    }
}
fn main() {}
