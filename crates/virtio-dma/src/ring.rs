// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What driver and device agree on: feature bits that shape a virtqueue,
//! ring addresses, the split ring layout and the event-index test.

use virtio_bindings::virtio_config::VIRTIO_F_ACCESS_PLATFORM;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The largest split queue size the virtio spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Size of one split descriptor (and the descriptor table alignment).
pub(crate) const DESC_SIZE: u64 = 16;

/// Alignment of the used ring in the one ring allocation. The spec asks for
/// 4; a cache line keeps the device-written used ring off the lines the
/// driver writes, as Linux's `SMP_CACHE_BYTES` alignment does.
pub(crate) const USED_ALIGN: u64 = 64;

/// The transport feature bits that change how a queue is driven.
///
/// ```
/// use virtio_dma::Features;
///
/// let f = Features { access_platform: true, event_idx: true, indirect_desc: false };
/// assert_eq!(f.bits(), (1 << 33) | (1 << 29));
/// assert_eq!(Features::from_bits(f.bits() | 1), f);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features {
    /// `VIRTIO_F_ACCESS_PLATFORM`: every address the driver writes into the
    /// rings is a DMA address from vm-dma (buffers mapped with the streaming
    /// API). Without it the addresses are guest physical and nothing is
    /// mapped, as Linux's `vring_use_dma_api()` decides.
    pub access_platform: bool,
    /// `VIRTIO_RING_F_EVENT_IDX`: notifications are suppressed with the
    /// `used_event` / `avail_event` indices instead of the ring flags.
    pub event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC`: requests of more than one buffer use
    /// an indirect descriptor table from a `DmaPool`.
    pub indirect_desc: bool,
}

impl Features {
    /// The features set in a negotiated feature word; other bits are ignored.
    pub const fn from_bits(bits: u64) -> Self {
        Features {
            access_platform: bits & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0,
            event_idx: bits & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
            indirect_desc: bits & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0,
        }
    }

    /// The feature word of these features.
    pub const fn bits(self) -> u64 {
        let mut b = 0;
        if self.access_platform {
            b |= 1 << VIRTIO_F_ACCESS_PLATFORM;
        }
        if self.event_idx {
            b |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if self.indirect_desc {
            b |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        b
    }
}

/// The addresses of the three parts of a split ring, as one side sees
/// them: device-visible addresses (DMA addresses with `ACCESS_PLATFORM`,
/// guest physical without) to program into the transport and the device's
/// `virtio_queue::Queue`, or the driver's CPU (guest-physical) addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingAddrs {
    /// The descriptor table (16-byte aligned).
    pub desc: u64,
    /// The available (driver) ring (2-byte aligned).
    pub avail: u64,
    /// The used (device) ring (4-byte aligned).
    pub used: u64,
}

/// Offsets and sizes of a split ring of `size` entries in one allocation:
/// descriptor table at 0, available ring right after it, used ring at the
/// next [`USED_ALIGN`] boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SplitLayout {
    pub(crate) size: u16,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    pub(crate) total: u64,
}

impl SplitLayout {
    /// The layout for a queue of `size` entries (at most 32768, so nothing
    /// here can overflow: the total is below 1 MiB).
    pub(crate) fn new(size: u16) -> Self {
        let n = u64::from(size);
        let avail = DESC_SIZE * n;
        // flags, idx, ring[n], used_event
        let avail_len = 2 * (3 + n);
        let used = (avail + avail_len).next_multiple_of(USED_ALIGN);
        // flags, idx, ring[n] of {id, len}, avail_event
        let used_len = 4 + 8 * n + 2;
        SplitLayout {
            size,
            avail,
            used,
            total: used + used_len,
        }
    }

    pub(crate) fn desc_off(&self, i: u16) -> u64 {
        DESC_SIZE * u64::from(i)
    }
    pub(crate) fn avail_flags(&self) -> u64 {
        self.avail
    }
    pub(crate) fn avail_idx(&self) -> u64 {
        self.avail + 2
    }
    pub(crate) fn avail_entry(&self, idx: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(idx % self.size)
    }
    pub(crate) fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }
    pub(crate) fn used_flags(&self) -> u64 {
        self.used
    }
    pub(crate) fn used_idx(&self) -> u64 {
        self.used + 2
    }
    pub(crate) fn used_entry(&self, idx: u16) -> u64 {
        self.used + 4 + 8 * u64::from(idx % self.size)
    }
    pub(crate) fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }
}

/// Bytes of ring memory a split queue of `size` entries uses (its one
/// allocation: descriptor table, available ring, used ring). `size` above
/// 32768 is treated as 32768.
///
/// ```
/// // 4096 of descriptors, 518 of available ring, the used ring (2054
/// // bytes) at the next 64-byte boundary, 4672.
/// assert_eq!(virtio_dma::split_ring_len(256), 4672 + 2054);
/// ```
pub fn split_ring_len(size: u16) -> u64 {
    SplitLayout::new(size.min(MAX_QUEUE_SIZE)).total
}

/// Bytes of ring memory a packed queue of `size` entries uses: the
/// descriptor ring, the driver event area, and the device event area a
/// cache line further.
///
/// ```
/// assert_eq!(virtio_dma::packed_ring_len(10), 160 + 64 + 4);
/// ```
pub fn packed_ring_len(size: u16) -> u64 {
    DESC_SIZE * u64::from(size.min(MAX_QUEUE_SIZE)) + PACKED_DEVICE_AREA_GAP + 4
}

/// Offset of a packed ring's device event area from its driver event
/// area: a cache line apart, so the device's writes do not share the
/// driver's line.
pub(crate) const PACKED_DEVICE_AREA_GAP: u64 = 64;

/// The virtio spec's `vring_need_event(event_idx, new_idx, old)`: whether
/// moving an index from `old` to `new` passed `event_idx`, in 16-bit
/// wrapping arithmetic.
///
/// ```
/// use virtio_dma::vring_need_event;
///
/// assert!(vring_need_event(5, 6, 5)); // index 5 was just published
/// assert!(!vring_need_event(7, 6, 5)); // the other side waits for later
/// assert!(vring_need_event(0xffff, 1, 0xfffe)); // across the wrap
/// ```
pub const fn vring_need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_spec_alignments_for_every_size() {
        let mut size = 1u16;
        loop {
            let l = SplitLayout::new(size);
            assert_eq!(l.avail % 2, 0);
            assert_eq!(l.used % 4, 0);
            assert!(l.used >= l.used_event() + 2, "size {size}");
            assert_eq!(l.total, l.avail_event() + 2);
            if size == MAX_QUEUE_SIZE {
                assert!(l.total < (1 << 20));
                break;
            }
            size *= 2;
        }
    }

    #[test]
    fn ring_entries_wrap_at_the_queue_size() {
        let l = SplitLayout::new(8);
        assert_eq!(l.avail_entry(8), l.avail_entry(0));
        assert_eq!(l.used_entry(65535), l.used_entry(7));
    }

    #[test]
    fn need_event_matches_the_spec_formula_exhaustively_for_small_steps() {
        for old in [0u16, 1, 0x7fff, 0xfffe, 0xffff] {
            for step in 0u16..4 {
                let new = old.wrapping_add(step);
                for ev in 0u16..8 {
                    let event = old.wrapping_add(ev).wrapping_sub(2);
                    // Notify iff event is in [old, new).
                    let want = (0..step).any(|k| old.wrapping_add(k) == event);
                    assert_eq!(
                        vring_need_event(event, new, old),
                        want,
                        "{old} {new} {event}"
                    );
                }
            }
        }
    }

    #[test]
    fn features_roundtrip_every_combination() {
        for b in 0..8u8 {
            let f = Features {
                access_platform: b & 1 != 0,
                event_idx: b & 2 != 0,
                indirect_desc: b & 4 != 0,
            };
            assert_eq!(Features::from_bits(f.bits()), f);
        }
    }
}
