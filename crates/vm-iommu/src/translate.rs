// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Translation of an IOVA range into guest-physical fragments.
//!
//! A translation walks the whole range *before* it returns, so that a missing mapping
//! or a permission failure anywhere in the range is reported before any byte moves.
//! The first fragment is kept in the returned [`Translation`]; further fragments are
//! walked again lazily, so nothing is allocated and the result stays small.

use vm_memory::{GuestAddress, Permissions};

use crate::config::MAX_INPUT_ADDRESS;
use crate::error::{Error, Fault, FaultReason, Result};
use crate::iommu::{EndpointState, Inner};
use crate::table::{
    entry_allows, entry_perms, leaf_key, slot_tag, walk_piece, walk_piece_leaf, LeafCache, Piece,
    Root, ADDR_MASK, VALID,
};

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

/// The not yet returned fragments of a checked translation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rest<'a> {
    root: &'a Root,
    inner: &'a Inner,
    next: u64,
    last: u64,
    access: Permissions,
    endpoint: u32,
}

impl Rest<'_> {
    /// Walk the next fragment. `Err` only if a concurrent unmap removed part of the
    /// range after it was checked; the fault is recorded.
    #[inline]
    pub(crate) fn next_fragment(&mut self) -> (Result<Fragment>, bool) {
        match walk_piece(self.root, self.next, self.last, self.access) {
            Ok(p) => {
                let f = Fragment {
                    iova: self.next,
                    gpa: GuestAddress(p.gpa),
                    len: p.len,
                    perm: p.perm,
                };
                // `p.len - 1 <= last - next`, so this cannot overflow.
                let end = self.next + (p.len - 1);
                let more = end != self.last;
                if more {
                    self.next = end + 1;
                }
                (Ok(f), more)
            }
            Err((iova, perm)) => {
                let fault = Fault {
                    endpoint: self.endpoint,
                    iova,
                    access: self.access,
                    reason: if perm {
                        FaultReason::Permission
                    } else {
                        FaultReason::Unmapped
                    },
                };
                self.inner.faults.record(fault);
                (Err(Error::Fault(fault)), false)
            }
        }
    }
}

/// The result of a successful translation: an iterator over [`Fragment`]s whose lengths
/// add up to the requested length.
///
/// The whole range was checked (mapped, permitted) before the translation was
/// returned. Items after the first are walked lazily; such an item is `Err` only if a
/// concurrent unmap removed part of the range in between, and iteration then stops.
#[derive(Clone, Debug)]
pub struct Translation<'a> {
    first: Option<Fragment>,
    rest: Option<Rest<'a>>,
}

impl Translation<'_> {
    /// The single fragment of this translation, if the range is physically contiguous.
    pub fn single(&self) -> Option<Fragment> {
        match (self.first, &self.rest) {
            (Some(f), None) => Some(f),
            _ => None,
        }
    }
}

impl Iterator for Translation<'_> {
    type Item = Result<Fragment>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(f) = self.first.take() {
            return Some(Ok(f));
        }
        let rest = self.rest.as_mut()?;
        let (item, more) = rest.next_fragment();
        if !more {
            self.rest = None;
        }
        Some(item)
    }
}

impl std::iter::FusedIterator for Translation<'_> {}

/// A checked translation: the first fragment and the rest, if any.
pub(crate) type Checked<'a> = (Fragment, Option<Rest<'a>>);

#[cold]
fn wrap_fault(inner: &Inner, endpoint: u32, iova: u64, access: Permissions) -> Fault {
    let (first, in_last) = inner.input_range;
    let at = if iova >= first && iova <= in_last {
        in_last.saturating_add(1)
    } else {
        iova
    };
    Fault {
        endpoint,
        iova: at,
        access,
        reason: FaultReason::OutOfRange,
    }
}

/// Fast path: `iova..=last` (`iova <= last`) inside one 4 KiB page of the cached
/// last-level table; the guest-physical address of `iova`. A valid leaf there is
/// current (no block leaf can sit above a non-empty table), and the table's key ties it
/// to the endpoint's current domain slot.
///
/// No input-range check is needed: `map` only writes 4 KiB leaves whose whole page lies
/// inside the (immutable) input range, so a valid entry implies that `iova..=last`,
/// which lies in that page, is inside it too.
///
/// The caller has checked that the range lies in one page at or below
/// [`MAX_INPUT_ADDRESS`] ([`in_one_page`]).
#[inline(always)]
pub(crate) fn fast_gpa(
    ep: &EndpointState,
    cache: &LeafCache,
    iova: u64,
    access: Permissions,
) -> Option<u64> {
    page_entry(ep, cache, iova, access).map(|raw| (raw & ADDR_MASK) | (iova & 0xfff))
}

/// Whether `count > 0` bytes from `iova` lie in one 4 KiB page at or below
/// [`MAX_INPUT_ADDRESS`] (then `iova + count - 1` does not wrap). Keys are unique
/// only below 2^48 (`iova >> 21` would reach into the slot tag and alias IOVA
/// 2^48 + x with x in the next slot or this one's IOVA x): beyond, the slow path
/// answers (out of range).
#[inline(always)]
pub(crate) fn in_one_page(iova: u64, count: u64) -> bool {
    // `MAX_INPUT_ADDRESS` ends a page, so the page's last byte is in range too.
    count <= 0x1000 - (iova & 0xfff) && iova <= MAX_INPUT_ADDRESS
}

/// The valid, permitting leaf entry behind [`fast_gpa`].
#[inline(always)]
fn fast_entry(
    ep: &EndpointState,
    cache: &LeafCache,
    iova: u64,
    last: u64,
    access: Permissions,
) -> Option<u64> {
    debug_assert!(iova <= last);
    if !in_one_page(iova, last - iova + 1) {
        return None;
    }
    page_entry(ep, cache, iova, access)
}

/// [`fast_entry`] once the range is known to be [`in_one_page`].
#[inline(always)]
fn page_entry(
    ep: &EndpointState,
    cache: &LeafCache,
    iova: u64,
    access: Permissions,
) -> Option<u64> {
    let key = leaf_key(slot_tag(ep.domain()), iova);
    let leaf = cache.get(key)?;
    let raw = leaf.entry(iova);
    if raw & VALID == 0 || !entry_allows(raw, access) {
        return None;
    }
    Some(raw)
}

/// [`fast_gpa`] as a [`Fragment`].
#[inline(always)]
pub(crate) fn fast(
    ep: &EndpointState,
    cache: &LeafCache,
    iova: u64,
    last: u64,
    access: Permissions,
) -> Option<Fragment> {
    let raw = fast_entry(ep, cache, iova, last, access)?;
    Some(Fragment {
        iova,
        gpa: GuestAddress((raw & ADDR_MASK) | (iova & 0xfff)),
        len: last - iova + 1,
        perm: entry_perms(raw),
    })
}

/// Translate and check `iova..iova+len` (`len > 0`) without recording faults.
///
/// `cache` must belong to a handle that keeps `inner` alive (see [`LeafCache`]).
#[inline]
pub(crate) fn check<'a>(
    inner: &'a Inner,
    ep: &EndpointState,
    cache: Option<&LeafCache>,
    iova: u64,
    len: u64,
    access: Permissions,
) -> std::result::Result<Checked<'a>, Fault> {
    let endpoint = ep.id;
    let fault = |iova, reason| Fault {
        endpoint,
        iova,
        access,
        reason,
    };
    let Some(last) = iova.checked_add(len.wrapping_sub(1)).filter(|_| len != 0) else {
        return Err(wrap_fault(inner, endpoint, iova, access));
    };
    if let Some(f) = cache.and_then(|c| fast(ep, c, iova, last, access)) {
        return Ok((f, None));
    }
    let (first, in_last) = inner.input_range;
    let d = ep.domain();
    let identity = Fragment {
        iova,
        gpa: GuestAddress(iova),
        len,
        perm: Permissions::ReadWrite,
    };
    let Some(domain) = inner.domain_at(d) else {
        if inner.bypass_unattached() {
            return Ok((identity, None));
        }
        return Err(fault(iova, FaultReason::NoDomain));
    };
    if domain.is_bypass() {
        return Ok((identity, None));
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
    let piece_fault = |(at, perm): (u64, bool)| {
        let reason = if perm {
            FaultReason::Permission
        } else {
            FaultReason::Unmapped
        };
        fault(at, reason)
    };
    let (p, table): (Piece, _) = walk_piece_leaf(root, iova, last, access).map_err(piece_fault)?;
    if let (Some(cache), Some(table)) = (cache, table) {
        // `table` was reached from the root of slot `d`, so its key is this one.
        debug_assert_eq!(table.key(), leaf_key(slot_tag(d), iova));
        cache.set(table, leaf_key(slot_tag(d), iova));
    }
    let first_fragment = Fragment {
        iova,
        gpa: GuestAddress(p.gpa),
        len: p.len,
        perm: p.perm,
    };
    // `p.len - 1 <= last - iova`.
    let mut end = iova + (p.len - 1);
    if end == last {
        return Ok((first_fragment, None));
    }
    let rest = Rest {
        root,
        inner,
        next: end + 1,
        last,
        access,
        endpoint,
    };
    // Check the remainder of the range before anything is handed out.
    while end < last {
        let cur = end + 1;
        let p = walk_piece(root, cur, last, access).map_err(piece_fault)?;
        end = cur + (p.len - 1);
    }
    Ok((first_fragment, Some(rest)))
}

/// The piece at `cur` (at most up to `last`) under the endpoint's current domain, for
/// walking a checked range lazily. A failure (only possible if the range changed
/// since it was checked) is recorded in the fault log.
pub(crate) fn piece_at(
    inner: &Inner,
    ep: &EndpointState,
    cur: u64,
    last: u64,
    access: Permissions,
) -> Result<Fragment> {
    let identity = Fragment {
        iova: cur,
        gpa: GuestAddress(cur),
        len: last - cur + 1,
        perm: Permissions::ReadWrite,
    };
    let fail = |iova, reason| {
        record(
            inner,
            Fault {
                endpoint: ep.id,
                iova,
                access,
                reason,
            },
        )
    };
    let Some(domain) = inner.domain_at(ep.domain()) else {
        if inner.bypass_unattached() {
            return Ok(identity);
        }
        return Err(fail(cur, FaultReason::NoDomain));
    };
    if domain.is_bypass() {
        return Ok(identity);
    }
    let Some(root) = domain.root() else {
        return Err(fail(cur, FaultReason::Unmapped));
    };
    match walk_piece(root, cur, last, access) {
        Ok(p) => Ok(Fragment {
            iova: cur,
            gpa: GuestAddress(p.gpa),
            len: p.len,
            perm: p.perm,
        }),
        Err((at, perm)) => Err(fail(
            at,
            if perm {
                FaultReason::Permission
            } else {
                FaultReason::Unmapped
            },
        )),
    }
}

/// Translate and check, recording a failure in the fault log.
#[inline]
pub(crate) fn check_recorded<'a>(
    inner: &'a Inner,
    ep: &EndpointState,
    cache: Option<&LeafCache>,
    iova: u64,
    len: u64,
    access: Permissions,
) -> Result<Checked<'a>> {
    if len == 0 {
        return Err(Error::ZeroLength { iova });
    }
    check(inner, ep, cache, iova, len, access).map_err(|fault| record(inner, fault))
}

#[cold]
fn record(inner: &Inner, fault: Fault) -> Error {
    inner.faults.record(fault);
    Error::Fault(fault)
}

/// Translate, recording a failure in the fault log.
#[inline]
pub(crate) fn translate<'a>(
    inner: &'a Inner,
    ep: &EndpointState,
    cache: Option<&LeafCache>,
    iova: u64,
    len: u64,
    access: Permissions,
) -> Result<Translation<'a>> {
    let (first, rest) = check_recorded(inner, ep, cache, iova, len, access)?;
    Ok(Translation {
        first: Some(first),
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_in_one_page_accepts_exactly_ranges_inside_one_page_below_the_input_limit() {
        let page_of_max = MAX_INPUT_ADDRESS & !0xfff;
        for (iova, count, want) in [
            (0x1000, 0x1000, true),
            (0x1000, 0x1001, false),
            (0x1001, 0x1000, false),
            (0x1fff, 1, true),
            (0x1fff, 2, false),
            (page_of_max, 0x1000, true),
            (MAX_INPUT_ADDRESS, 1, true),
            (MAX_INPUT_ADDRESS + 1, 1, false),
            (u64::MAX - 0xfff, 0x1000, false),
            (u64::MAX, 1, false),
            (0, u64::MAX, false),
            (0xfff, u64::MAX, false),
        ] {
            assert_eq!(in_one_page(iova, count), want, "{iova:#x} + {count:#x}");
        }
    }
}
