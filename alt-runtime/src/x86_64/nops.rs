//! Temporary stand-in (replaced by the real module).
#![allow(missing_docs)]
pub const MAX_NOP_LEN: usize = 11;
pub fn fill(buf: &mut [u8]) {
    buf.fill(0x90)
}
pub fn is_fill(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0x90)
}
