// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtual IOMMU: domains, endpoints, attach/detach, map/unmap.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use vm_memory::{GuestMemoryBackend, Permissions};

use crate::config::{Config, PAGE_SIZE_4K};
use crate::domain::{Domain, Endpoint};
use crate::error::{Error, Fault, Result};
use crate::fault::{FaultLog, FaultNotifier};
use crate::quiesce::Quiesce;
use crate::spin::SpinLock;
use crate::table::{Child, LeafCache, Level, Root, WriterLeafCache};
use crate::translate::{self, Translation};
use crate::view::DeviceView;

/// Lock a mutex, ignoring poisoning: every critical section in this crate leaves its
/// data consistent before anything that could panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a value on its own cache lines, so that writers of it do not slow down
/// readers of its neighbours (false sharing).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Writer-side state of a domain slot.
#[derive(Debug)]
pub(crate) struct DomainState {
    /// Domain id while the slot is in use.
    pub(crate) id: u32,
    /// Non-zero while in use; distinguishes successive domains in one slot.
    pub(crate) instance: u64,
    /// Number of mappings.
    pub(crate) mappings: usize,
    /// Page tables allocated in this slot (kept across domains using the slot).
    pub(crate) tables: usize,
    /// Endpoints attached to the domain.
    pub(crate) endpoints: Vec<Arc<EndpointState>>,
    /// The leaf table of the last one-page map or unmap.
    pub(crate) last_leaf: WriterLeafCache,
}

/// One domain slot. Slots are allocated once, up to `max_domains`, and reused.
pub(crate) struct DomainSlot {
    pub(crate) root: Child<Root>,
    pub(crate) bypass: AtomicBool,
    /// Written by every map/unmap: padded away from the read-mostly fields above.
    pub(crate) state: CachePadded<SpinLock<DomainState>>,
}

impl std::fmt::Debug for DomainSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainSlot")
            .field("bypass", &self.bypass)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl DomainSlot {
    #[inline]
    pub(crate) fn is_bypass(&self) -> bool {
        self.bypass.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn root(&self) -> Option<&Root> {
        self.root.get()
    }
}

/// Shared state of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) id: u32,
    /// 0 when unattached, else domain slot index + 1.
    domain: AtomicU32,
    /// Reserved IOVA regions (writer side only; padded away from `domain`, which every
    /// translation reads).
    pub(crate) reserved: CachePadded<Mutex<Vec<RangeInclusive<u64>>>>,
    /// Number of reserved regions, readable without the lock. Changed only while the
    /// lock of the endpoint's domain (if any) is held, so a writer holding that lock
    /// may skip locking `reserved` when this is 0.
    pub(crate) reserved_len: AtomicUsize,
    /// Access guards of this endpoint.
    pub(crate) quiesce: Quiesce,
}

/// Lock-free endpoint lookup: open addressing over `OnceLock`s, insert-only.
#[derive(Debug)]
struct EndpointTable {
    slots: Box<[OnceLock<Arc<EndpointState>>]>,
    mask: usize,
}

impl EndpointTable {
    fn new(max: usize) -> Self {
        let size = max.saturating_mul(2).max(2).next_power_of_two();
        EndpointTable {
            slots: (0..size).map(|_| OnceLock::new()).collect(),
            mask: size - 1,
        }
    }

    fn start(&self, id: u32) -> usize {
        (id.wrapping_mul(0x9e37_79b9) as usize) & self.mask
    }

    fn find(&self, id: u32) -> Option<&Arc<EndpointState>> {
        let mut i = self.start(id);
        // The table is at most half full, so an empty slot ends every probe sequence.
        loop {
            let e = self.slots.get(i)?.get()?;
            if e.id == id {
                return Some(e);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Insert (caller holds the control lock and has checked the cap).
    fn insert(&self, ep: Arc<EndpointState>) {
        let mut i = self.start(ep.id);
        while let Some(slot) = self.slots.get(i) {
            if slot.get().is_none() {
                let _ = slot.set(ep);
                return;
            }
            i = (i + 1) & self.mask;
        }
    }
}

#[derive(Debug)]
struct Control {
    /// Domain id -> slot index.
    domains: BTreeMap<u32, usize>,
    free: Vec<usize>,
    endpoints: usize,
    next_instance: u64,
}

/// State shared by the IOMMU and its handles.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) input_range: (u64, u64),
    pub(crate) page_size_mask: u64,
    pub(crate) max_endpoints: usize,
    pub(crate) max_mappings: usize,
    pub(crate) max_tables: usize,
    pub(crate) max_reserved: usize,
    pub(crate) max_domains: usize,
    pub(crate) domains: Box<[DomainSlot]>,
    endpoints: EndpointTable,
    control: Mutex<Control>,
    pub(crate) bypass_unattached: AtomicBool,
    pub(crate) faults: FaultLog,
    /// Bumped after every change that removes or alters translations (unmap, detach,
    /// attach, destroy). Caches compare it to decide whether they are still valid.
    /// Unmaps bump it only once it is watched.
    pub(crate) invalidation: CachePadded<AtomicU64>,
    /// Whether anything reads `invalidation` ([`Inner::watch_generation`]): until
    /// then, unmaps skip bumping it (an atomic read-modify-write per unmap).
    generation_watched: AtomicBool,
}

impl EndpointState {
    /// The endpoint's domain slot + 1, or 0 when unattached.
    #[inline(always)]
    pub(crate) fn domain(&self) -> u32 {
        self.domain.load(Ordering::Acquire)
    }
}

impl Inner {
    #[inline]
    pub(crate) fn domain_of(&self, ep: &EndpointState) -> Option<&DomainSlot> {
        self.domain_at(ep.domain())
    }

    /// The slot for an endpoint's `domain` value (slot + 1, 0 = none).
    #[inline(always)]
    pub(crate) fn domain_at(&self, d: u32) -> Option<&DomainSlot> {
        self.domains.get((d as usize).checked_sub(1)?)
    }

    #[inline]
    pub(crate) fn bypass_unattached(&self) -> bool {
        self.bypass_unattached.load(Ordering::Acquire)
    }

    pub(crate) fn invalidated(&self) {
        self.invalidation.fetch_add(1, Ordering::AcqRel);
    }

    /// The generation bump of an unmap, which the caller ordered after its clearing
    /// with a `SeqCst` fence or a `SeqCst` read-modify-write of the last entry it
    /// cleared: only if the generation is watched.
    ///
    /// Why skipping is sound: an unmap whose `SeqCst` load here reads `false`
    /// precedes, in the single total order of `SeqCst` operations, the store of
    /// `true` in [`Inner::watch_generation`] and so that call's fence, and its clearing
    /// precedes its load. A reader of the generation reads only after such a fence
    /// (its own or, for an adapter, the one of its creation, which happens before its
    /// use), so by the fence rules of the memory model its table walks see the
    /// clearing: it never caches the removed entry under any generation.
    #[inline]
    pub(crate) fn unmapped(&self) {
        if self.generation_watched.load(Ordering::SeqCst) {
            self.invalidation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// From now on every unmap bumps the generation; the fence orders this
    /// before whatever the caller does next (see [`Inner::unmapped`]).
    pub(crate) fn watch_generation(&self) {
        if !self.generation_watched.load(Ordering::SeqCst) {
            self.generation_watched.store(true, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
    }

    pub(crate) fn check_in_range(&self, iova: u64, len: u64, last: u64) -> Result<()> {
        let (first, in_last) = self.input_range;
        if iova < first || last > in_last {
            return Err(Error::OutOfInputRange {
                iova,
                len,
                first,
                last: in_last,
            });
        }
        Ok(())
    }

    fn endpoint_or_new(&self, ctl: &mut Control, id: u32) -> Result<Arc<EndpointState>> {
        if let Some(ep) = self.endpoints.find(id) {
            return Ok(Arc::clone(ep));
        }
        if ctl.endpoints >= self.max_endpoints {
            return Err(Error::TooManyEndpoints {
                id,
                max: self.max_endpoints,
            });
        }
        let ep = Arc::new(EndpointState {
            id,
            domain: AtomicU32::new(0),
            reserved: CachePadded(Mutex::new(Vec::new())),
            reserved_len: AtomicUsize::new(0),
            quiesce: Quiesce::default(),
        });
        self.endpoints.insert(Arc::clone(&ep));
        ctl.endpoints += 1;
        Ok(ep)
    }

    fn slot_of(&self, ctl: &Control, domain: u32) -> Result<usize> {
        ctl.domains
            .get(&domain)
            .copied()
            .ok_or(Error::UnknownDomain(domain))
    }

    /// Check that none of `ep`'s reserved regions is mapped in `root`.
    fn check_reserved_unmapped(
        &self,
        regions: &[RangeInclusive<u64>],
        endpoint: u32,
        root: Option<&Root>,
    ) -> Result<()> {
        let Some(root) = root else { return Ok(()) };
        let (first, in_last) = self.input_range;
        for r in regions {
            let lo = (*r.start()).max(first);
            let hi = (*r.end()).min(in_last);
            if lo > hi {
                continue;
            }
            if let Some(at) = root.first_valid(lo, hi) {
                return Err(Error::Reserved {
                    iova: at,
                    len: PAGE_SIZE_4K,
                    endpoint,
                    first: *r.start(),
                    last: *r.end(),
                });
            }
        }
        Ok(())
    }
}

/// A virtual IOMMU: domains with IO page tables, endpoints attached to them, and the
/// fault log. Cheap to clone (all clones share one IOMMU).
///
/// ```
/// use vm_iommu::{Config, Iommu};
/// use vm_memory::{GuestAddress, Permissions};
///
/// let iommu = Iommu::new(Config::default()).unwrap();
/// iommu.create_domain(1, false).unwrap();
/// iommu.attach(7, 1).unwrap();
/// iommu.map(1, 0x10_0000, 0x8000, 0x1000, Permissions::Read).unwrap();
///
/// let frags: Vec<_> = iommu
///     .translate(7, 0x10_0010, 0x10, Permissions::Read)
///     .unwrap()
///     .collect::<Result<_, _>>()
///     .unwrap();
/// assert_eq!(frags[0].gpa, GuestAddress(0x8010));
///
/// // Writing is not permitted: a typed fault, also recorded in the fault log.
/// assert!(iommu.translate(7, 0x10_0000, 8, Permissions::Write).is_err());
/// assert_eq!(iommu.drain_faults(16).len(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Iommu {
    inner: Arc<Inner>,
}

impl Iommu {
    /// Create an IOMMU with the given geometry and caps.
    pub fn new(config: Config) -> Result<Self> {
        config.validate()?;
        let domains = (0..config.max_domains)
            .map(|_| DomainSlot {
                root: Child::new(),
                bypass: AtomicBool::new(false),
                state: CachePadded(SpinLock::new(DomainState {
                    id: 0,
                    instance: 0,
                    mappings: 0,
                    tables: 0,
                    endpoints: Vec::new(),
                    last_leaf: WriterLeafCache::default(),
                })),
            })
            .collect();
        let inner = Inner {
            input_range: (*config.input_range.start(), *config.input_range.end()),
            page_size_mask: config.page_size_mask,
            max_endpoints: config.max_endpoints,
            max_mappings: config.max_mappings_per_domain,
            max_tables: config.max_page_tables_per_domain,
            max_reserved: config.max_reserved_regions,
            max_domains: config.max_domains,
            domains,
            endpoints: EndpointTable::new(config.max_endpoints),
            control: Mutex::new(Control {
                domains: BTreeMap::new(),
                free: (0..config.max_domains).rev().collect(),
                endpoints: 0,
                next_instance: 1,
            }),
            bypass_unattached: AtomicBool::new(config.bypass_unattached),
            faults: FaultLog::new(config.fault_log_capacity),
            invalidation: CachePadded(AtomicU64::new(0)),
            generation_watched: AtomicBool::new(false),
        };
        Ok(Iommu {
            inner: Arc::new(inner),
        })
    }

    /// The page size mask (virtio-iommu `page_size_mask`).
    pub fn page_size_mask(&self) -> u64 {
        self.inner.page_size_mask
    }

    /// The input (IOVA) range, inclusive.
    pub fn input_range(&self) -> RangeInclusive<u64> {
        self.inner.input_range.0..=self.inner.input_range.1
    }

    /// Whether endpoints attached to no domain bypass translation.
    pub fn bypass_unattached(&self) -> bool {
        self.inner.bypass_unattached()
    }

    /// Switch bypass for unattached endpoints (virtio-iommu `bypass` config field).
    /// Turning it off is final like an unmap: translations that start afterwards fault.
    pub fn set_bypass_unattached(&self, bypass: bool) {
        let _ctl = lock(&self.inner.control);
        self.inner
            .bypass_unattached
            .store(bypass, Ordering::Release);
        self.inner.invalidated();
    }

    /// Create a domain. A bypass domain translates identically and holds no mappings.
    pub fn create_domain(&self, id: u32, bypass: bool) -> Result<Domain> {
        let mut ctl = lock(&self.inner.control);
        if ctl.domains.contains_key(&id) {
            return Err(Error::DomainExists(id));
        }
        let Some(slot) = ctl.free.pop() else {
            return Err(Error::TooManyDomains {
                id,
                max: self.inner.max_domains,
            });
        };
        let instance = ctl.next_instance;
        ctl.next_instance += 1;
        ctl.domains.insert(id, slot);
        let ds = &self.inner.domains[slot];
        let mut st = ds.state.lock();
        if ds.root.get().is_none() {
            ds.root.get_or_init(Root::new_boxed);
            st.tables += 1;
        }
        st.id = id;
        st.instance = instance;
        st.mappings = 0;
        st.last_leaf.clear();
        ds.bypass.store(bypass, Ordering::Release);
        Ok(Domain {
            inner: Arc::clone(&self.inner),
            slot,
            id,
            instance,
        })
    }

    /// Destroy a domain: its endpoints become unattached and its mappings are removed.
    pub fn destroy_domain(&self, id: u32) -> Result<()> {
        let mut ctl = lock(&self.inner.control);
        let slot = self.inner.slot_of(&ctl, id)?;
        ctl.domains.remove(&id);
        let ds = &self.inner.domains[slot];
        let mut st = ds.state.lock();
        for ep in &st.endpoints {
            ep.domain.store(0, Ordering::Release);
        }
        if let Some(root) = ds.root() {
            root.clear(0, crate::config::MAX_INPUT_ADDRESS);
        }
        for ep in st.endpoints.drain(..) {
            ep.quiesce.synchronize();
        }
        st.mappings = 0;
        st.instance = 0;
        st.last_leaf.clear();
        ds.bypass.store(false, Ordering::Release);
        drop(st);
        ctl.free.push(slot);
        self.inner.invalidated();
        Ok(())
    }

    /// A handle on domain `id`.
    pub fn domain(&self, id: u32) -> Result<Domain> {
        let ctl = lock(&self.inner.control);
        let slot = self.inner.slot_of(&ctl, id)?;
        let instance = self.inner.domains[slot].state.lock().instance;
        Ok(Domain {
            inner: Arc::clone(&self.inner),
            slot,
            id,
            instance,
        })
    }

    /// A handle on endpoint `id`, creating the (unattached) endpoint if it is new.
    pub fn endpoint(&self, id: u32) -> Result<Endpoint> {
        let mut ctl = lock(&self.inner.control);
        let state = self.inner.endpoint_or_new(&mut ctl, id)?;
        Ok(Endpoint {
            inner: Arc::clone(&self.inner),
            state,
            cache: LeafCache::default(),
        })
    }

    /// A [`DeviceView`] of `mem` as seen by endpoint `id` (created if new).
    pub fn view<M: GuestMemoryBackend>(&self, id: u32, mem: M) -> Result<DeviceView<M>> {
        Ok(DeviceView::new(self.endpoint(id)?, mem))
    }

    /// Attach endpoint `endpoint` (created if new) to `domain`, moving it from the
    /// domain it was attached to. Fails if one of the endpoint's reserved regions is
    /// mapped in `domain`.
    pub fn attach(&self, endpoint: u32, domain: u32) -> Result<()> {
        let mut ctl = lock(&self.inner.control);
        let new_slot = self.inner.slot_of(&ctl, domain)?;
        let existing = self.inner.endpoints.find(endpoint).cloned();
        if existing.is_none() && ctl.endpoints >= self.inner.max_endpoints {
            return Err(Error::TooManyEndpoints {
                id: endpoint,
                max: self.inner.max_endpoints,
            });
        }
        let old_slot = existing
            .as_ref()
            .and_then(|ep| (ep.domain.load(Ordering::Acquire) as usize).checked_sub(1));
        if old_slot == Some(new_slot) {
            return Ok(());
        }
        let new_ds = &self.inner.domains[new_slot];
        // Lock order: control, then domain slots by index, then reserved lists.
        let (mut new_st, old_st) = match old_slot {
            Some(o) if o < new_slot => {
                let old = self.inner.domains[o].state.lock();
                (new_ds.state.lock(), Some(old))
            }
            Some(o) => {
                let new = new_ds.state.lock();
                (new, Some(self.inner.domains[o].state.lock()))
            }
            None => (new_ds.state.lock(), None),
        };
        if let Some(ep) = &existing {
            if !new_ds.is_bypass() {
                let reserved = lock(&ep.reserved);
                self.inner
                    .check_reserved_unmapped(&reserved, endpoint, new_ds.root())?;
            }
        }
        let ep = match existing {
            Some(ep) => ep,
            None => self.inner.endpoint_or_new(&mut ctl, endpoint)?,
        };
        if let Some(mut old) = old_st {
            old.endpoints.retain(|e| !Arc::ptr_eq(e, &ep));
        }
        new_st.endpoints.push(Arc::clone(&ep));
        // `new_slot < max_domains <= MAX_DOMAINS` (checked by `Config::validate`).
        ep.domain.store(new_slot as u32 + 1, Ordering::Release);
        drop(new_st);
        self.inner.invalidated();
        if old_slot.is_some() {
            ep.quiesce.synchronize();
        }
        Ok(())
    }

    /// Detach `endpoint` from `domain`.
    pub fn detach(&self, endpoint: u32, domain: u32) -> Result<()> {
        let ctl = lock(&self.inner.control);
        let ep = self
            .inner
            .endpoints
            .find(endpoint)
            .cloned()
            .ok_or(Error::UnknownEndpoint(endpoint))?;
        let slot = self.inner.slot_of(&ctl, domain)?;
        if ep.domain.load(Ordering::Acquire) as usize != slot + 1 {
            return Err(Error::NotAttached { endpoint, domain });
        }
        let mut st = self.inner.domains[slot].state.lock();
        st.endpoints.retain(|e| !Arc::ptr_eq(e, &ep));
        ep.domain.store(0, Ordering::Release);
        drop(st);
        self.inner.invalidated();
        ep.quiesce.synchronize();
        Ok(())
    }

    /// The domain `endpoint` is attached to, if any.
    pub fn attached_domain(&self, endpoint: u32) -> Result<Option<u32>> {
        let _ctl = lock(&self.inner.control);
        let ep = self
            .inner
            .endpoints
            .find(endpoint)
            .ok_or(Error::UnknownEndpoint(endpoint))?;
        Ok(self.inner.domain_of(ep).map(|ds| ds.state.lock().id))
    }

    /// Replace the reserved regions (inclusive IOVA ranges, e.g. an MSI window) of
    /// `endpoint` (created if new). Reserved regions can never be mapped in a domain
    /// the endpoint is attached to.
    pub fn set_reserved_regions(
        &self,
        endpoint: u32,
        regions: &[RangeInclusive<u64>],
    ) -> Result<()> {
        for r in regions {
            if r.start() > r.end() {
                return Err(Error::InvertedRange {
                    first: *r.start(),
                    last: *r.end(),
                });
            }
        }
        if regions.len() > self.inner.max_reserved {
            return Err(Error::TooManyReservedRegions {
                endpoint,
                count: regions.len(),
                max: self.inner.max_reserved,
            });
        }
        let mut ctl = lock(&self.inner.control);
        let ep = match self.inner.endpoints.find(endpoint) {
            Some(ep) => Arc::clone(ep),
            None => {
                if ctl.endpoints >= self.inner.max_endpoints {
                    return Err(Error::TooManyEndpoints {
                        id: endpoint,
                        max: self.inner.max_endpoints,
                    });
                }
                self.inner.endpoint_or_new(&mut ctl, endpoint)?
            }
        };
        let ds = self.inner.domain_of(&ep);
        let _st = ds.map(|ds| ds.state.lock());
        if let Some(ds) = ds.filter(|ds| !ds.is_bypass()) {
            self.inner
                .check_reserved_unmapped(regions, endpoint, ds.root())?;
        }
        *lock(&ep.reserved) = regions.to_vec();
        ep.reserved_len.store(regions.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Map `iova..iova+len` to `gpa..gpa+len` in `domain` (see [`Domain::map`]).
    pub fn map(&self, domain: u32, iova: u64, gpa: u64, len: u64, perm: Permissions) -> Result<()> {
        self.domain(domain)?.map(iova, gpa, len, perm)
    }

    /// Unmap whole mappings in `iova..iova+len` of `domain` (see [`Domain::unmap`]).
    pub fn unmap(&self, domain: u32, iova: u64, len: u64) -> Result<usize> {
        self.domain(domain)?.unmap(iova, len)
    }

    /// Translate `iova..iova+len` for `access` by endpoint `endpoint`. Lock-free except
    /// for the endpoint lookup, which is lock-free too; failures are recorded in the
    /// fault log.
    pub fn translate(
        &self,
        endpoint: u32,
        iova: u64,
        len: u64,
        access: Permissions,
    ) -> Result<Translation<'_>> {
        let ep = self
            .inner
            .endpoints
            .find(endpoint)
            .ok_or(Error::UnknownEndpoint(endpoint))?;
        translate::translate(&self.inner, ep, None, iova, len, access)
    }

    /// Remove and return up to `max` of the oldest recorded faults.
    pub fn drain_faults(&self, max: usize) -> Vec<Fault> {
        let mut out = Vec::new();
        self.inner.faults.drain_into(&mut out, max);
        out
    }

    /// Move up to `max` of the oldest faults into `out`; returns how many were moved.
    pub fn drain_faults_into(&self, out: &mut Vec<Fault>, max: usize) -> usize {
        self.inner.faults.drain_into(out, max)
    }

    /// Have `notifier` called whenever a fault lands in the empty fault log (on the
    /// thread whose translation faulted, after the log's lock is released, so it may
    /// drain the log); `None` removes it. Returns the previous notifier.
    ///
    /// The notification is edge-triggered: faults recorded while the log holds
    /// others call nothing, so a consumer that leaves faults in the log must come
    /// back for them on its own (virtio-dma's `IommuHandler` does, after a full
    /// batch or when the driver adds event buffers). The notifier must not block:
    /// writing a non-blocking eventfd is the intended use.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use vm_iommu::{Config, Iommu};
    /// use vm_memory::Permissions;
    ///
    /// let iommu = Iommu::new(Config::default()).unwrap();
    /// iommu.create_domain(1, false).unwrap();
    /// iommu.attach(5, 1).unwrap();
    /// let woken = Arc::new(AtomicUsize::new(0));
    /// let w = Arc::clone(&woken);
    /// iommu.set_fault_notifier(Some(Arc::new(move || {
    ///     w.fetch_add(1, Ordering::Relaxed);
    /// })));
    /// assert!(iommu.translate(5, 0x1000, 8, Permissions::Read).is_err());
    /// assert!(iommu.translate(5, 0x2000, 8, Permissions::Read).is_err());
    /// assert_eq!(woken.load(Ordering::Relaxed), 1);
    /// assert_eq!(iommu.drain_faults(8).len(), 2);
    /// ```
    pub fn set_fault_notifier(&self, notifier: Option<FaultNotifier>) -> Option<FaultNotifier> {
        self.inner.faults.set_notifier(notifier)
    }

    /// Remove the fault notifier if it is `notifier` (the same `Arc` allocation),
    /// leaving one that someone else set since; returns whether it was removed.
    pub fn remove_fault_notifier(&self, notifier: &FaultNotifier) -> bool {
        self.inner.faults.remove_notifier(notifier)
    }

    /// Number of faults waiting in the fault log.
    pub fn pending_faults(&self) -> usize {
        self.inner.faults.len()
    }

    /// Faults dropped because the fault log was full.
    pub fn dropped_faults(&self) -> u64 {
        self.inner.faults.dropped()
    }

    /// A counter that changes after every operation that removes or alters
    /// translations (unmap, attach, detach, destroy, bypass switch). A cache of
    /// translations taken while it had value `g` is valid only while it still reads `g`.
    ///
    /// Unmaps count from the first call of this method (or the creation of an
    /// [`IommuAdapter`](crate::IommuAdapter)) on: until something watches the
    /// counter, unmaps skip the atomic increment. Each call issues a `SeqCst` fence,
    /// which is what makes translations taken after it safe to tag with its value.
    ///
    /// ```
    /// use vm_iommu::{Config, Iommu};
    /// use vm_memory::Permissions;
    ///
    /// let iommu = Iommu::new(Config::default()).unwrap();
    /// let d = iommu.create_domain(1, false).unwrap();
    /// d.map(0x1000, 0x1000, 0x1000, Permissions::Read).unwrap();
    /// let g = iommu.invalidation_generation();
    /// d.unmap(0x1000, 0x1000).unwrap();
    /// assert_ne!(iommu.invalidation_generation(), g);
    /// ```
    pub fn invalidation_generation(&self) -> u64 {
        self.inner.watch_generation();
        self.inner.invalidation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[path = "iommu_tests.rs"]
mod tests;
