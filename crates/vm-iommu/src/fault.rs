// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bounded fault log.
//!
//! Faults are the slow path: recording one takes a mutex for the duration of a
//! `VecDeque::push_back` into pre-allocated storage. When the log is full, new faults
//! are dropped and counted (like a hardware fault queue that overflows), so a guest
//! cannot grow it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::Fault;

/// A bounded log of translation faults, drained by a fault-reporting device such as
/// virtio-iommu.
#[derive(Debug)]
pub(crate) struct FaultLog {
    capacity: usize,
    queue: Mutex<VecDeque<Fault>>,
    dropped: AtomicU64,
}

impl FaultLog {
    pub(crate) fn new(capacity: usize) -> Self {
        FaultLog {
            capacity,
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Record a fault, or count it as dropped when the log is full.
    pub(crate) fn record(&self, fault: Fault) {
        // A poisoned lock only means another thread panicked mid-push; the queue is
        // still a valid VecDeque.
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < self.capacity {
            q.push_back(fault);
        } else {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Move up to `max` of the oldest faults into `out`; returns how many were moved.
    pub(crate) fn drain_into(&self, out: &mut Vec<Fault>, max: usize) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        n
    }

    /// Number of faults currently held.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Number of faults dropped because the log was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Permissions;

    use super::*;
    use crate::error::FaultReason;

    fn fault(iova: u64) -> Fault {
        Fault {
            endpoint: 1,
            iova,
            access: Permissions::Read,
            reason: FaultReason::Unmapped,
        }
    }

    #[test]
    fn test_fault_log_drops_and_counts_when_full() {
        let log = FaultLog::new(2);
        for i in 0..5 {
            log.record(fault(i));
        }
        assert_eq!(log.len(), 2);
        assert_eq!(log.dropped(), 3);
        let mut out = Vec::new();
        assert_eq!(log.drain_into(&mut out, usize::MAX), 2);
        assert_eq!(out, vec![fault(0), fault(1)]);
        log.record(fault(9));
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn test_fault_log_drain_respects_max() {
        let log = FaultLog::new(8);
        for i in 0..4 {
            log.record(fault(i));
        }
        let mut out = Vec::new();
        assert_eq!(log.drain_into(&mut out, 3), 3);
        assert_eq!(log.len(), 1);
    }
}
