// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bounded fault log.
//!
//! Faults are the slow path: recording one takes a mutex for the duration of a
//! `VecDeque::push_back` into pre-allocated storage. When the log is full, new faults
//! are dropped and counted (like a hardware fault queue that overflows), so a guest
//! cannot grow it. A fault that lands in an empty log calls the notifier, if one is
//! set, after the mutex is released.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Fault;

/// Called after a fault lands in an empty fault log; see
/// [`Iommu::set_fault_notifier`](crate::Iommu::set_fault_notifier).
pub type FaultNotifier = Arc<dyn Fn() + Send + Sync>;

/// The log's state behind its mutex.
struct Log {
    queue: VecDeque<Fault>,
    notifier: Option<FaultNotifier>,
}

/// A bounded log of translation faults, drained by a fault-reporting device such as
/// virtio-iommu.
pub(crate) struct FaultLog {
    capacity: usize,
    log: Mutex<Log>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for FaultLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultLog")
            .field("capacity", &self.capacity)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl FaultLog {
    pub(crate) fn new(capacity: usize) -> Self {
        FaultLog {
            capacity,
            log: Mutex::new(Log {
                queue: VecDeque::with_capacity(capacity),
                notifier: None,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock only means another thread panicked mid-operation (at worst
        // in a `Vec::extend` of a drain); the queue is still a valid VecDeque.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a fault, or count it as dropped when the log is full. A fault that
    /// makes the log non-empty calls the notifier (outside the lock, so that it may
    /// drain the log).
    pub(crate) fn record(&self, fault: Fault) {
        let mut log = self.lock();
        if log.queue.len() < self.capacity {
            let was_empty = log.queue.is_empty();
            log.queue.push_back(fault);
            let notifier = if was_empty {
                log.notifier.clone()
            } else {
                None
            };
            drop(log);
            if let Some(notify) = notifier {
                notify();
            }
        } else {
            drop(log);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Move up to `max` of the oldest faults into `out`; returns how many were moved.
    pub(crate) fn drain_into(&self, out: &mut Vec<Fault>, max: usize) -> usize {
        let mut log = self.lock();
        let n = log.queue.len().min(max);
        out.extend(log.queue.drain(..n));
        n
    }

    /// Number of faults currently held.
    pub(crate) fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Replace the notifier; returns the previous one.
    pub(crate) fn set_notifier(&self, notifier: Option<FaultNotifier>) -> Option<FaultNotifier> {
        std::mem::replace(&mut self.lock().notifier, notifier)
    }

    /// Remove the notifier if it is `notifier` (the same allocation); returns
    /// whether it was.
    pub(crate) fn remove_notifier(&self, notifier: &FaultNotifier) -> bool {
        let mut log = self.lock();
        let ours = log
            .notifier
            .as_ref()
            .is_some_and(|n| Arc::ptr_eq(n, notifier));
        if ours {
            log.notifier = None;
        }
        ours
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
    fn test_fault_log_notifies_when_a_fault_lands_in_an_empty_log() {
        use std::sync::atomic::AtomicUsize;

        let log = FaultLog::new(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let n: FaultNotifier = Arc::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert!(log.set_notifier(Some(Arc::clone(&n))).is_none());
        log.record(fault(0));
        log.record(fault(1));
        // Full: dropped, no call either.
        log.record(fault(2));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let mut out = Vec::new();
        log.drain_into(&mut out, 1);
        log.record(fault(3)); // Not empty: no call.
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        log.drain_into(&mut out, usize::MAX);
        log.record(fault(4)); // Empty again: a call.
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // Only the notifier that is set can be removed by its owner.
        let other: FaultNotifier = Arc::new(|| {});
        assert!(!log.remove_notifier(&other));
        assert!(log.remove_notifier(&n));
        assert!(!log.remove_notifier(&n));
        log.drain_into(&mut out, usize::MAX);
        log.record(fault(5));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn test_fault_log_notifier_may_drain_the_log() {
        // The notifier runs outside the log's lock.
        let log = Arc::new(FaultLog::new(4));
        let drained = Arc::new(Mutex::new(Vec::new()));
        let (l, d) = (Arc::downgrade(&log), Arc::clone(&drained));
        log.set_notifier(Some(Arc::new(move || {
            if let Some(log) = l.upgrade() {
                let mut d = d.lock().unwrap();
                log.drain_into(&mut d, usize::MAX);
            }
        })));
        log.record(fault(7));
        log.record(fault(8));
        assert_eq!(*drained.lock().unwrap(), vec![fault(7), fault(8)]);
        assert_eq!(log.len(), 0);
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
