//! An arm's function may rely only on the target features its key guarantees.
fn sum(xs: &[u8]) -> u64 {
    alt::has!(popcnt => sum_avx2(xs), _ => 0)
}

#[target_feature(enable = "avx2")]
fn sum_avx2(xs: &[u8]) -> u64 {
    xs.iter().map(|&b| u64::from(b)).sum()
}

fn main() {
    sum(&[1, 2, 3]);
}
