fn main() {
    if alt::has!(avx3) {
        println!("no such capability");
    }
}
