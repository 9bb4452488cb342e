// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Entries that outlive or overflow the tracker: leaks at device release
//! (check 24), the entry cap (check 25) and pool misuse.

use super::*;

#[test]
fn check24_release_reports_every_leaked_entry_with_its_location() {
    let d = report_mode();
    let l1 = line!() + 1;
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    let l2 = line!() + 1;
    d.alloc_coherent(
        DEV,
        DmaAddr(0x40000),
        4096,
        GuestAddress(0x40000),
        Attrs::empty(),
    )
    .unwrap();
    d.map(DEV2, &single(0x1000, 512, ToDev)).unwrap();
    let report = d.release_device(DEV);
    assert_eq!(report.device.id, 1);
    assert_eq!(report.entries.len(), 2);
    let e0 = &report.entries[0];
    assert_eq!(
        (e0.kind, e0.dma, e0.size, e0.dir, e0.cpu),
        (
            Kind::Single,
            DmaAddr(0x1000),
            512,
            ToDev,
            GuestAddress(0x1000)
        )
    );
    assert_eq!((e0.mapped_at.file(), e0.mapped_at.line()), (file!(), l1));
    let e1 = &report.entries[1];
    assert_eq!(
        (e1.kind, e1.dma, e1.size, e1.dir),
        (Kind::Coherent, DmaAddr(0x40000), 4096, Bidir)
    );
    assert_eq!(e1.mapped_at.line(), l2);
    let text = report.to_string();
    assert!(text.contains("[count=2]"), "{text}");
    assert!(text.contains(&format!("{}:{l1}:", file!())), "{text}");

    let e = only(&d);
    assert_eq!(e.check, Check::Leak);
    assert_eq!(
        e.details,
        Details::Leak {
            count: 2,
            dma: DmaAddr(0x1000),
            size: 512,
            dir: ToDev,
            kind: Kind::Single
        }
    );
    assert_eq!(e.mapped_at.map(|l| l.line()), Some(l1));
    assert!(e.message().starts_with(
        "device driver has pending DMA allocations while released from device [count=2]"
    ));
    // The other device keeps its entry; a clean release reports nothing.
    assert_eq!(d.live_entries(), 1);
    assert!(d.release_device(DEV).is_empty());
    assert_eq!(d.report().events.len(), 1);
}

// ---- check 25: the entry cap ----

#[test]
fn check25_full_tracker_reports_and_disables_itself() {
    let d = DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        max_entries: 2,
        ..DebugConfig::default()
    });
    d.map(DEV, &single(0x1000, 16, ToDev)).unwrap();
    d.map(DEV, &single(0x2000, 16, ToDev)).unwrap();
    // Not a misuse: Ok even in strict mode.
    d.map(DEV, &single(0x3000, 16, ToDev)).unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::OutOfEntries);
    assert_eq!(e.details, Details::OutOfEntries { limit: 2 });
    assert!(!d.is_enabled());
    let r = d.report();
    assert!(!r.enabled);
    assert_eq!(r.error_count, 0);
    assert_eq!(r.live_entries, 2);
    // Off now: the untracked entry's unmap is not reported.
    d.unmap(DEV, Kind::Single, DmaAddr(0x3000), 16, ToDev)
        .unwrap();
    assert_eq!(d.report().events.len(), 1);
}

// ---- pool misuse ----

#[test]
fn pool_misuse_goes_through_the_same_channel() {
    let d = report_mode();
    d.pool_event(
        DEV,
        PoolMisuse::DoubleFree {
            pool: "rx".into(),
            dma: DmaAddr(0x1040),
        },
    )
    .unwrap();
    d.pool_event(
        DEV,
        PoolMisuse::ForeignFree {
            pool: "rx".into(),
            dma: DmaAddr(0x9000),
        },
    )
    .unwrap();
    d.pool_event(
        DEV,
        PoolMisuse::DestroyBusy {
            pool: "rx".into(),
            active: 3,
        },
    )
    .unwrap();
    assert_eq!(
        checks(&d),
        vec![
            Check::PoolDoubleFree,
            Check::PoolForeignFree,
            Check::PoolDestroyBusy
        ]
    );
    let msgs: Vec<String> = d.report().events.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            "dma_pool_free rx, dma 0x1040 already free",
            "dma_pool_free rx, 0x9000 (bad dma)",
            "dma_pool_destroy rx busy [active=3]"
        ]
    );
    let s = strict_mode();
    let err = s
        .pool_event(
            DEV,
            PoolMisuse::DestroyBusy {
                pool: "tx".into(),
                active: 1,
            },
        )
        .unwrap_err();
    assert_eq!(err.check, Check::PoolDestroyBusy);
}
