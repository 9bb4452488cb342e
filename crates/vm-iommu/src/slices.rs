// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Slices`]: a [`GuestMemorySliceIterator`] whose `stop_on_error` costs nothing.

use std::iter::FusedIterator;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{GuestMemoryResult, VolatileSlice};

/// Wraps the slice iterator of a [`GuestMemory`](vm_memory::GuestMemory)
/// implementation so that its [`stop_on_error`](GuestMemorySliceIterator::stop_on_error)
/// does not go through vm-memory's provided method.
///
/// Every [`Bytes`](vm_memory::Bytes) access of a `GuestMemory` (`read_obj`,
/// `write_slice`, ...) calls `stop_on_error`. vm-memory 0.18 provides it with a
/// `Peekable` adapter whose peeked slot holds a whole `Result<VolatileSlice, Error>`,
/// moved through memory on every access: on the machine of docs/BENCHMARKS.md an
/// 8-byte `read_obj` of plain `GuestMemoryMmap` takes 37 ns with it, 11 ns through a
/// [`DeviceView`](crate::DeviceView), which translates and then uses this adapter.
/// Here the first slice is held back in the iterator instead, with the same contract:
/// an error as the first item is returned, a later one ends the iteration.
///
/// vm-dma's direct device view wraps vm-memory's backend iterator in it too.
///
/// ```
/// use vm_iommu::Slices;
/// use vm_memory::guest_memory::GuestMemorySliceIterator;
/// use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[
///     (GuestAddress(0), 0x1000),
///     (GuestAddress(0x1000), 0x1000),
/// ])
/// .unwrap();
/// let slices = Slices::new(mem.get_slices(GuestAddress(0xff0), 0x20));
/// let lens: Vec<usize> = slices.stop_on_error().unwrap().map(|s| s.len()).collect();
/// assert_eq!(lens, [0x10, 0x10]);
/// ```
#[derive(Debug)]
pub struct Slices<I>(I);

impl<I> Slices<I> {
    /// Wrap `inner`, the slices of one access.
    pub fn new(inner: I) -> Self {
        Slices(inner)
    }
}

impl<'a, B: BitmapSlice, I> Iterator for Slices<I>
where
    I: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, B>>> + FusedIterator,
{
    type Item = GuestMemoryResult<VolatileSlice<'a, B>>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<'a, B: BitmapSlice, I> FusedIterator for Slices<I> where
    I: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, B>>> + FusedIterator
{
}

impl<'a, B: BitmapSlice, I> GuestMemorySliceIterator<'a, B> for Slices<I>
where
    I: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, B>>> + FusedIterator,
{
    /// The contract of the provided method: the first item's error is returned, and
    /// the slices after it end at the first later error.
    #[inline(always)]
    fn stop_on_error(mut self) -> GuestMemoryResult<impl Iterator<Item = VolatileSlice<'a, B>>> {
        let first = match self.0.next() {
            Some(Ok(slice)) => Some(slice),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        Ok(StopOnError {
            first,
            rest: Some(self.0),
        })
    }
}

/// The iterator of [`Slices::stop_on_error`]: the first slice, then the rest up to
/// the first error.
struct StopOnError<'a, B: BitmapSlice, I> {
    first: Option<VolatileSlice<'a, B>>,
    /// `None` once an error or the end was seen.
    rest: Option<I>,
}

impl<'a, B: BitmapSlice, I> Iterator for StopOnError<'a, B, I>
where
    I: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, B>>>,
{
    type Item = VolatileSlice<'a, B>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(slice) = self.first.take() {
            return Some(slice);
        }
        match self.rest.as_mut()?.next() {
            Some(Ok(slice)) => Some(slice),
            _ => {
                self.rest = None;
                None
            }
        }
    }
}

impl<'a, B: BitmapSlice, I> FusedIterator for StopOnError<'a, B, I> where
    I: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, B>>>
{
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestMemoryError};

    use super::*;

    /// Slices of a 64-byte buffer, or errors, as listed.
    fn slices<'b>(
        buf: &'b mut [u8; 64],
        items: &[Option<usize>],
    ) -> Vec<GuestMemoryResult<VolatileSlice<'b, ()>>> {
        let mut at = 0;
        items
            .iter()
            .map(|item| match *item {
                Some(len) => {
                    // SAFETY: `at + len <= 64` in every test, and the slices borrow
                    // `buf` for their lifetime.
                    let s = unsafe { VolatileSlice::new(buf.as_mut_ptr().add(at), len) };
                    at += len;
                    Ok(s)
                }
                None => Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(
                    at as u64,
                ))),
            })
            .collect()
    }

    fn lens(items: Vec<GuestMemoryResult<VolatileSlice<'_, ()>>>) -> GuestMemoryResult<Vec<usize>> {
        Slices::new(items.into_iter())
            .stop_on_error()
            .map(|it| it.map(|s| s.len()).collect())
    }

    #[test]
    fn test_stop_on_error_yields_every_slice() {
        let mut buf = [0u8; 64];
        assert_eq!(
            lens(slices(&mut buf, &[Some(8), Some(16), Some(4)])).unwrap(),
            [8, 16, 4]
        );
        assert_eq!(lens(Vec::new()).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn test_stop_on_error_returns_a_first_error() {
        let mut buf = [0u8; 64];
        assert!(matches!(
            lens(slices(&mut buf, &[None, Some(8)])),
            Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(0)))
        ));
    }

    #[test]
    fn test_stop_on_error_ends_at_a_later_error_even_if_more_follow() {
        // An inner iterator that goes on after an error: nothing after it is taken.
        let mut buf = [0u8; 64];
        assert_eq!(
            lens(slices(&mut buf, &[Some(8), Some(8), None, Some(8)])).unwrap(),
            [8, 8]
        );
        let mut it = Slices::new(slices(&mut buf, &[Some(8), None, Some(8)]).into_iter())
            .stop_on_error()
            .unwrap();
        assert_eq!(it.next().map(|s| s.len()), Some(8));
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }
}
