use alt::alternative;
/// A safe function may not reach an `unsafe fn` variant: its contract is not the function's.
#[alternative(avx2 => read_avx2)]
fn read(p: *const u64) -> u64 {
    p as u64
}
/// # Safety
/// `p` must be valid for reads.
unsafe fn read_avx2(p: *const u64) -> u64 {
    unsafe { *p }
}
fn main() {}
