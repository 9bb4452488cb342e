// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fault reporting on the event queue.

use log::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_iommu::{Fault, FaultReason};
use vm_memory::{GuestMemory, Permissions};

use super::device::{VirtioIommu, FAULT_BATCH};
use super::request::available;
use super::wire::{
    FaultRecord, VIRTIO_IOMMU_FAULT_F_ADDRESS, VIRTIO_IOMMU_FAULT_F_READ,
    VIRTIO_IOMMU_FAULT_F_WRITE, VIRTIO_IOMMU_FAULT_R_DOMAIN, VIRTIO_IOMMU_FAULT_R_MAPPING,
};
use super::Result;

/// One fault report (`struct virtio_iommu_fault`), before encoding.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FaultReport {
    /// `VIRTIO_IOMMU_FAULT_R_*`.
    pub reason: u8,
    /// `VIRTIO_IOMMU_FAULT_F_*`; undefined bits are cleared when encoded.
    pub flags: u32,
    /// The endpoint that faulted.
    pub endpoint: u32,
    /// The faulting address (meaningful with `VIRTIO_IOMMU_FAULT_F_ADDRESS`).
    pub address: u64,
}

impl FaultReport {
    /// The wire record: reserved fields zero, undefined flags cleared, and `address`
    /// zero unless `VIRTIO_IOMMU_FAULT_F_ADDRESS` is set.
    pub fn encode(&self) -> FaultRecord {
        let flags = self.flags
            & (VIRTIO_IOMMU_FAULT_F_READ
                | VIRTIO_IOMMU_FAULT_F_WRITE
                | VIRTIO_IOMMU_FAULT_F_ADDRESS);
        let address = if flags & VIRTIO_IOMMU_FAULT_F_ADDRESS != 0 {
            self.address
        } else {
            0
        };
        FaultRecord {
            reason: self.reason,
            reserved: [0; 3],
            flags: flags.to_le(),
            endpoint: self.endpoint.to_le(),
            reserved1: 0,
            address: address.to_le(),
        }
    }
}

impl From<&Fault> for FaultReport {
    /// A vm-iommu translation fault: no domain gives `R_DOMAIN`; unmapped, not
    /// permitted and out of the input range give `R_MAPPING`; the access gives the
    /// READ/WRITE flags and the IOVA the address.
    fn from(f: &Fault) -> Self {
        let reason = match f.reason {
            FaultReason::NoDomain => VIRTIO_IOMMU_FAULT_R_DOMAIN,
            FaultReason::Unmapped | FaultReason::Permission | FaultReason::OutOfRange => {
                VIRTIO_IOMMU_FAULT_R_MAPPING
            }
        };
        let access = match f.access {
            Permissions::No => 0,
            Permissions::Read => VIRTIO_IOMMU_FAULT_F_READ,
            Permissions::Write => VIRTIO_IOMMU_FAULT_F_WRITE,
            Permissions::ReadWrite => VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_WRITE,
        };
        FaultReport {
            reason,
            flags: access | VIRTIO_IOMMU_FAULT_F_ADDRESS,
            endpoint: f.endpoint,
            address: f.iova,
        }
    }
}

impl VirtioIommu {
    /// Write `fault` into the next available buffer of `eventq`. Returns `Ok(true)`
    /// when it was delivered, `Ok(false)` when no buffer was available (nothing
    /// consumed) or the buffer could not hold a report (returned with used length 0
    /// and counted in [`FaultStats::dropped_bad_buffer`]: the spec forbids spreading
    /// one report over several buffers). The caller notifies the driver if
    /// `eventq.needs_notification()`.
    ///
    /// [`FaultStats::dropped_bad_buffer`]: super::FaultStats::dropped_bad_buffer
    pub fn report_fault<M: GuestMemory>(
        &mut self,
        mem: &M,
        eventq: &mut Queue,
        fault: &FaultReport,
    ) -> Result<bool> {
        if !eventq.ready() {
            return Ok(false);
        }
        let Some(chain) = eventq.iter(mem)?.next() else {
            return Ok(false);
        };
        let head = chain.head_index();
        let record = fault.encode();
        let written = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= std::mem::size_of::<FaultRecord>() => {
                match w.write_obj(record) {
                    Ok(()) => Some(w.bytes_written()),
                    Err(e) => {
                        warn!("virtio-iommu: writing a fault report: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let len = written.and_then(|n| u32::try_from(n).ok());
        eventq.add_used(mem, head, len.unwrap_or(0))?;
        if len.is_some() {
            self.stats.reported = self.stats.reported.saturating_add(1);
            Ok(true)
        } else {
            self.stats.dropped_bad_buffer = self.stats.dropped_bad_buffer.saturating_add(1);
            Ok(false)
        }
    }

    /// Move faults from the vm-iommu fault log to `eventq`: at most `max` (and at
    /// most [`FAULT_BATCH`]) per call, and only as many as there are available
    /// buffers, so the rest wait in the log, which is bounded (vm-iommu drops and
    /// counts faults beyond its capacity: [`vm_iommu::Iommu::dropped_faults`]).
    /// Faults of endpoints this device does not manage are discarded and counted.
    /// Returns the number of reports delivered. Allocates nothing.
    pub fn deliver_faults<M: GuestMemory>(
        &mut self,
        mem: &M,
        eventq: &mut Queue,
        max: usize,
    ) -> Result<usize> {
        if !eventq.ready() {
            return Ok(0);
        }
        let budget = usize::from(available(mem, eventq)?)
            .min(max)
            .min(FAULT_BATCH);
        if budget == 0 {
            return Ok(0);
        }
        let mut faults = std::mem::take(&mut self.fault_buf);
        faults.clear();
        self.iommu.drain_faults_into(&mut faults, budget);
        let mut delivered = 0;
        let mut result = Ok(());
        for f in &faults {
            if !self.endpoints.contains_key(&f.endpoint) {
                self.stats.foreign_endpoint = self.stats.foreign_endpoint.saturating_add(1);
                continue;
            }
            match self.report_fault(mem, eventq, &FaultReport::from(f)) {
                Ok(true) => delivered += 1,
                Ok(false) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        faults.clear();
        self.fault_buf = faults;
        result.map(|()| delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fault_report_from_vm_iommu_fault_sets_reason_flags_and_address() {
        let f = Fault {
            endpoint: 9,
            iova: 0x1234_5000,
            access: Permissions::Write,
            reason: FaultReason::Unmapped,
        };
        let rec = FaultReport::from(&f).encode();
        assert_eq!(rec.reason, VIRTIO_IOMMU_FAULT_R_MAPPING);
        assert_eq!(
            u32::from_le(rec.flags),
            VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS
        );
        assert_eq!(u32::from_le(rec.endpoint), 9);
        assert_eq!(u64::from_le(rec.address), 0x1234_5000);
        let nd = FaultReport::from(&Fault {
            reason: FaultReason::NoDomain,
            access: Permissions::Read,
            ..f
        });
        assert_eq!(nd.reason, VIRTIO_IOMMU_FAULT_R_DOMAIN);
        assert_eq!(
            nd.flags & VIRTIO_IOMMU_FAULT_F_READ,
            VIRTIO_IOMMU_FAULT_F_READ
        );
    }

    #[test]
    fn test_encode_clears_undefined_flags_and_reserved_fields() {
        let rec = FaultReport {
            reason: 0,
            flags: 0xffff_ffff,
            endpoint: 1,
            address: 7,
        }
        .encode();
        assert_eq!(
            u32::from_le(rec.flags),
            VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS
        );
        assert_eq!(rec.reserved, [0; 3]);
        assert_eq!(rec.reserved1, 0);
        let no_addr = FaultReport {
            reason: 2,
            flags: VIRTIO_IOMMU_FAULT_F_READ,
            endpoint: 1,
            address: 0xdead,
        }
        .encode();
        assert_eq!(no_addr.address, 0, "address only with F_ADDRESS");
    }
}
