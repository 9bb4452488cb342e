// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vm-iommu benchmark fixture, shared by the criterion cases
//! (`benches/iommu.rs`) and their interleaved companion
//! (`examples/iommu_ab.rs`): 4096 scattered page mappings in a vm-iommu domain
//! and in a vm-memory `Iotlb`, a virtio split queue of two-descriptor chains
//! over any `GuestMemory`, and IOMMUs with a given number of mappings.

use std::io::{Read, Write};
use std::sync::{RwLock, RwLockReadGuard};

use virtio_bindings_shim::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_iommu::{Config, DeviceView, Iommu, Slices};
use vm_memory::bitmap::BS;
use vm_memory::iommu::{Error as IotlbError, IotlbIterator, IovaRange};
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, IommuMemory, Iotlb, Permissions,
};

/// virtio-bindings is not a dependency of the bench package; the flags we need.
mod virtio_bindings_shim {
    pub const VRING_DESC_F_NEXT: u16 = 1;
    pub const VRING_DESC_F_WRITE: u16 = 2;
}

pub(crate) type Mem = GuestMemoryMmap<()>;

pub(crate) const PAGE: u64 = 0x1000;
/// Guest memory: 32 MiB at GPA 0.
pub(crate) const MEM_SIZE: u64 = 32 << 20;
/// IOVAs start at 4 GiB (not backed by guest memory directly).
pub(crate) const IOVA_BASE: u64 = 1 << 32;
/// Pages mapped for the queue benchmarks.
pub(crate) const PAGES: u64 = 4096;
/// Stride (in pages) between the guest pages of consecutive IOVA pages; odd, so the
/// mapping is a permutation of the 4096 pages and no two neighbours are contiguous.
pub(crate) const STRIDE: u64 = 2053;
/// Guest pages used as mapping targets start here.
pub(crate) const GPA_BASE: u64 = 8 << 20;

pub(crate) fn gpa_of_page(i: u64) -> u64 {
    GPA_BASE + ((i * STRIDE) % PAGES) * PAGE
}

/// The anchor: vm-memory's `Iotlb` behind an `RwLock`, as vm-memory's own test IOMMU
/// and a vhost-user backend would hold it (no miss handling needed: it is pre-filled).
#[derive(Debug, Default)]
pub(crate) struct IotlbIommu {
    iotlb: RwLock<Iotlb>,
}

impl vm_memory::Iommu for IotlbIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IotlbError> {
        Iotlb::lookup(self.iotlb.read().unwrap(), iova, length, access).map_err(|_| {
            IotlbError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "miss".into(),
            }
        })
    }
}

/// Plain guest memory whose slices come in `vm_iommu::Slices`, as the view's do:
/// the same `GuestMemory` plumbing as `DeviceView` without the translation, to
/// show what the translation itself costs (plain `GuestMemoryMmap` pays
/// vm-memory's provided `stop_on_error` on every `Bytes` access).
#[derive(Debug)]
pub(crate) struct LeanPlain(pub(crate) Mem);

impl GuestMemory for LeanPlain {
    type PhysicalMemory = Mem;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        GuestMemoryBackend::check_range(&self.0, addr, count)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        _access: Permissions,
    ) -> vm_memory::GuestMemoryResult<
        impl vm_memory::guest_memory::GuestMemorySliceIterator<'a, BS<'a, ()>>,
    > {
        Ok(Slices::new(GuestMemoryBackend::get_slices(
            &self.0, addr, count,
        )))
    }

    fn physical_memory(&self) -> Option<&Mem> {
        Some(&self.0)
    }
}

pub(crate) struct Setup {
    pub(crate) mem: Mem,
    pub(crate) lean: LeanPlain,
    pub(crate) view: DeviceView<Mem>,
    pub(crate) iommu_mem: IommuMemory<Mem, IotlbIommu>,
}

/// 4096 scattered 4 KiB mappings at `IOVA_BASE`, in our IOMMU and in an `Iotlb`.
pub(crate) fn setup() -> Setup {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let domain = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    let tlb = IotlbIommu::default();
    for i in 0..PAGES {
        let iova = IOVA_BASE + i * PAGE;
        domain
            .map(iova, gpa_of_page(i), PAGE, Permissions::ReadWrite)
            .unwrap();
        tlb.iotlb
            .write()
            .unwrap()
            .set_mapping(
                GuestAddress(iova),
                GuestAddress(gpa_of_page(i)),
                PAGE as usize,
                Permissions::ReadWrite,
            )
            .unwrap();
    }
    let view = iommu.view(1, mem.clone()).unwrap();
    let iommu_mem = IommuMemory::new(mem.clone(), tlb, true, ());
    Setup {
        lean: LeanPlain(mem.clone()),
        mem,
        view,
        iommu_mem,
    }
}

pub(crate) const CHAINS: u16 = 16;
pub(crate) const BUF: u32 = 512;

/// Build `CHAINS` two-descriptor chains (512 readable bytes, 512 writable bytes),
/// every buffer in its own page, the rings at `base`.
pub(crate) fn build_queue<M: GuestMemory>(mem: &M, base: u64) -> MockSplitQueue<'_, M> {
    let mq = MockSplitQueue::create(mem, GuestAddress(base), 256);
    let mut descs = Vec::new();
    for c in 0..u64::from(CHAINS) {
        // Pages 8.. hold buffers; 0..3 hold the rings.
        let rd = base + (8 + 2 * c) * PAGE + 0x100;
        let wr = base + (9 + 2 * c) * PAGE + 0x100;
        let next = u16::try_from(2 * c + 1).unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            rd,
            BUF,
            VRING_DESC_F_NEXT,
            next,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            wr,
            BUF,
            VRING_DESC_F_WRITE,
            0,
        )));
    }
    mq.add_desc_chains(&descs, 0).unwrap();
    mq
}

/// Device-side processing of every available chain: pop, read all readable bytes,
/// write all writable bytes, add_used.
pub(crate) fn process<M: GuestMemory>(q: &mut Queue, mem: &M) -> usize {
    let mut buf = [0u8; BUF as usize];
    let mut n = 0;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut r = Reader::new(mem, chain.clone()).unwrap();
        r.read_exact(&mut buf).unwrap();
        let mut w = Writer::new(mem, chain).unwrap();
        w.write_all(&buf).unwrap();
        q.add_used(mem, head, BUF).unwrap();
        n += 1;
    }
    n
}

pub(crate) fn iommu_with(n: u64) -> Iommu {
    iommu_with_pages(0..n)
}

/// An IOMMU (endpoint 1 in domain 1) with IOVA page `i` mapped for each `i` of
/// `pages`, to the same guest page as in [`iommu_with`].
pub(crate) fn iommu_with_pages(pages: impl IntoIterator<Item = u64>) -> Iommu {
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    for i in pages {
        // Guest pages in a permuted order so that no two neighbours merge.
        let gpa = ((i * 7919) % (1 << 24)) * PAGE;
        d.map(IOVA_BASE + i * PAGE, gpa, PAGE, Permissions::ReadWrite)
            .unwrap();
    }
    iommu
}

/// The IOVA pages of the "spread" probes over `n` mappings: 1024 probes, evenly
/// spaced over the mapped pages.
pub(crate) fn spread_pages(n: u64) -> impl Iterator<Item = u64> {
    (0..1024u64).map(move |k| (k * n) / 1024)
}
