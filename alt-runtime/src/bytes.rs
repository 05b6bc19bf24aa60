//! Small inline storage for what every site has a little of: its bytes ([`SiteBytes`]) and its
//! entries ([`Candidates`](crate::plan::Candidates)). A program can have a hundred thousand sites, each a few bytes with
//! one or two entries; a heap allocation for each would cost more than the rest of patching it.

use alloc::vec::Vec;
use core::fmt;
use core::ops::{Deref, DerefMut};

/// Up to `N` values inline, more on the heap. Dereferences to a slice.
#[derive(Clone)]
pub struct SmallVec<T: Copy + Default, const N: usize> {
    repr: Repr<T, N>,
}

#[derive(Clone)]
enum Repr<T: Copy + Default, const N: usize> {
    Inline { len: u8, items: [T; N] },
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> SmallVec<T, N> {
    /// An empty one.
    pub fn new() -> Self {
        SmallVec {
            repr: Repr::Inline {
                len: 0,
                items: [T::default(); N],
            },
        }
    }

    /// `len` copies of `value`.
    pub fn filled(value: T, len: usize) -> Self {
        if len <= N {
            SmallVec {
                repr: Repr::Inline {
                    len: len as u8,
                    items: [value; N],
                },
            }
        } else {
            SmallVec {
                repr: Repr::Heap(alloc::vec![value; len]),
            }
        }
    }

    /// Appends `value`.
    pub fn push(&mut self, value: T) {
        match &mut self.repr {
            Repr::Inline { len, items } if usize::from(*len) < N => {
                items[usize::from(*len)] = value;
                *len += 1;
            }
            Repr::Inline { len, items } => {
                let mut v = items[..usize::from(*len)].to_vec();
                v.push(value);
                self.repr = Repr::Heap(v);
            }
            Repr::Heap(v) => v.push(value),
        }
    }

    /// Grows or shrinks to `new_len`, filling with `value`.
    pub fn resize(&mut self, new_len: usize, value: T) {
        match &mut self.repr {
            Repr::Inline { len, items } if new_len <= N && new_len <= usize::from(u8::MAX) => {
                for slot in items.iter_mut().take(new_len).skip(usize::from(*len)) {
                    *slot = value;
                }
                *len = new_len as u8;
            }
            Repr::Inline { len, items } => {
                let mut v = items[..usize::from(*len)].to_vec();
                v.resize(new_len, value);
                self.repr = Repr::Heap(v);
            }
            Repr::Heap(v) => v.resize(new_len, value),
        }
    }
}

impl<T: Copy + Default, const N: usize> Default for SmallVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> Deref for SmallVec<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Inline { len, items } => &items[..usize::from(*len)],
            Repr::Heap(v) => v,
        }
    }
}

impl<T: Copy + Default, const N: usize> DerefMut for SmallVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.repr {
            Repr::Inline { len, items } => &mut items[..usize::from(*len)],
            Repr::Heap(v) => v,
        }
    }
}

impl<T: Copy + Default, const N: usize> From<&[T]> for SmallVec<T, N> {
    fn from(s: &[T]) -> Self {
        if s.len() <= N {
            let mut items = [T::default(); N];
            items[..s.len()].copy_from_slice(s);
            SmallVec {
                repr: Repr::Inline {
                    len: s.len() as u8,
                    items,
                },
            }
        } else {
            SmallVec {
                repr: Repr::Heap(s.to_vec()),
            }
        }
    }
}

impl<T: Copy + Default, const N: usize> From<Vec<T>> for SmallVec<T, N> {
    fn from(v: Vec<T>) -> Self {
        if v.len() <= N {
            Self::from(&v[..])
        } else {
            SmallVec {
                repr: Repr::Heap(v),
            }
        }
    }
}

impl<T: Copy + Default, const N: usize, const M: usize> From<[T; M]> for SmallVec<T, N> {
    fn from(a: [T; M]) -> Self {
        Self::from(&a[..])
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for SmallVec<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v = Self::new();
        for x in iter {
            v.push(x);
        }
        v
    }
}

impl<'a, T: Copy + Default, const N: usize> IntoIterator for &'a SmallVec<T, N> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T: Copy + Default, const N: usize> IntoIterator for &'a mut SmallVec<T, N> {
    type Item = &'a mut T;
    type IntoIter = core::slice::IterMut<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for SmallVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for SmallVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for SmallVec<T, N> {}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<[T]> for SmallVec<T, N> {
    fn eq(&self, other: &[T]) -> bool {
        **self == *other
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<&[T]> for SmallVec<T, N> {
    fn eq(&self, other: &&[T]) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + PartialEq, const N: usize, const M: usize> PartialEq<[T; M]>
    for SmallVec<T, N>
{
    fn eq(&self, other: &[T; M]) -> bool {
        **self == other[..]
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<Vec<T>> for SmallVec<T, N> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == other[..]
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<SmallVec<T, N>> for Vec<T> {
    fn eq(&self, other: &SmallVec<T, N>) -> bool {
        self[..] == **other
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<SmallVec<T, N>> for [T] {
    fn eq(&self, other: &SmallVec<T, N>) -> bool {
        *self == **other
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<SmallVec<T, N>> for &[T] {
    fn eq(&self, other: &SmallVec<T, N>) -> bool {
        **self == **other
    }
}

/// Bytes shown as lower-case hex without separators.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A site's bytes: up to 22 inline (every site the macros emit for short sequences), longer
/// ones on the heap. Dereferences to `[u8]`.
pub type SiteBytes = SmallVec<u8, 22>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vectors_spill_to_the_heap_and_compare_as_slices() {
        let mut b = SiteBytes::from([1u8, 2, 3]);
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(b.len(), 3);
        b.resize(30, 9);
        assert_eq!(b.len(), 30);
        assert_eq!(b[2..5], [3, 9, 9]);
        b.push(7);
        assert_eq!(b[30], 7);
        let long: Vec<u8> = (0..40).collect();
        let c = SiteBytes::from(long.clone());
        assert_eq!(c, long);
        assert_eq!(long, c);
        let d: SmallVec<u32, 2> = [1, 2, 3].into_iter().collect();
        assert_eq!(d, [1, 2, 3]);
        assert_eq!(alloc::format!("{d:?}"), "[1, 2, 3]");
        let mut e = SiteBytes::filled(0x90, 4);
        e[0] = 1;
        assert_eq!(e, [1, 0x90, 0x90, 0x90]);
    }
}
