// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Bounce buffer (swiotlb) throughput beside plain memcpy of the same bytes
//! in the same run, and the 4 KiB-aliasing case: a bounce whose distance to
//! its original is 16 modulo 4096, where glibc's `memcpy` is ~20x slower.
//!
//! Throughput is bytes *copied*: a `ToDevice` map+unmap copies once, a
//! `FromDevice` one twice (in at map, back at unmap).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vm_dma::{Attrs, BusConfig, DeviceConfig, Direction, DmaBus, DmaDevice};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 << 10;
/// A page-aligned buffer: the bounce (page-aligned, as Linux places bounces
/// of a page or more) is at distance 0 modulo 4096.
const ALIGNED: u64 = 8 * MIB;
/// 4080 modulo 4096: the bounce lies 16 bytes "ahead" modulo 4096.
const ALIAS16: u64 = 16 * MIB + 4080;

fn device() -> DmaDevice<Mem> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
    let cfg = BusConfig {
        swiotlb_size: 4 * MIB,
        ..Default::default()
    };
    let bus = DmaBus::with_config(mem, cfg).unwrap();
    let mut dev = DeviceConfig::new("bench");
    dev.force_bounce = true;
    DmaDevice::with_config(&bus, dev)
}

/// The anchor: one memcpy of `SIZE` guest bytes at distance `dst - src`.
fn memcpy(mem: &Mem, src: u64, dst: u64) {
    let s = mem.get_slice(GuestAddress(src), SIZE as usize).unwrap();
    let d = mem.get_slice(GuestAddress(dst), SIZE as usize).unwrap();
    s.copy_to_volatile_slice(d);
}

fn bench(c: &mut Criterion) {
    let dev = device();
    let mem = dev.memory().clone();
    let mut g = c.benchmark_group("dma/bounce");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    g.throughput(Throughput::Bytes(SIZE));
    g.bench_function("memcpy_64k", |b| {
        b.iter(|| memcpy(&mem, black_box(ALIGNED), black_box(32 * MIB)))
    });
    g.bench_function("memcpy_64k_alias16", |b| {
        b.iter(|| memcpy(&mem, black_box(ALIAS16), black_box(32 * MIB + 4096)))
    });
    for (name, addr) in [
        ("to_device_64k", ALIGNED),
        ("to_device_64k_alias16", ALIAS16),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let m = dev
                    .map_single(GuestAddress(black_box(addr)), SIZE, Direction::ToDevice)
                    .unwrap();
                dev.unmap(m).unwrap();
            })
        });
    }
    g.throughput(Throughput::Bytes(2 * SIZE));
    g.bench_function("to_device_sync_64k", |b| {
        b.iter(|| {
            let m = dev
                .map_single(GuestAddress(black_box(ALIGNED)), SIZE, Direction::ToDevice)
                .unwrap();
            dev.sync_single_for_device(&m, 0, SIZE).unwrap();
            dev.unmap(m).unwrap();
        })
    });
    g.bench_function("from_device_64k", |b| {
        b.iter(|| {
            let m = dev
                .map_single_attrs(
                    GuestAddress(black_box(ALIGNED)),
                    SIZE,
                    Direction::FromDevice,
                    Attrs::empty(),
                )
                .unwrap();
            dev.unmap(m).unwrap();
        })
    });
    g.finish();
}

criterion::criterion_group!(benches, bench);
