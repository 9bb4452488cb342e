// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Multi-threaded stress: device threads translate, read and write through views while
//! another thread maps and unmaps. Checks the ordering guarantee: once `unmap` has
//! returned, no translation that starts afterwards yields the old mapping.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

type Mem = GuestMemoryMmap<()>;

const PAGE: u64 = 0x1000;
const IOVA: u64 = 0x40_0000_0000;
const SLOTS: u64 = 4;
/// Generations per slot; below 1024 so that every generation has its own guest page.
const GENERATIONS: u64 = 150;
/// Generations at most, when the device threads have not yet raced with the writer
/// after the planned ones (a loaded machine may not schedule them in time); below 1024.
const MAX_GENERATIONS: u64 = 1000;

/// Whether the writer should run generation `g`: the `planned` ones, then more (giving
/// the device threads time, up to `MAX_GENERATIONS`) until `raced()` holds.
fn another_generation(g: u64, planned: u64, raced: impl Fn() -> bool) -> bool {
    if g < planned {
        return true;
    }
    if g >= MAX_GENERATIONS || raced() {
        return false;
    }
    thread::sleep(Duration::from_millis(1));
    true
}
const DEVICE_THREADS: usize = 3;

fn iova_of(slot: u64) -> u64 {
    IOVA + slot * (2 << 20)
}

/// Guest page used by generation `g` of `slot`.
fn gpa_of(slot: u64, g: u64) -> u64 {
    (slot * 1024 + g) * PAGE
}

fn generation_of(slot: u64, gpa: u64) -> u64 {
    gpa / PAGE - slot * 1024
}

#[test]
fn test_stress_no_translation_after_unmap_returned_uses_old_mapping() {
    let mem = Mem::from_ranges(&[(GuestAddress(0), (SLOTS * 1024 * PAGE) as usize)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let domain = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    // `unmapped[s] = n`: generations `< n` of slot `s` have been unmapped (stored after
    // `unmap` returned).
    let unmapped: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    // Translations that found a mapping / faulted, over all device threads.
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);

    let devices: Vec<_> = (0..DEVICE_THREADS)
        .map(|t| {
            let view = iommu.view(1, mem.clone()).unwrap();
            let unmapped = Arc::clone(&unmapped);
            let done = Arc::clone(&done);
            let counts = Arc::clone(&counts);
            thread::spawn(move || {
                let ep = view.endpoint().clone();
                let mut tag = (t as u64) << 32;
                while !done.load(Ordering::SeqCst) {
                    for s in 0..SLOTS {
                        let floor = unmapped[s as usize].load(Ordering::SeqCst);
                        match ep.translate(iova_of(s) + 8, 8, Permissions::Write) {
                            Ok(t) => {
                                let f = t.single().unwrap();
                                let g = generation_of(s, f.gpa.0 - 8);
                                assert!(
                                    g >= floor,
                                    "slot {s}: translation to generation {g} started after \
                                     generations < {floor} were unmapped"
                                );
                                counts[0].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Real accesses through the view: they either succeed or fail
                        // with an error, never panic or touch unmapped memory.
                        tag += 1;
                        let _ = view.write_obj(tag, GuestAddress(iova_of(s) + 16));
                        let _ = view.read_obj::<u64>(GuestAddress(iova_of(s) + 16));
                    }
                }
            })
        })
        .collect();

    let raced = || counts.iter().all(|c| c.load(Ordering::Relaxed) > 0);
    let mut g = 0;
    while another_generation(g, GENERATIONS, raced) {
        for s in 0..SLOTS {
            domain
                .map(iova_of(s), gpa_of(s, g), PAGE, Permissions::ReadWrite)
                .unwrap();
        }
        thread::yield_now();
        for s in 0..SLOTS {
            assert_eq!(domain.unmap(iova_of(s), PAGE), Ok(1));
            unmapped[s as usize].store(g + 1, Ordering::SeqCst);
        }
        g += 1;
    }
    done.store(true, Ordering::SeqCst);
    for d in devices {
        d.join().unwrap();
    }
    let (hits, misses) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert!(
        hits > 0 && misses > 0,
        "hits {hits}, misses {misses} in {g} generations"
    );
    // Faults were recorded, boundedly.
    assert!(iommu.pending_faults() <= Config::default().fault_log_capacity);
}

#[test]
fn test_stress_attach_switch_yields_one_of_the_two_domains() {
    let iommu = Iommu::new(Config::default()).unwrap();
    let a = iommu.create_domain(1, false).unwrap();
    let b = iommu.create_domain(2, false).unwrap();
    a.map(IOVA, 0xa000, PAGE, Permissions::ReadWrite).unwrap();
    b.map(IOVA, 0xb000, PAGE, Permissions::ReadWrite).unwrap();
    iommu.attach(1, 1).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let ep = iommu.endpoint(1).unwrap();
            let done = Arc::clone(&done);
            let reads = Arc::clone(&reads);
            thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    let f = ep
                        .translate(IOVA, PAGE, Permissions::Read)
                        .unwrap()
                        .single()
                        .unwrap();
                    assert!(f.gpa.0 == 0xa000 || f.gpa.0 == 0xb000, "{f:?}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Toggle at least 2000 times, and until the readers ran concurrently for a while
    // (the machine may be busy), ending on domain 2.
    let start = std::time::Instant::now();
    let mut i = 0u32;
    while i < 2000 || reads.load(Ordering::Relaxed) < 1000 {
        iommu.attach(1, 1 + (i % 2)).unwrap();
        i += 1;
        assert!(start.elapsed().as_secs() < 30, "readers never ran");
    }
    iommu.attach(1, 2).unwrap();
    // After the last attach (to domain 2) returned, translations see domain 2 only.
    let ep = iommu.endpoint(1).unwrap();
    let f = ep
        .translate(IOVA, 1, Permissions::Read)
        .unwrap()
        .single()
        .unwrap();
    assert_eq!(f.gpa.0, 0xb000);
    done.store(true, Ordering::Relaxed);
    let total: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(total >= 1000);
}

const SENTINEL: u64 = 0x5e47_14e1_5e47_14e1;
/// Generations of the guarded test (each unmap may wait for device threads).
const GUARDED_GENERATIONS: u64 = 60;

/// With access guards, unmap waits for in-flight accesses: once it returned, no byte
/// moves through the old mapping. Device threads write tags through the view inside
/// guards; after each unmap returns, the unmapper writes a sentinel into the old guest
/// page; at the end no sentinel may have been overwritten.
#[test]
fn test_stress_guarded_accesses_never_write_after_unmap_returned() {
    let mem = Mem::from_ranges(&[(GuestAddress(0), (SLOTS * 1024 * PAGE) as usize)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let domain = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let devices: Vec<_> = (0..DEVICE_THREADS)
        .map(|t| {
            let view = iommu.view(1, mem.clone()).unwrap();
            let done = Arc::clone(&done);
            let written = Arc::clone(&written);
            thread::spawn(move || {
                let mut tag = (t as u64 + 1) << 32;
                while !done.load(Ordering::SeqCst) {
                    let _guard = view.pin();
                    for s in 0..SLOTS {
                        tag += 1;
                        // Translate, then hold the slices for a while before writing,
                        // as Reader/Writer do: the widest translate-then-use window.
                        let Ok(slices) =
                            view.get_slices(GuestAddress(iova_of(s) + 16), 8, Permissions::Write)
                        else {
                            continue;
                        };
                        let slices: Vec<_> = slices.collect::<Result<_, _>>().unwrap();
                        thread::yield_now();
                        for slice in slices {
                            slice.write_obj(tag, 0).unwrap();
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let raced = || written.load(Ordering::Relaxed) > 0;
    let mut generations = 0;
    while another_generation(generations, GUARDED_GENERATIONS, raced) {
        let g = generations;
        for s in 0..SLOTS {
            domain
                .map(iova_of(s), gpa_of(s, g), PAGE, Permissions::ReadWrite)
                .unwrap();
        }
        thread::yield_now();
        for s in 0..SLOTS {
            assert_eq!(domain.unmap(iova_of(s), PAGE), Ok(1));
            mem.write_obj(SENTINEL, GuestAddress(gpa_of(s, g) + 16))
                .unwrap();
        }
        generations += 1;
    }
    done.store(true, Ordering::SeqCst);
    for d in devices {
        d.join().unwrap();
    }
    let written = written.load(Ordering::SeqCst);
    assert!(written > 0, "no write in {generations} generations");
    for g in 0..generations {
        for s in 0..SLOTS {
            let v = mem
                .read_obj::<u64>(GuestAddress(gpa_of(s, g) + 16))
                .unwrap();
            assert_eq!(
                v, SENTINEL,
                "slot {s} generation {g}: written after unmap returned"
            );
        }
    }
}
