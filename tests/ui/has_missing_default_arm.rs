#[target_feature(enable = "avx2")]
fn fast() -> u32 {
    1
}

fn main() {
    let x = alt::has!(avx2 => fast());
    println!("{x}");
}
