//! A crate that forbids unsafe code may branch with `has!` and call safe `#[target_feature]`
//! functions under the branch whose key guarantees their features.
#![forbid(unsafe_code)]

#[target_feature(enable = "avx2")]
fn sum_avx2(xs: &[u32]) -> u64 {
    xs.iter().map(|&x| u64::from(x)).sum()
}

#[target_feature(enable = "popcnt")]
fn bits(x: u64) -> u32 {
    x.count_ones()
}

fn sum(xs: &[u32]) -> u64 {
    xs.iter().map(|&x| u64::from(x)).sum()
}

mod nested {
    pub fn plain(x: u64) -> u32 {
        x.count_ones()
    }
}

fn main() {
    let xs = [1, 2, 3];
    let s = alt::has!(avx2 => sum_avx2(&xs), sse4.2 => sum(&xs), _ => sum(&xs));
    assert_eq!(s, 6);
    let b = alt::has!(popcnt => bits(0xff), !popcnt => nested::plain(0xff), _ => 8);
    assert_eq!(b, 8);
    // Answers before and after patching are booleans either way.
    let _ = alt::has!(erratum_amd_div0, likely) || alt::has!(!avx2, unlikely);
}
