fn main() {
    if alt::has!(popcnt, hot) {
        println!("?");
    }
}
