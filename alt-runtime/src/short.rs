//! Copies and comparisons of a site's few bytes, inline: a site is a handful of bytes, and a
//! call to `memcpy` or `memcmp` for each of its copies costs more than the copy.

/// Copies `len` bytes from `src` to `dst`, inline for the few bytes of a site (a call to
/// `memcpy` costs more than copying them): two overlapping word copies, or bytes one by one.
///
/// # Safety
///
/// As [`core::ptr::copy_nonoverlapping`]: `src` readable and `dst` writable for `len` bytes,
/// not overlapping.
#[inline(always)]
pub(crate) unsafe fn copy_small(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY (every block): each access lies inside the first or last 8 (or 4) of the `len`
    // bytes the caller vouches for; unaligned accesses are used.
    unsafe {
        if (8..=16).contains(&len) {
            let (a, b) = (
                src.cast::<u64>().read_unaligned(),
                src.add(len - 8).cast::<u64>().read_unaligned(),
            );
            dst.cast::<u64>().write_unaligned(a);
            dst.add(len - 8).cast::<u64>().write_unaligned(b);
        } else if (4..8).contains(&len) {
            let (a, b) = (
                src.cast::<u32>().read_unaligned(),
                src.add(len - 4).cast::<u32>().read_unaligned(),
            );
            dst.cast::<u32>().write_unaligned(a);
            dst.add(len - 4).cast::<u32>().write_unaligned(b);
        } else if len < 4 {
            for i in 0..len {
                *dst.add(i) = *src.add(i);
            }
        } else {
            core::ptr::copy_nonoverlapping(src, dst, len);
        }
    }
}

/// `dst.copy_from_slice(src)` through [`copy_small`]. Panics if the lengths differ, as
/// `copy_from_slice` does.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
#[inline(always)]
pub(crate) fn copy_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy between slices of different lengths"
    );
    // SAFETY: both slices are `src.len()` long and cannot overlap (one is borrowed mutably).
    unsafe { copy_small(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// `v.extend_from_slice(src)` through [`copy_small`].
#[cfg(feature = "alloc")]
#[inline(always)]
pub(crate) fn extend(v: &mut alloc::vec::Vec<u8>, src: &[u8]) {
    v.reserve(src.len());
    let len = v.len();
    // SAFETY: `reserve` made room for `src.len()` more bytes after the first `len`; they are
    // written before `set_len` counts them; `src` cannot overlap `v`'s spare capacity.
    unsafe {
        copy_small(src.as_ptr(), v.as_mut_ptr().add(len), src.len());
        v.set_len(len + src.len());
    }
}

/// `a == b` for a site's few bytes, inline (the same two overlapping words as [`copy_small`]).
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap());
    if (8..=16).contains(&len) {
        word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8)
    } else if (4..8).contains(&len) {
        half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4)
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_copies_and_comparisons_agree_with_the_slices_own() {
        let src: [u8; 40] = core::array::from_fn(|i| i as u8 + 1);
        for len in 0..=40 {
            let mut dst = [0u8; 40];
            copy_into(&mut dst[..len], &src[..len]);
            assert_eq!(dst[..len], src[..len], "copy of {len}");
            assert!(
                dst[len..].iter().all(|&b| b == 0),
                "copy of {len} wrote past its end"
            );
            assert!(same(&dst[..len], &src[..len]), "{len} bytes equal");
            for at in 0..len {
                let mut other = dst;
                other[at] ^= 0x80;
                assert!(
                    !same(&other[..len], &src[..len]),
                    "{len} bytes differ at {at}"
                );
            }
            let mut v = alloc::vec![7u8];
            extend(&mut v, &src[..len]);
            assert_eq!(v[0], 7);
            assert_eq!(v[1..], src[..len], "extend by {len}");
            if len < 40 {
                assert!(
                    !same(&src[..len], &src[..len + 1]),
                    "lengths {len} and more"
                );
            }
        }
    }
}
