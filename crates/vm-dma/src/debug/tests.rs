// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One test per check, the lookup rules, the modes and a property test,
//! grouped by what they exercise; the fixtures they share are here.

use proptest::prelude::*;

use super::*;
use crate::types::DmaParms;

const DEV: DeviceRef<'static> = DeviceRef::new(1, "nic0");
const DEV2: DeviceRef<'static> = DeviceRef::new(2, "disk0");

use Direction::{Bidirectional as Bidir, FromDevice as FromDev, ToDevice as ToDev};

fn report_mode() -> DmaDebug {
    DmaDebug::new(DebugConfig::default())
}

fn strict_mode() -> DmaDebug {
    DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        ..DebugConfig::default()
    })
}

fn entry(kind: Kind, addr: u64, size: u64, dir: Direction) -> MapEntry {
    MapEntry::new(kind, DmaAddr(addr), size, dir, GuestAddress(addr))
}

fn single(addr: u64, size: u64, dir: Direction) -> MapEntry {
    entry(Kind::Single, addr, size, dir)
}

fn checks(d: &DmaDebug) -> Vec<Check> {
    d.report().events.iter().map(|e| e.check).collect()
}

/// The one event recorded so far.
fn only(d: &DmaDebug) -> DebugEvent {
    let r = d.report();
    assert_eq!(r.events.len(), 1, "{:#?}", r.events);
    r.events[0].clone()
}

fn dirs(addr: u64, size: u64, mapped: Direction, requested: Direction) -> Details {
    Details::Direction {
        dma: DmaAddr(addr),
        size,
        mapped,
        requested,
    }
}

fn map_three_segments(d: &DmaDebug, dir: Direction) -> Vec<(DmaAddr, u64)> {
    let sg = [
        (GuestAddress(0x10000), 0x1000),
        (GuestAddress(0x20000), 0x1000),
        (GuestAddress(0x30000), 0x1000),
    ];
    let mapped = [
        (DmaAddr(0x10000), 0x1000),
        (DmaAddr(0x20000), 0x1000),
        (DmaAddr(0x30000), 0x1000),
    ];
    d.map_sg(DEV, &sg, &mapped, dir, Attrs::empty(), &DmaParms::default())
        .unwrap();
    mapped.to_vec()
}

#[track_caller]
fn line_map(d: &DmaDebug, dma: u64, cpu: u64, dir: Direction, attrs: Attrs) {
    let e = MapEntry::new(Kind::Single, DmaAddr(dma), 32, dir, GuestAddress(cpu)).with_attrs(attrs);
    d.map(DEV, &e).unwrap();
}

mod api;
mod lifetime;
mod lookup;
mod map;
mod modes;
mod random;
mod sync;
mod unmap;
