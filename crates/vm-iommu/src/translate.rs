// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Translation of an IOVA range into guest-physical fragments.
//!
//! A translation walks the whole range *before* it returns, so that a missing mapping
//! or a permission failure anywhere in the range is reported before any byte moves.
//! The first [`INLINE_FRAGMENTS`] fragments are kept inline in the returned
//! [`Translation`] (nothing is allocated); longer translations are walked again
//! lazily for the remaining fragments.

use vm_memory::{GuestAddress, Permissions};

use crate::error::{Error, Fault, FaultReason, Result};
use crate::iommu::{EndpointState, Inner};
use crate::table::{walk_piece, Piece, Root};

/// Fragments that a [`Translation`] holds without walking the table again.
pub const INLINE_FRAGMENTS: usize = 4;

/// One physically contiguous piece of a translated IOVA range.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Fragment {
    /// First IOVA of the piece.
    pub iova: u64,
    /// Guest-physical (bus) address the piece maps to.
    pub gpa: GuestAddress,
    /// Length in bytes.
    pub len: u64,
    /// Permissions of the mapping that holds the piece.
    pub perm: Permissions,
}

const NO_PIECE: Piece = Piece {
    gpa: 0,
    len: 0,
    perm: Permissions::No,
};

/// The remainder of a translation with more than [`INLINE_FRAGMENTS`] fragments.
#[derive(Clone, Copy, Debug)]
struct Tail<'a> {
    root: &'a Root,
    next: u64,
    last: u64,
    access: Permissions,
}

/// The result of a successful translation: an iterator over [`Fragment`]s whose lengths
/// add up to the requested length.
///
/// Items are `Err` only if the range had more than [`INLINE_FRAGMENTS`] fragments and a
/// concurrent unmap removed part of it after the translation was checked; iteration
/// then stops.
#[derive(Clone, Debug)]
pub struct Translation<'a> {
    pieces: [Piece; INLINE_FRAGMENTS],
    n: u8,
    pos: u8,
    iova: u64,
    endpoint: u32,
    tail: Option<Tail<'a>>,
    inner: Option<&'a Inner>,
}

impl<'a> Translation<'a> {
    fn new(iova: u64, endpoint: u32) -> Self {
        Translation {
            pieces: [NO_PIECE; INLINE_FRAGMENTS],
            n: 0,
            pos: 0,
            iova,
            endpoint,
            tail: None,
            inner: None,
        }
    }

    /// The single fragment of this translation, if the range is physically contiguous.
    pub fn single(&self) -> Option<Fragment> {
        (self.n == 1 && self.pos == 0 && self.tail.is_none()).then(|| self.fragment(0, self.iova))
    }

    fn fragment(&self, i: usize, iova: u64) -> Fragment {
        let p = self.pieces[i % INLINE_FRAGMENTS];
        Fragment {
            iova,
            gpa: GuestAddress(p.gpa),
            len: p.len,
            perm: p.perm,
        }
    }
}

impl Iterator for Translation<'_> {
    type Item = Result<Fragment>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos < self.n {
            let f = self.fragment(usize::from(self.pos), self.iova);
            self.pos += 1;
            self.iova = self.iova.wrapping_add(f.len);
            return Some(Ok(f));
        }
        let tail = self.tail.as_mut()?;
        match walk_piece(tail.root, tail.next, tail.last, tail.access) {
            Ok(p) => {
                let f = Fragment {
                    iova: tail.next,
                    gpa: GuestAddress(p.gpa),
                    len: p.len,
                    perm: p.perm,
                };
                // `p.len - 1 <= last - next`, so this cannot overflow.
                let end = tail.next + (p.len - 1);
                if end == tail.last {
                    self.tail = None;
                } else {
                    tail.next = end + 1;
                }
                Some(Ok(f))
            }
            Err((iova, perm)) => {
                let fault = Fault {
                    endpoint: self.endpoint,
                    iova,
                    access: tail.access,
                    reason: if perm {
                        FaultReason::Permission
                    } else {
                        FaultReason::Unmapped
                    },
                };
                self.tail = None;
                if let Some(inner) = self.inner {
                    inner.faults.record(fault);
                }
                Some(Err(Error::Fault(fault)))
            }
        }
    }
}

impl std::iter::FusedIterator for Translation<'_> {}

/// Translate without recording faults.
#[inline]
pub(crate) fn translate_quiet<'a>(
    inner: &'a Inner,
    ep: &EndpointState,
    iova: u64,
    len: u64,
    access: Permissions,
) -> std::result::Result<Translation<'a>, Fault> {
    let endpoint = ep.id;
    let fault = |iova, reason| Fault {
        endpoint,
        iova,
        access,
        reason,
    };
    let (first, in_last) = inner.input_range;
    let Some(last) = iova.checked_add(len.wrapping_sub(1)).filter(|_| len != 0) else {
        // Length 0 is rejected by the callers; here it can only be a wrap.
        let at = if iova >= first && iova <= in_last {
            in_last.saturating_add(1)
        } else {
            iova
        };
        return Err(fault(at, FaultReason::OutOfRange));
    };
    let mut t = Translation::new(iova, endpoint);
    let Some(domain) = inner.domain_of(ep) else {
        if inner.bypass_unattached() {
            return Ok(identity(t, iova, len));
        }
        return Err(fault(iova, FaultReason::NoDomain));
    };
    if domain.is_bypass() {
        return Ok(identity(t, iova, len));
    }
    if iova < first || iova > in_last {
        return Err(fault(iova, FaultReason::OutOfRange));
    }
    if last > in_last {
        return Err(fault(in_last + 1, FaultReason::OutOfRange));
    }
    let Some(root) = domain.root() else {
        return Err(fault(iova, FaultReason::Unmapped));
    };
    let mut cur = iova;
    loop {
        match walk_piece(root, cur, last, access) {
            Ok(p) => {
                if usize::from(t.n) < INLINE_FRAGMENTS {
                    t.pieces[usize::from(t.n)] = p;
                    t.n += 1;
                } else if t.tail.is_none() {
                    t.tail = Some(Tail {
                        root,
                        next: cur,
                        last,
                        access,
                    });
                    t.inner = Some(inner);
                }
                let end = cur + (p.len - 1);
                if end == last {
                    return Ok(t);
                }
                cur = end + 1;
            }
            Err((at, perm)) => {
                let reason = if perm {
                    FaultReason::Permission
                } else {
                    FaultReason::Unmapped
                };
                return Err(fault(at, reason));
            }
        }
    }
}

fn identity(mut t: Translation<'_>, iova: u64, len: u64) -> Translation<'_> {
    t.pieces[0] = Piece {
        gpa: iova,
        len,
        perm: Permissions::ReadWrite,
    };
    t.n = 1;
    t
}

/// Translate, recording a failure in the fault log.
#[inline]
pub(crate) fn translate<'a>(
    inner: &'a Inner,
    ep: &EndpointState,
    iova: u64,
    len: u64,
    access: Permissions,
) -> Result<Translation<'a>> {
    if len == 0 {
        return Err(Error::ZeroLength { iova });
    }
    translate_quiet(inner, ep, iova, len, access).map_err(|fault| {
        inner.faults.record(fault);
        Error::Fault(fault)
    })
}
