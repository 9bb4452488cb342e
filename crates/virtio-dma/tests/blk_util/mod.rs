// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Helpers shared by the virtio-blk integration tests: a driver that lays a
//! request out as a descriptor chain with virtio-queue's `MockSplitQueue`.

#![allow(clippy::unwrap_used, dead_code)]

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;

/// A descriptor: (address, length, device-writable).
pub type D = (u64, u32, bool);

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;

/// Writes `descs` as the only available chain of a 16-entry split queue at
/// `ring` and returns it as the device pops it.
pub fn chain<'a, M: GuestMemory>(
    mem: &'a M,
    ring: GuestAddress,
    descs: &[D],
) -> DescriptorChain<&'a M> {
    let q = MockSplitQueue::create(mem, ring, 16);
    // Every call starts from an empty avail ring so a test can build any
    // number of chains in the same memory.
    mem.write_obj(0u16, q.avail_addr().unchecked_add(2))
        .unwrap();
    let last = descs.len().saturating_sub(1);
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, w))| {
            let mut f = if w { F_WRITE } else { 0 };
            if i < last {
                f |= F_NEXT;
            }
            RawDescriptor::from(SplitDescriptor::new(a, l, f, i as u16 + 1))
        })
        .collect();
    q.add_desc_chains(&raw, 0).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    queue.pop_descriptor_chain(mem).unwrap()
}
