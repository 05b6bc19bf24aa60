#![forbid(unsafe_code)]
fn main() {
    // SAFETY: a crate that forbids unsafe code cannot vouch for this.
    unsafe { alt::asm::alternative!("", lfence_serializing => "lfence") };
}
