//! Temporary stand-in (replaced by the real module).
#![allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub reason: &'static str,
}
impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} at offset {}", self.reason, self.offset)
    }
}
pub fn ends_exactly(code: &[u8]) -> Result<usize, DecodeError> {
    Ok(code.len())
}
#[derive(Debug, Clone, Copy)]
pub struct Insn {
    pub len: u8,
}
pub fn decode(code: &[u8]) -> Result<Insn, DecodeError> {
    match code.first() {
        Some(0x90) => Ok(Insn { len: 1 }),
        Some(0xe8) if code.len() >= 5 => Ok(Insn { len: 5 }),
        _ => Err(DecodeError {
            offset: 0,
            reason: "stand-in decoder",
        }),
    }
}
