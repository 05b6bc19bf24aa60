use alt::alternative;
#[alternative(erms => unsafe inline("rep movsb"), clobber(rbx))]
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    core::ptr::copy_nonoverlapping(src, dst, len)
}
fn main() {}
