fn main() {
    alt::asm::alternative!("", lfence_serializing => "lfence");
}
