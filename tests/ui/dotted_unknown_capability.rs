use alt::alternative;
#[alternative(sse4.3 => crc_sse42)]
fn crc(x: u32) -> u32 {
    x
}
fn crc_sse42(x: u32) -> u32 {
    x
}
fn main() {}
