// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A spin lock for short critical sections on hot paths: here a domain's
//! writer state (map and unmap), and in vm-dma the IOVA range cache's
//! per-thread-shard magazines.
//!
//! Linux protects the same structures with spin locks (the IO page-table
//! lock, `cpu_rcache->lock`): the critical sections are a few loads and
//! stores and are almost never contended. `std::sync::Mutex` costs two atomic read-modify-writes per
//! lock/unlock pair (the unlock must swap to learn about sleepers); this lock
//! takes one (the acquire) and releases with a plain `Release` store. A waiter
//! spins briefly and then yields, so a holder that was preempted (there can be
//! more threads than shards) gets the CPU back instead of being starved.
//!
//! Only for critical sections that are short, or rare and allowed to make
//! waiters yield (a domain's writers wait for access guards with its lock
//! held). A panic inside a critical section releases the lock (the guard's
//! drop runs while unwinding) and does not poison it: keep the protected data
//! consistent between statements that can panic.
//!
//! ```
//! use vm_iommu::spin::SpinLock;
//!
//! let counter = SpinLock::new(0u32);
//! *counter.lock() += 1;
//! assert_eq!(*counter.lock(), 1);
//! ```

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// Spins before yielding.
const SPINS: u32 = 64;

/// A mutual-exclusion lock that spins (then yields) instead of sleeping.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time (the
// `locked` flag, acquired with `Acquire` and released with `Release`), exactly
// like `Mutex<T>`, which is `Sync` for `T: Send`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

/// Access to the value of a [`SpinLock`]; unlocks when dropped.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Acquires the lock.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            // Wait on a plain load (no cache-line ping-pong), then retry.
            while self.locked.load(Ordering::Relaxed) {
                if spins < SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Does not lock (formatting a structure from inside one of its critical
/// sections must not spin forever): shows whether the lock is held.
impl<T> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLock")
            .field("locked", &self.locked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: fmt::Debug> fmt::Debug for SpinGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock, so no
        // other reference to the value exists; the borrow ends with the guard.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow through
        // the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn test_spin_lock_excludes_concurrent_writers() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        // A non-atomic read-modify-write: lost updates would show.
                        let mut g = lock.lock();
                        let v = *g;
                        std::hint::black_box(&v);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert_eq!(*lock.lock(), 8_000);
    }

    #[test]
    fn test_spin_lock_is_released_when_the_guard_drops() {
        let lock = SpinLock::new(vec![1u8]);
        {
            let mut g = lock.lock();
            g.push(2);
            assert!(lock.locked.load(Ordering::Relaxed));
        }
        assert!(!lock.locked.load(Ordering::Relaxed));
        assert_eq!(*lock.lock(), [1, 2]);
        assert_eq!(format!("{lock:?}"), "SpinLock { locked: false, .. }");
        let _g = lock.lock();
        assert_eq!(format!("{lock:?}"), "SpinLock { locked: true, .. }");
    }
}
