// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The free space of an IOVA domain: a treap of maximal free gaps, keyed by
//! their first pfn and augmented with, per subtree, the longest gap and the
//! longest naturally aligned run (saturated at 65535 granules) for each of
//! the first [`EXACT_ORDERS`] alignment orders.
//!
//! "Highest position `p`, aligned to `2^order`, with `[p, p + size - 1]` free
//! and inside `[lo, hi]`" is answered by one descent that visits the right
//! subtree first and prunes every subtree whose augmentation shows that no
//! gap in it can hold the request. For `order < EXACT_ORDERS` (sizes up to
//! 2^15 granules, below the saturation) the pruning is exact for subtrees that lie inside `[lo, hi]`, so only the two boundary
//! paths can fail: `O(depth)`. For larger orders the bound of order
//! `EXACT_ORDERS - 1` is used, which may visit gaps that are long enough but
//! misaligned; see the module documentation of `iova`.
//!
//! Treap priorities are a keyed hash of the node's arena index with a seed
//! drawn per tree from the standard library's random hasher keys, so the
//! depth is `O(log n)` in expectation whatever order of allocations and
//! frees a guest chooses.
//!
//! Gaps are never adjacent and never overlap (a free merges with its
//! neighbours), so changing the first pfn of a gap within the space it
//! already covers keeps the search-tree order: most updates are in place
//! along one root-to-node path, without rotations.

use std::fmt;

/// Alignment orders tracked exactly by the augmentation (1 to 2^15 granules).
pub(super) const EXACT_ORDERS: usize = 16;

/// An inclusive pfn range.
pub(super) type Gap = (u64, u64);

const NIL: u32 = u32::MAX;
// One node per cache line.
const _: () = assert!(std::mem::size_of::<Node>() == 64);
/// Largest number of gap nodes (the arena is indexed by `u32`).
const MAX_NODES: usize = (u32::MAX - 1) as usize;

/// One cache line: the treap priority is a hash of the node's index.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Node {
    lo: u64,
    hi: u64,
    left: u32,
    right: u32,
    /// Longest gap in the subtree.
    max_len: u64,
    /// Per order `k`: the longest run starting `2^k`-aligned in one gap of
    /// the subtree, saturated at `u16::MAX`.
    fit: [u16; EXACT_ORDERS],
}

/// The longest run in `[lo, hi]` that starts on a multiple of `2^order`
/// (`lo <= hi < 2^63`, which pfns of a granule of 4 KiB or more are).
#[inline]
fn aligned_run(lo: u64, hi: u64, order: usize) -> u64 {
    let mask = (1u64 << order) - 1;
    let start = lo.saturating_add(mask) & !mask;
    hi.saturating_add(1).saturating_sub(start)
}

/// Highest `p` aligned to `2^order` with `lo <= p` and `p + size - 1 <= hi`.
pub(super) fn fit_in(lo: u64, hi: u64, size: u64, order: u32) -> Option<u64> {
    if size == 0 || lo > hi {
        return None;
    }
    let top = hi.checked_sub(size - 1)?;
    if top < lo {
        return None;
    }
    let mask = 1u64.checked_shl(order)?.wrapping_sub(1);
    let p = top & !mask;
    (p >= lo).then_some(p)
}

/// The free gaps of a domain (inclusive pfn ranges).
pub(super) struct GapTree {
    nodes: Vec<Node>,
    free_slots: Vec<u32>,
    root: u32,
    count: usize,
    free_granules: u64,
    seed: u64,
}

impl fmt::Debug for GapTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GapTree")
            .field("gaps", &self.count)
            .field("free_granules", &self.free_granules)
            .finish_non_exhaustive()
    }
}

impl GapTree {
    /// An empty tree.
    pub(super) fn new() -> Self {
        GapTree {
            nodes: Vec::new(),
            free_slots: Vec::new(),
            root: NIL,
            count: 0,
            free_granules: 0,
            seed: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
        }
    }

    /// Number of gaps.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Total free granules.
    pub(super) fn free_granules(&self) -> u64 {
        self.free_granules
    }

    /// Whether one more gap can be stored.
    pub(super) fn can_insert(&self) -> bool {
        !self.free_slots.is_empty() || self.nodes.len() < MAX_NODES
    }

    fn n(&self, t: u32) -> &Node {
        &self.nodes[t as usize]
    }

    fn n_mut(&mut self, t: u32) -> &mut Node {
        &mut self.nodes[t as usize]
    }

    /// The treap priority of node `t`: splitmix64 of its index keyed by a
    /// per-tree random seed, so that priorities need no storage and no
    /// caller can predict them (and so unbalance the treap).
    fn prio(&self, t: u32) -> u64 {
        let mut z = (u64::from(t) ^ self.seed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn update(&mut self, t: u32) {
        let (lo, hi, left, right) = {
            let n = self.n(t);
            (n.lo, n.hi, n.left, n.right)
        };
        let mut max_len = (hi - lo).saturating_add(1);
        let mut fit = [0u16; EXACT_ORDERS];
        for (k, f) in fit.iter_mut().enumerate() {
            *f = aligned_run(lo, hi, k).min(u64::from(u16::MAX)) as u16;
        }
        for c in [left, right] {
            if c != NIL {
                let cn = self.n(c);
                max_len = max_len.max(cn.max_len);
                for (f, cf) in fit.iter_mut().zip(cn.fit.iter()) {
                    *f = (*f).max(*cf);
                }
            }
        }
        let n = self.n_mut(t);
        n.max_len = max_len;
        n.fit = fit;
    }

    fn new_node(&mut self, lo: u64, hi: u64) -> Option<u32> {
        let node = Node {
            lo,
            hi,
            left: NIL,
            right: NIL,
            max_len: 0,
            fit: [0; EXACT_ORDERS],
        };
        let t = if let Some(t) = self.free_slots.pop() {
            self.nodes[t as usize] = node;
            t
        } else {
            if self.nodes.len() >= MAX_NODES {
                return None;
            }
            self.nodes.push(node);
            u32::try_from(self.nodes.len() - 1).ok()?
        };
        self.update(t);
        Some(t)
    }

    /// Splits `t` into (gaps with `lo < key`, gaps with `lo >= key`).
    fn split(&mut self, t: u32, key: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.n(t).lo < key {
            let (a, b) = self.split(self.n(t).right, key);
            self.n_mut(t).right = a;
            self.update(t);
            (t, b)
        } else {
            let (a, b) = self.split(self.n(t).left, key);
            self.n_mut(t).left = b;
            self.update(t);
            (a, t)
        }
    }

    /// Joins two treaps, every key of `a` below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.prio(a) > self.prio(b) {
            let r = self.merge(self.n(a).right, b);
            self.n_mut(a).right = r;
            self.update(a);
            a
        } else {
            let l = self.merge(a, self.n(b).left);
            self.n_mut(b).left = l;
            self.update(b);
            b
        }
    }

    /// Inserts the gap `[lo, hi]`, which must not touch another gap.
    /// Returns false (and changes nothing) if the arena is full.
    pub(super) fn insert(&mut self, lo: u64, hi: u64) -> bool {
        let Some(node) = self.new_node(lo, hi) else {
            return false;
        };
        self.root = self.insert_rec(self.root, node);
        self.count += 1;
        self.free_granules = self
            .free_granules
            .saturating_add((hi - lo).saturating_add(1));
        true
    }

    /// Treap insert: descend by key to where the new node's priority
    /// belongs, split the subtree there; one update per node on the path.
    fn insert_rec(&mut self, t: u32, node: u32) -> u32 {
        if t == NIL {
            return node;
        }
        let key = self.n(node).lo;
        if self.prio(node) > self.prio(t) {
            let (l, r) = self.split(t, key);
            let n = self.n_mut(node);
            n.left = l;
            n.right = r;
            self.update(node);
            return node;
        }
        if key < self.n(t).lo {
            let l = self.insert_rec(self.n(t).left, node);
            self.n_mut(t).left = l;
        } else {
            let r = self.insert_rec(self.n(t).right, node);
            self.n_mut(t).right = r;
        }
        self.update(t);
        t
    }

    /// Removes the gap that starts at `lo`; returns it.
    pub(super) fn remove(&mut self, lo: u64) -> Option<(u64, u64)> {
        let mut removed = None;
        self.root = self.remove_rec(self.root, lo, &mut removed);
        if let Some((a, b)) = removed {
            self.count -= 1;
            self.free_granules = self.free_granules.saturating_sub((b - a).saturating_add(1));
        }
        removed
    }

    fn remove_rec(&mut self, t: u32, key: u64, removed: &mut Option<(u64, u64)>) -> u32 {
        if t == NIL {
            return NIL;
        }
        let (tlo, thi, left, right) = {
            let n = self.n(t);
            (n.lo, n.hi, n.left, n.right)
        };
        if key == tlo {
            *removed = Some((tlo, thi));
            self.free_slots.push(t);
            return self.merge(left, right);
        }
        if key < tlo {
            let l = self.remove_rec(left, key, removed);
            self.n_mut(t).left = l;
        } else {
            let r = self.remove_rec(right, key, removed);
            self.n_mut(t).right = r;
        }
        if removed.is_some() {
            self.update(t);
        }
        t
    }

    fn modify_rec(&mut self, t: u32, key: u64, lo: u64, hi: u64) -> Option<(u64, u64)> {
        if t == NIL {
            return None;
        }
        let tk = self.n(t).lo;
        let old = if key == tk {
            let n = self.n_mut(t);
            let old = (n.lo, n.hi);
            n.lo = lo;
            n.hi = hi;
            Some(old)
        } else if key < tk {
            self.modify_rec(self.n(t).left, key, lo, hi)
        } else {
            self.modify_rec(self.n(t).right, key, lo, hi)
        };
        if old.is_some() {
            self.update(t);
        }
        old
    }

    /// Changes the gap that starts at `key` to `[lo, hi]` in place. The new
    /// range must not reach into or touch another gap.
    pub(super) fn modify(&mut self, key: u64, lo: u64, hi: u64) -> bool {
        match self.modify_rec(self.root, key, lo, hi) {
            Some((olo, ohi)) => {
                self.free_granules = self
                    .free_granules
                    .saturating_sub((ohi - olo).saturating_add(1))
                    .saturating_add((hi - lo).saturating_add(1));
                true
            }
            None => false,
        }
    }

    /// The gaps just below and just above the non-free pfn `pfn`: the one
    /// with the greatest start below it and the one with the smallest start
    /// above it, in one descent.
    pub(super) fn neighbours(&self, pfn: u64) -> (Option<Gap>, Option<Gap>) {
        let mut t = self.root;
        let (mut below, mut above) = (None, None);
        while t != NIL {
            let n = self.n(t);
            if n.lo < pfn {
                below = Some((n.lo, n.hi));
                t = n.right;
            } else if n.lo > pfn {
                above = Some((n.lo, n.hi));
                t = n.left;
            } else {
                // A gap starting at pfn: pfn is free; report it as above.
                above = Some((n.lo, n.hi));
                t = n.left;
            }
        }
        (below, above)
    }

    /// Finds the highest fit (as [`GapTree::highest_fit`]) and removes
    /// `[p, p + size - 1]` from its gap, in one descent. Returns `p`.
    pub(super) fn take_highest_fit(
        &mut self,
        lo: u64,
        hi: u64,
        size: u64,
        order: u32,
    ) -> Option<u64> {
        if lo > hi || size == 0 || !self.can_insert() {
            return None;
        }
        let mut split = None;
        let (root, found) = self.take_rec(self.root, lo, hi, size, order, &mut split);
        self.root = root;
        let p = found?;
        self.free_granules = self.free_granules.saturating_sub(size);
        if let Some((slo, shi)) = split {
            // The upper rest of a gap cut in the middle (capacity checked).
            let before = self.free_granules;
            self.insert(slo, shi);
            self.free_granules = before;
        }
        Some(p)
    }

    /// Returns the new root of the subtree and the position taken.
    fn take_rec(
        &mut self,
        t: u32,
        lo: u64,
        hi: u64,
        size: u64,
        order: u32,
        split: &mut Option<(u64, u64)>,
    ) -> (u32, Option<u64>) {
        if t == NIL {
            return (t, None);
        }
        let (nlo, nhi, left, right) = {
            let n = self.n(t);
            if n.max_len < size {
                return (t, None);
            }
            let k = (order as usize).min(EXACT_ORDERS - 1);
            if size < u64::from(u16::MAX) && u64::from(n.fit[k]) < size {
                return (t, None);
            }
            (n.lo, n.hi, n.left, n.right)
        };
        if nlo < hi {
            let (r, found) = self.take_rec(right, lo, hi, size, order, split);
            if found.is_some() {
                self.n_mut(t).right = r;
                self.update(t);
                return (t, found);
            }
        }
        if nlo <= hi && nhi >= lo {
            if let Some(p) = fit_in(nlo.max(lo), nhi.min(hi), size, order) {
                let end = p + (size - 1);
                let keep_low = p > nlo;
                let keep_high = end < nhi;
                if keep_high && keep_low {
                    *split = Some((end + 1, nhi));
                }
                if !keep_low && !keep_high {
                    // The whole gap goes: replace the node by its children.
                    self.free_slots.push(t);
                    self.count -= 1;
                    let m = self.merge(left, right);
                    return (m, Some(p));
                }
                let n = self.n_mut(t);
                if keep_low {
                    n.hi = p - 1;
                } else {
                    n.lo = end + 1;
                }
                self.update(t);
                return (t, Some(p));
            }
        }
        if nlo > lo {
            let (l, found) = self.take_rec(left, lo, hi, size, order, split);
            if found.is_some() {
                self.n_mut(t).left = l;
                self.update(t);
                return (t, found);
            }
        }
        (t, None)
    }

    /// The gap with the greatest start `<= pfn`.
    pub(super) fn floor(&self, pfn: u64) -> Option<(u64, u64)> {
        let mut t = self.root;
        let mut best = None;
        while t != NIL {
            let n = self.n(t);
            if n.lo <= pfn {
                best = Some((n.lo, n.hi));
                t = n.right;
            } else {
                t = n.left;
            }
        }
        best
    }

    /// The gap with the smallest start `>= pfn`.
    pub(super) fn ceil(&self, pfn: u64) -> Option<(u64, u64)> {
        let mut t = self.root;
        let mut best = None;
        while t != NIL {
            let n = self.n(t);
            if n.lo >= pfn {
                best = Some((n.lo, n.hi));
                t = n.left;
            } else {
                t = n.right;
            }
        }
        best
    }

    /// The gap containing `pfn`.
    pub(super) fn containing(&self, pfn: u64) -> Option<(u64, u64)> {
        self.floor(pfn).filter(|&(_, hi)| hi >= pfn)
    }

    /// Highest `p` aligned to `2^order` such that `[p, p + size - 1]` is free
    /// and inside `[lo, hi]` (read-only; the allocator uses
    /// [`GapTree::take_highest_fit`]).
    #[cfg(test)]
    pub(super) fn highest_fit(&self, lo: u64, hi: u64, size: u64, order: u32) -> Option<u64> {
        if lo > hi || size == 0 {
            return None;
        }
        self.query(self.root, lo, hi, size, order)
    }

    #[cfg(test)]
    fn query(&self, t: u32, lo: u64, hi: u64, size: u64, order: u32) -> Option<u64> {
        if t == NIL {
            return None;
        }
        let n = self.n(t);
        if n.max_len < size {
            return None;
        }
        let k = (order as usize).min(EXACT_ORDERS - 1);
        if size < u64::from(u16::MAX) && u64::from(n.fit[k]) < size {
            return None;
        }
        // The right subtree holds gaps starting above n.lo.
        if n.lo < hi {
            if let Some(p) = self.query(n.right, lo, hi, size, order) {
                return Some(p);
            }
        }
        if n.lo <= hi && n.hi >= lo {
            if let Some(p) = fit_in(n.lo.max(lo), n.hi.min(hi), size, order) {
                return Some(p);
            }
        }
        // The left subtree holds gaps ending below n.lo.
        if n.lo > lo {
            return self.query(n.left, lo, hi, size, order);
        }
        None
    }

    /// Depth of the treap (tests).
    #[cfg(test)]
    pub(super) fn depth(&self) -> usize {
        fn d(t: &GapTree, n: u32) -> usize {
            if n == NIL {
                0
            } else {
                1 + d(t, t.n(n).left).max(d(t, t.n(n).right))
            }
        }
        d(self, self.root)
    }

    /// Every gap, lowest first (tests and consistency checks).
    #[cfg(test)]
    pub(super) fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = 0u64;
        while let Some(g) = self.ceil(next) {
            out.push(g);
            match g.1.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over a list of gaps.
    fn brute(gaps: &[(u64, u64)], lo: u64, hi: u64, size: u64, order: u32) -> Option<u64> {
        gaps.iter()
            .rev()
            .filter(|g| g.0 <= hi && g.1 >= lo)
            .find_map(|g| fit_in(g.0.max(lo), g.1.min(hi), size, order))
    }

    #[test]
    fn fit_in_rules() {
        assert_eq!(fit_in(1, 100, 4, 2), Some(96));
        assert_eq!(fit_in(1, 3, 4, 2), None);
        assert_eq!(fit_in(4, 7, 4, 2), Some(4));
        assert_eq!(fit_in(5, 11, 4, 2), Some(8));
        assert_eq!(fit_in(5, 10, 4, 2), None);
        assert_eq!(fit_in(0, u64::MAX, 1, 0), Some(u64::MAX));
        assert_eq!(fit_in(0, u64::MAX, 2, 1), Some(u64::MAX - 1));
    }

    #[test]
    fn matches_brute_force() {
        let mut t = GapTree::new();
        let mut gaps = Vec::new();
        // Gaps of varied length and alignment.
        let mut x = 3u64;
        let mut pos = 1u64;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 1 + (x >> 33) % 40;
            let skip = 1 + (x >> 50) % 7;
            assert!(t.insert(pos, pos + len - 1));
            gaps.push((pos, pos + len - 1));
            pos += len + skip;
        }
        assert_eq!(t.gaps(), gaps);
        for size in [1u64, 2, 3, 4, 7, 8, 16, 32, 33] {
            let order = 64 - (size - 1).leading_zeros();
            for (lo, hi) in [(1, pos), (100, 2000), (37, 38), (500, 9000), (0, 5)] {
                assert_eq!(
                    t.highest_fit(lo, hi, size, order),
                    brute(&gaps, lo, hi, size, order),
                    "size {size} range {lo}..={hi}"
                );
            }
        }
        // Remove and modify, then compare again.
        for g in gaps.iter().step_by(3) {
            assert_eq!(t.remove(g.0), Some(*g));
        }
        let rest: Vec<_> = gaps.iter().copied().skip(1).step_by(3).collect();
        for g in &rest {
            assert!(t.modify(g.0, g.0, g.0));
        }
        let expect: Vec<_> = gaps
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(i, g)| if i % 3 == 1 { (g.0, g.0) } else { *g })
            .collect();
        assert_eq!(t.gaps(), expect);
        assert_eq!(t.len(), expect.len());
        let total: u64 = expect.iter().map(|g| g.1 - g.0 + 1).sum();
        assert_eq!(t.free_granules(), total);
        for size in [1u64, 2, 4, 8] {
            let order = 64 - (size - 1).leading_zeros();
            assert_eq!(
                t.highest_fit(1, pos, size, order),
                brute(&expect, 1, pos, size, order)
            );
        }
    }

    #[test]
    fn take_matches_brute_force() {
        let mut t = GapTree::new();
        let mut gaps = vec![(1u64, 5000u64)];
        assert!(t.insert(1, 5000));
        let mut x = 7u64;
        for step in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = [1u64, 1, 2, 3, 4, 8, 5, 33][(x >> 60) as usize % 8];
            let order = 64 - (size - 1).leading_zeros();
            let hi = 1 + (x >> 20) % 5000;
            let lo = 1 + (x >> 40) % 100;
            let expect = brute(&gaps, lo, hi, size, order);
            let got = t.take_highest_fit(lo, hi, size, order);
            assert_eq!(got, expect, "step {step}");
            if let Some(p) = got {
                let i = gaps.iter().position(|g| g.0 <= p && g.1 >= p).unwrap();
                let g = gaps.remove(i);
                if g.1 > p + size - 1 {
                    gaps.insert(i, (p + size, g.1));
                }
                if g.0 < p {
                    gaps.insert(i, (g.0, p - 1));
                }
            }
            // Give back a random gap's neighbour range now and then.
            if step % 3 == 0 && gaps.len() > 1 {
                let i = (x >> 8) as usize % (gaps.len() - 1);
                let (a, b) = (gaps[i], gaps[i + 1]);
                // Free the whole hole between two gaps: merge them.
                assert!(t.remove(b.0).is_some());
                assert!(t.modify(a.0, a.0, b.1));
                gaps[i] = (a.0, b.1);
                gaps.remove(i + 1);
            }
            assert_eq!(t.len(), gaps.len());
        }
        assert_eq!(t.gaps(), gaps);
        let total: u64 = gaps.iter().map(|g| g.1 - g.0 + 1).sum();
        assert_eq!(t.free_granules(), total);
        let (below, above) = t.neighbours(gaps[0].1 + 1);
        assert_eq!(below, Some(gaps[0]));
        assert_eq!(above, gaps.get(1).copied());
    }

    #[test]
    fn large_orders_match_brute_force() {
        // Above the exact orders and the u16 saturation: pruning by bound.
        let mut t = GapTree::new();
        let mut gaps = Vec::new();
        let mut pos = 12_345u64;
        let mut x = 11u64;
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 30_000 + (x >> 40) % 200_000;
            assert!(t.insert(pos, pos + len - 1));
            gaps.push((pos, pos + len - 1));
            pos += len + 1 + (x >> 20) % 50_000;
        }
        for size in [40_000u64, 65_535, 65_536, 70_000, 131_072, 200_000, 250_000] {
            let order = 64 - (size - 1).leading_zeros();
            for (lo, hi) in [(1, pos), (pos / 3, pos / 2), (pos / 2, pos)] {
                assert_eq!(
                    t.highest_fit(lo, hi, size, order),
                    brute(&gaps, lo, hi, size, order),
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn depth_stays_logarithmic() {
        // Keys inserted in increasing order (a degenerate order for an
        // unbalanced tree), then every other one removed.
        let mut t = GapTree::new();
        for i in 0..20_000u64 {
            assert!(t.insert(3 * i + 1, 3 * i + 1));
        }
        assert!(t.depth() <= 80, "depth {}", t.depth());
        for i in (0..20_000u64).step_by(2) {
            assert!(t.remove(3 * i + 1).is_some());
        }
        assert!(t.depth() <= 80, "depth {}", t.depth());
        assert_eq!(t.len(), 10_000);
    }

    #[test]
    fn top_of_the_space() {
        let mut t = GapTree::new();
        assert!(t.insert(1, u64::MAX >> 12));
        assert_eq!(t.highest_fit(1, u64::MAX >> 12, 1, 0), Some(u64::MAX >> 12));
        assert_eq!(t.containing(5), Some((1, u64::MAX >> 12)));
        assert_eq!(t.remove(1), Some((1, u64::MAX >> 12)));
        assert_eq!(t.len(), 0);
        assert_eq!(t.highest_fit(1, 100, 1, 0), None);
    }
}
