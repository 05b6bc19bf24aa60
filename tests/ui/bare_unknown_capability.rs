fn main() {
    unsafe { alt::asm::alternative!("", lfence_serialising => "lfence") };
}
