// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! dma-debug hook costs, beside a no-op baseline:
//!
//! - `debug/off/map_unmap_hooks`: a map + unmap hook pair on `DebugHook::off()`
//!   (one `Option` branch each), what every device pays with debug off;
//! - `debug/off/map_unmap_hooks_disabled`: the same on a `DmaDebug` that was
//!   disabled (one relaxed atomic load each);
//! - `debug/on/map_unmap_hooks`: the pair with 1000 other live entries
//!   (lock, hash insert, cache line insert, best-fit lookup, removal).
//!
//! And the real calls, a 4 KiB `map_single` + `unmap` (the code of
//! `dma_map/direct/map_unmap_4k`) and its raw form, on devices side by side:
//!
//! - `debug/real/off/map_unmap_4k`, `debug/real/off/map_unmap_raw_4k`: a
//!   device without dma-debug (the default);
//! - `debug/real/disabled/map_unmap_4k`: a device whose tracker disabled
//!   itself;
//! - `debug/real/on/map_unmap_4k`, `debug/real/on/map_unmap_raw_4k`: a device
//!   with dma-debug on (report mode) and 1000 other live mappings.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use vm_dma::debug::{DebugConfig, DebugHook, DeviceRef, DmaDebug, Kind, MapEntry};
use vm_dma::{Attrs, DeviceConfig, Direction, DmaAddr, DmaBus, DmaDevice, DmaMask};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const DEV: DeviceRef<'static> = DeviceRef::new(1, "bench");
const ADDR: u64 = 0x4000_0000;

fn entry() -> MapEntry {
    MapEntry::new(
        Kind::Single,
        DmaAddr(ADDR),
        4096,
        Direction::FromDevice,
        GuestAddress(ADDR),
    )
}

fn pair(hook: &DebugHook, e: &MapEntry) {
    hook.map(DEV, black_box(e)).unwrap();
    hook.unmap(DEV, Kind::Single, black_box(e.dma), e.size, e.dir)
        .unwrap();
}

fn bench_debug(c: &mut Criterion) {
    let e = entry();

    c.bench_function("debug/baseline/noop", |b| {
        b.iter(|| black_box(black_box(&e).dma))
    });

    let off = DebugHook::off();
    c.bench_function("debug/off/map_unmap_hooks", |b| b.iter(|| pair(&off, &e)));

    let disabled = Arc::new(DmaDebug::new(DebugConfig::default()));
    disabled.disable();
    let disabled = DebugHook::new(disabled);
    c.bench_function("debug/off/map_unmap_hooks_disabled", |b| {
        b.iter(|| pair(&disabled, &e))
    });

    let on = DebugHook::new(Arc::new(DmaDebug::new(DebugConfig::default())));
    for i in 0..1000u64 {
        let a = 0x1000_0000 + i * 0x1000;
        let other = MapEntry::new(
            Kind::Page,
            DmaAddr(a),
            2048,
            Direction::FromDevice,
            GuestAddress(a),
        );
        on.map(DEV, &other).unwrap();
    }
    c.bench_function("debug/on/map_unmap_hooks", |b| b.iter(|| pair(&on, &e)));
    let debug = on.get().unwrap();
    assert_eq!(debug.live_entries(), 1000);
    assert_eq!(debug.report().error_count, 0);
}

type Dev = DmaDevice<GuestMemoryMmap<()>>;

const PAGE: u64 = 4096;

fn real_device(debug: DebugHook) -> Dev {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let bus = DmaBus::new(mem).unwrap();
    let mut cfg = DeviceConfig::new("bench");
    cfg.dma_mask = DmaMask::FULL;
    cfg.debug = debug;
    DmaDevice::with_config(&bus, cfg)
}

fn map_unmap(dev: &Dev, addr: GuestAddress) {
    let m = dev
        .map_single(black_box(addr), PAGE, Direction::ToDevice)
        .unwrap();
    black_box(m.dma_addr());
    dev.unmap(m).unwrap();
}

fn map_unmap_raw(dev: &Dev, addr: GuestAddress) {
    let dma = dev
        .map_single_raw(black_box(addr), PAGE, Direction::ToDevice, Attrs::empty())
        .unwrap();
    dev.unmap_single_raw(black_box(dma), PAGE, Direction::ToDevice, Attrs::empty())
        .unwrap();
}

fn bench_real(c: &mut Criterion) {
    let addr = GuestAddress(16 << 20);
    let off = real_device(DebugHook::off());
    c.bench_function("debug/real/off/map_unmap_4k", |b| {
        b.iter(|| map_unmap(&off, addr))
    });
    c.bench_function("debug/real/off/map_unmap_raw_4k", |b| {
        b.iter(|| map_unmap_raw(&off, addr))
    });

    let disabled = Arc::new(DmaDebug::new(DebugConfig::default()));
    disabled.disable();
    let disabled = real_device(DebugHook::new(disabled));
    c.bench_function("debug/real/disabled/map_unmap_4k", |b| {
        b.iter(|| map_unmap(&disabled, addr))
    });

    let debug = Arc::new(DmaDebug::new(DebugConfig::default()));
    let on = real_device(DebugHook::new(Arc::clone(&debug)));
    let others: Vec<_> = (0..1000u64)
        .map(|i| {
            let a = GuestAddress((32 << 20) + i * PAGE);
            on.map_single(a, 2048, Direction::FromDevice).unwrap()
        })
        .collect();
    c.bench_function("debug/real/on/map_unmap_4k", |b| {
        b.iter(|| map_unmap(&on, addr))
    });
    c.bench_function("debug/real/on/map_unmap_raw_4k", |b| {
        b.iter(|| map_unmap_raw(&on, addr))
    });
    assert_eq!(debug.live_entries(), 1000);
    for m in others {
        on.unmap(m).unwrap();
    }
    assert_eq!(debug.report().error_count, 0);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_debug, bench_real
}
