use alt::alternative;

#[alternative(popcnt => inline("popcnt {ret}, {x}"))]
fn popcount(x: u64) -> u64 {
    let mut n = 0;
    let mut v = x;
    while v != 0 { v &= v - 1; n += 1; }
    n
}

#[alternative(avx2 => plus_one_avx2)]
fn plus_one(x: u32) -> u32 { x + 1 }
#[target_feature(enable = "avx2")]
fn plus_one_avx2(x: u32) -> u32 { x + 1 }

fn main() {
    let v = std::hint::black_box(0xff00ff);
    println!("before: {} {}", popcount(v), plus_one(v as u32));
    match alt::process::patch_self() {
        Ok(r) => println!("{r}"),
        Err(e) => println!("error: {e}"),
    }
    println!("after: {} {}", popcount(v), plus_one(v as u32));
    unsafe { alt::asm::alternative!("", lfence_serializing => "lfence") };
}
