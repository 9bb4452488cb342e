// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the flush queue.

use super::*;
use crate::iova::IovaConfig;
use std::sync::atomic::AtomicUsize;

fn domain() -> Arc<IovaDomain> {
    Arc::new(IovaDomain::new(4096, 0, u64::MAX).unwrap())
}

fn counter() -> (Arc<AtomicUsize>, impl FnMut() + Send) {
    let c = Arc::new(AtomicUsize::new(0));
    let c2 = c.clone();
    (c, move || {
        c2.fetch_add(1, Ordering::SeqCst);
    })
}

fn cfg(capacity: usize) -> FlushQueueConfig {
    FlushQueueConfig {
        rings: 1,
        capacity,
        timeout: Duration::from_millis(10),
    }
}

#[test]
fn config_is_validated() {
    let d = domain();
    for c in [
        FlushQueueConfig { rings: 0, ..cfg(4) },
        FlushQueueConfig {
            rings: 65,
            ..cfg(4)
        },
        cfg(0),
        cfg(MAX_FQ_SIZE + 1),
    ] {
        assert!(matches!(
            FlushQueue::new(d.clone(), || (), c),
            Err(Error::InvalidIovaConfig { .. })
        ));
    }
    assert_eq!(FlushQueueConfig::default().capacity, IOVA_SINGLE_FQ_SIZE);
    assert_eq!(FlushQueueConfig::per_cpu().capacity, IOVA_DEFAULT_FQ_SIZE);
}

#[test]
fn not_reused_before_flush() {
    let d = domain();
    let (n, inv) = counter();
    let fq = FlushQueue::new(d.clone(), inv, cfg(64)).unwrap();
    let a = d.alloc(1, u64::MAX).unwrap();
    fq.queue(a.addr(), 1).unwrap();
    assert_eq!(fq.pending(), 1);
    for _ in 0..50 {
        let b = d.alloc(1, u64::MAX).unwrap();
        assert_ne!(b.addr(), a.addr());
    }
    assert_eq!(n.load(Ordering::SeqCst), 0);
    fq.flush();
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(fq.pending(), 0);
    assert_eq!(fq.flush_counts(), (1, 1));
    // Back in the domain (its cache): LIFO.
    assert_eq!(d.alloc(1, u64::MAX).unwrap(), a);
}

#[test]
fn full_ring_flushes_at_once() {
    let d = domain();
    let (n, inv) = counter();
    let fq = FlushQueue::new(d.clone(), inv, cfg(4)).unwrap();
    let iovas: Vec<_> = (0..5).map(|_| d.alloc(1, u64::MAX).unwrap()).collect();
    for i in &iovas[..4] {
        fq.queue(i.addr(), 1).unwrap();
    }
    assert_eq!(n.load(Ordering::SeqCst), 0);
    fq.queue(iovas[4].addr(), 1).unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1);
    // The four older ones were released; the new one waits.
    assert_eq!(fq.pending(), 1);
    assert_eq!(d.stats().queued, 1);
    assert_eq!(d.stats().live, 1);
}

#[test]
fn entries_wait_for_a_flush_started_after_them() {
    // A flush that is in progress when the entry is queued does not
    // release it: the invalidate callback queues (through another
    // domain handle) while the flush runs.
    let d = domain();
    let a = d.alloc(1, u64::MAX).unwrap();
    let b = d.alloc(1, u64::MAX).unwrap();
    let fq = FlushQueue::new(d.clone(), || (), cfg(8)).unwrap();
    fq.queue(a.addr(), 1).unwrap();
    // Entry a has counter 0; simulate "flush started" by bumping only
    // the start counter, then queue b, then finish.
    fq.start_cnt.fetch_add(1, Ordering::SeqCst);
    fq.queue(b.addr(), 1).unwrap();
    fq.finish_cnt.fetch_add(1, Ordering::SeqCst);
    let mut ring = fq.rings[0].lock();
    fq.ring_free(&mut ring);
    drop(ring);
    // a (counter 0 < finish 1) is released, b (counter 1) is not.
    assert_eq!(fq.pending(), 1);
    assert!(d.free(a.addr(), 1).is_err());
    assert_eq!(d.stats().queued, 1);
    fq.flush();
    assert_eq!(fq.pending(), 0);
    assert_eq!(d.stats().live, 0);
}

#[test]
fn queue_checks_the_iova() {
    let d = domain();
    let fq = FlushQueue::new(d.clone(), || (), cfg(8)).unwrap();
    let a = d.alloc(3, u64::MAX).unwrap();
    assert!(matches!(
        fq.queue(a.addr(), 4),
        Err(Error::IovaSizeMismatch { .. })
    ));
    assert!(matches!(
        fq.queue(DmaAddr(0x1000), 1),
        Err(Error::IovaNotAllocated { .. })
    ));
    fq.queue(a.addr(), 3).unwrap();
    // Queued twice, or freed directly while queued: refused.
    assert!(fq.queue(a.addr(), 3).is_err());
    assert!(d.free(a.addr(), 3).is_err());
    assert_eq!(fq.pending(), 1);
    fq.flush();
    assert_eq!(d.stats().live, 0);
}

#[test]
fn poll_honours_the_timeout() {
    let d = domain();
    let (n, inv) = counter();
    let fq = FlushQueue::new(d.clone(), inv, cfg(8)).unwrap();
    let t0 = Instant::now();
    assert_eq!(fq.deadline(), None);
    assert!(!fq.poll(t0 + Duration::from_secs(10)));
    let a = d.alloc(1, u64::MAX).unwrap();
    fq.queue(a.addr(), 1).unwrap();
    let dl = fq.deadline().unwrap();
    assert!(dl >= t0 + Duration::from_millis(10));
    assert!(!fq.poll(dl - Duration::from_millis(1)));
    assert_eq!(n.load(Ordering::SeqCst), 0);
    assert!(fq.poll(dl));
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(fq.deadline(), None);
    assert_eq!(fq.pending(), 0);
}

#[test]
fn strict_invalidates_before_freeing() {
    let d = domain();
    let a = d.alloc(1, u64::MAX).unwrap();
    let dd = d.clone();
    let mut seen_live = None;
    free_strict(&d, &mut || seen_live = Some(dd.stats().live), a.addr(), 1).unwrap();
    // During the invalidation the IOVA was still allocated.
    assert_eq!(seen_live, Some(1));
    assert_eq!(d.stats().live, 0);
}

#[test]
fn per_thread_rings() {
    let d = Arc::new(
        IovaDomain::with_config(&IovaConfig {
            cache_shards: 2,
            ..IovaConfig::default()
        })
        .unwrap(),
    );
    let (n, inv) = counter();
    let fq = Arc::new(
        FlushQueue::new(
            d.clone(),
            inv,
            FlushQueueConfig {
                rings: 2,
                capacity: 16,
                timeout: Duration::from_millis(10),
            },
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (d, fq) = (d.clone(), fq.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let i = d.alloc(1, u64::MAX).unwrap();
                    fq.queue(i.addr(), 1).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(n.load(Ordering::SeqCst) >= 1);
    fq.flush();
    assert_eq!(fq.pending(), 0);
    assert_eq!(d.stats().live, 0);
}
