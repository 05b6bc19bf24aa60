use alt::alternative;
#[alternative(popcnt => unsafe inline("popcnt {ret}, {x}"), clobber_abi, preserve_vectors)]
fn count(x: u64) -> u64 {
    x.count_ones() as u64
}
fn main() {}
