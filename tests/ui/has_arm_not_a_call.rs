fn main() {
    let x = alt::has!(avx2 => 1 + 2, _ => 3);
    println!("{x}");
}
