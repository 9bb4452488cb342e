// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Domain and endpoint handles: map/unmap on a domain's IO page table, and lock-free
//! translation for an endpoint.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::Permissions;

use crate::config::PAGE_SIZE_4K;
use crate::error::{checked_last, Error, Result};
use crate::iommu::{lock, DomainSlot, DomainState, EndpointState, Inner};
use crate::quiesce::AccessGuard;
use crate::spin::SpinGuard;
use crate::table::{self, perm_bits, Leaf, LeafCache, Level, ADDR_MASK, END, START, VALID};
use crate::translate::{self, Translation};

/// A handle on one domain's IO page table (see [`Iommu::domain`](crate::Iommu::domain)). Operations through a
/// handle skip the domain-id lookup; they fail with [`Error::UnknownDomain`] once the
/// domain is destroyed.
#[derive(Clone, Debug)]
pub struct Domain {
    pub(crate) inner: Arc<Inner>,
    pub(crate) slot: usize,
    pub(crate) id: u32,
    pub(crate) instance: u64,
}

/// A handle on one endpoint, for lock-free translation (see [`Iommu::endpoint`](crate::Iommu::endpoint)).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub(crate) inner: Arc<Inner>,
    pub(crate) state: Arc<EndpointState>,
    /// INVARIANT: holds only tables of `inner`.
    pub(crate) cache: LeafCache,
}

impl Domain {
    /// The domain id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn lock_state(&self) -> Result<(&DomainSlot, SpinGuard<'_, DomainState>)> {
        let ds = &self.inner.domains[self.slot];
        let st = ds.state.lock();
        if st.instance != self.instance {
            return Err(Error::UnknownDomain(self.id));
        }
        if ds.is_bypass() {
            return Err(Error::BypassDomain(self.id));
        }
        Ok((ds, st))
    }

    /// Number of mappings in the domain.
    pub fn mapping_count(&self) -> Result<usize> {
        let ds = &self.inner.domains[self.slot];
        let st = ds.state.lock();
        if st.instance != self.instance {
            return Err(Error::UnknownDomain(self.id));
        }
        Ok(st.mappings)
    }

    /// Map `iova..iova+len` to `gpa..gpa+len` with `perm`.
    ///
    /// `iova`, `gpa` and `len` must be multiples of 4 KiB; 2 MiB and 1 GiB leaves are
    /// used where the page size mask, alignment and length allow. The range must be
    /// inside the input range, must not overlap an existing mapping or a reserved
    /// region of an attached endpoint, and must fit the caps. On error nothing changes.
    ///
    /// ```
    /// use vm_iommu::{Config, Error, Iommu};
    /// use vm_memory::Permissions;
    ///
    /// let iommu = Iommu::new(Config::default()).unwrap();
    /// let d = iommu.create_domain(1, false).unwrap();
    /// d.map(0x20_0000, 0x4000_0000, 0x20_0000, Permissions::ReadWrite).unwrap();
    /// assert!(matches!(
    ///     d.map(0x20_1000, 0, 0x1000, Permissions::Read),
    ///     Err(Error::Overlap { existing: 0x20_1000, .. })
    /// ));
    /// ```
    pub fn map(&self, iova: u64, gpa: u64, len: u64, perm: Permissions) -> Result<()> {
        let last = checked_last(iova, len)?;
        checked_last(gpa, len)?;
        if (iova | gpa | len) & (PAGE_SIZE_4K - 1) != 0 {
            return Err(Error::Unaligned {
                iova,
                gpa,
                len,
                granule: PAGE_SIZE_4K,
            });
        }
        if perm == Permissions::No {
            return Err(Error::NoPermissions { iova, len });
        }
        self.inner.check_in_range(iova, len, last)?;
        let (ds, mut st) = self.lock_state()?;
        let Some(root) = ds.root() else {
            return Err(Error::UnknownDomain(self.id));
        };
        // One 4 KiB page: a single lookup tells whether it is mapped (by a page or a
        // block leaf) and finds its leaf table if there is one.
        let (single, leaf) = if len == PAGE_SIZE_4K {
            let (raw, _, leaf) = page_lookup(&mut st, root, iova);
            (Some(raw & VALID != 0), leaf)
        } else {
            (None, None)
        };
        let existing = match single {
            Some(true) => Some(iova),
            Some(false) => None,
            None => root.first_valid(iova, last),
        };
        if let Some(existing) = existing {
            return Err(Error::Overlap {
                iova,
                len,
                existing,
            });
        }
        for ep in &st.endpoints {
            if ep.reserved_len.load(Ordering::Relaxed) == 0 {
                continue;
            }
            for r in lock(&ep.reserved).iter() {
                if *r.start() <= last && iova <= *r.end() {
                    return Err(Error::Reserved {
                        iova,
                        len,
                        endpoint: ep.id,
                        first: *r.start(),
                        last: *r.end(),
                    });
                }
            }
        }
        if st.mappings >= self.inner.max_mappings {
            return Err(Error::TooManyMappings {
                domain: self.id,
                max: self.inner.max_mappings,
            });
        }
        if let Some(leaf) = leaf {
            // The page's leaf table exists: no table to create, one entry to publish.
            leaf.store_entry(
                iova,
                (gpa & ADDR_MASK) | VALID | START | END | perm_bits(perm),
            );
            st.mappings += 1;
            return Ok(());
        }
        let available = self.inner.max_tables.saturating_sub(st.tables);
        let needed =
            table::tables_needed(root, iova, last, gpa, self.inner.page_size_mask, available);
        if needed > available {
            return Err(Error::TooManyPageTables {
                domain: self.id,
                needed,
                available,
            });
        }
        // `slot < max_domains <= MAX_DOMAINS` (checked by `Config::validate`).
        let tag = table::slot_tag(self.slot as u32 + 1);
        // Directory slots may change (block leaves): the writers' cache starts over.
        st.last_leaf.clear();
        st.tables +=
            table::write_mapping(root, iova, last, gpa, perm, self.inner.page_size_mask, tag);
        st.mappings += 1;
        Ok(())
    }

    /// Unmap every mapping inside `iova..iova+len`; returns how many were removed.
    ///
    /// Only whole mappings are removed: if the range starts or ends inside a mapping
    /// the call fails with [`Error::WouldSplit`] and removes nothing (virtio-iommu
    /// semantics). Parts of the range that are not mapped are ignored.
    ///
    /// When this returns, the invalidation is final: no translation that starts
    /// afterwards (on any thread that synchronizes with the return, e.g. through the
    /// guest's used ring or a channel) yields the old mapping.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<usize> {
        let last = checked_last(iova, len)?;
        self.inner.check_in_range(iova, len, last)?;
        let (ds, mut st) = self.lock_state()?;
        let Some(root) = ds.root() else {
            return Ok(0);
        };
        if len == PAGE_SIZE_4K && iova & (PAGE_SIZE_4K - 1) == 0 {
            // One aligned page: unmapped, or a whole one-page mapping, is decided by a
            // single lookup; anything else takes the general path below.
            match page_lookup(&mut st, root, iova) {
                (raw, _, _) if raw & VALID == 0 => return Ok(0),
                (raw, 12, Some(leaf)) if raw & (START | END) == START | END => {
                    leaf.clear_entry_seqcst(iova);
                    st.mappings -= 1.min(st.mappings);
                    self.inner.unmapped();
                    for ep in &st.endpoints {
                        ep.quiesce.synchronize_after_seqcst_clear();
                    }
                    return Ok(1);
                }
                _ => {}
            }
        }
        let (raw, shift) = root.lookup(iova);
        let leaf_base = iova & !((1u64 << shift) - 1);
        if raw & VALID != 0 && (raw & START == 0 || leaf_base != iova) {
            return Err(Error::WouldSplit {
                iova,
                len,
                split_at: iova,
            });
        }
        let (raw, shift) = root.lookup(last);
        let leaf_last = last | ((1u64 << shift) - 1);
        if raw & VALID != 0 && (raw & END == 0 || leaf_last != last) {
            return Err(Error::WouldSplit {
                iova,
                len,
                split_at: last,
            });
        }
        // Block leaves may go: the writers' cache starts over.
        st.last_leaf.clear();
        let removed = root.clear(iova, last);
        st.mappings -= removed.min(st.mappings);
        if removed > 0 {
            self.finish_unmap(&st);
        }
        drop(st);
        Ok(removed)
    }

    /// After entries were cleared: bump the invalidation generation and wait for access
    /// guards that may still use the removed entries. The caller keeps the domain lock
    /// so that the IOVAs cannot be mapped again meanwhile.
    fn finish_unmap(&self, st: &DomainState) {
        fence(Ordering::SeqCst);
        self.inner.unmapped();
        for ep in &st.endpoints {
            ep.quiesce.synchronize_after_seqcst_clear();
        }
    }
}

/// `root.lookup_leaf(iova)` for a one-page operation, through the writers' cache of
/// the last leaf table. `st` is the locked state of the slot whose root is `root`.
#[inline(always)]
fn page_lookup<'a>(
    st: &mut DomainState,
    root: &'a table::Root,
    iova: u64,
) -> (u64, u32, Option<&'a Leaf>) {
    // SAFETY: the callers pass the root and the locked state of the same slot
    // (`lock_state`'s `ds.root()` and guard).
    if let Some(leaf) = unsafe { st.last_leaf.get(iova, root) } {
        return (leaf.entry(iova), 12, Some(leaf));
    }
    let r = root.lookup_leaf(iova);
    if let (_, 12, Some(leaf)) = r {
        st.last_leaf.set(iova, leaf);
    }
    r
}

impl Endpoint {
    /// Start a guarded access section: until the guard is dropped, unmap, detach,
    /// attach and destroy that remove translations of this endpoint wait before they
    /// return, so no byte moves through a removed translation after they returned.
    ///
    /// ```
    /// use vm_iommu::{Config, Iommu};
    /// use vm_memory::Permissions;
    ///
    /// let iommu = Iommu::new(Config::default()).unwrap();
    /// let d = iommu.create_domain(1, false).unwrap();
    /// iommu.attach(1, 1).unwrap();
    /// d.map(0x1000, 0x8000, 0x1000, Permissions::Read).unwrap();
    /// let ep = iommu.endpoint(1).unwrap();
    /// {
    ///     let _guard = ep.pin();
    ///     let t = ep.translate(0x1000, 8, Permissions::Read).unwrap();
    ///     // ... move bytes using `t` ...
    /// } // an unmap racing with this block returns only after this point
    /// d.unmap(0x1000, 0x1000).unwrap();
    /// ```
    pub fn pin(&self) -> AccessGuard<'_> {
        self.state.quiesce.pin()
    }

    /// The endpoint id.
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// Translate `iova..iova+len` for `access`, lock-free. Failures are typed
    /// ([`Error::Fault`], [`Error::ZeroLength`]) and faults are recorded in the log.
    ///
    /// ```
    /// use vm_iommu::{Config, Error, FaultReason, Iommu};
    /// use vm_memory::Permissions;
    ///
    /// let iommu = Iommu::new(Config::default()).unwrap();
    /// let ep = iommu.endpoint(3).unwrap();
    /// match ep.translate(0x1000, 4, Permissions::Read) {
    ///     Err(Error::Fault(f)) => assert_eq!(f.reason, FaultReason::NoDomain),
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    #[inline]
    pub fn translate(&self, iova: u64, len: u64, access: Permissions) -> Result<Translation<'_>> {
        translate::translate(
            &self.inner,
            &self.state,
            Some(&self.cache),
            iova,
            len,
            access,
        )
    }
}

#[cfg(test)]
#[path = "domain_tests.rs"]
mod tests;
