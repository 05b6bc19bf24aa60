//! An arm cannot call an `unsafe fn`: its contract is not the branch's.
unsafe fn read(p: *const u64) -> u64 {
    unsafe { *p }
}

fn value(p: *const u64) -> u64 {
    alt::has!(avx2 => read(p), _ => 0)
}

fn main() {
    value(&7);
}
