// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Random submit, out-of-order completion and reclaim orders on a packed
//! ring against a model. The test plays the device by writing used
//! descriptors at the device's used position, for any buffer in flight, so
//! completions come back in any order (the crate's packed device side is
//! in-order only). The driver must accept exactly what fits, hand out free
//! buffer ids, return each token with the length the device wrote, and at
//! the end hold no mapping (dma-debug strict reports nothing).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{platform_with_debug, Kind, Mem};
use proptest::prelude::*;
use virtio_dma::{Error, PackedQueue, QueueConfig};
use virtio_queue::desc::packed::Descriptor;
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::SgTable;
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 7;
const MAX_INDIRECT: u16 = 3;

#[derive(Clone, Debug)]
enum Op {
    Add { nout: u8, nin: u8, sg: bool },
    Complete { pick: usize, frac: u8 },
    Reclaim,
    Kick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..3, any::<bool>()).prop_map(|(nout, nin, sg)| Op::Add { nout, nin, sg }),
        3 => (any::<usize>(), 0u8..=4).prop_map(|(pick, frac)| Op::Complete { pick, frac }),
        2 => Just(Op::Reclaim),
        1 => Just(Op::Kick),
    ]
}

struct InFlight {
    token: u32,
    ndesc: u16,
    writable: u32,
}

fn run(kind: Kind, indirect: bool, ops: &[Op]) {
    let debug = Arc::new(DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        ..DebugConfig::default()
    }));
    let p = platform_with_debug(kind, DebugHook::new(Arc::clone(&debug)));
    let mut cfg = QueueConfig::new(SIZE).with_features(p.features(false, indirect));
    cfg.max_indirect = MAX_INDIRECT;
    let mut q = PackedQueue::<Mem, u32>::new(&p.dev, cfg).unwrap();
    let desc = q.ring_cpu_addrs().desc;
    // The device's used position and wrap counter.
    let (mut dpos, mut dwrap) = (0u16, true);
    let mut inflight: HashMap<u16, InFlight> = HashMap::new();
    let mut pending: Vec<u16> = Vec::new(); // ids the device has not completed
    let mut done: HashMap<u32, u32> = HashMap::new(); // token -> used len
    let mut free = SIZE;
    let mut token = 0u32;
    let mut added = false;
    for op in ops {
        match *op {
            Op::Add { nout, nin, sg } => {
                // Each token gets its own 4 KiB page: no overlap in flight.
                let base = p.buffers.0 + u64::from(token) * 0x1000;
                let out: Vec<_> = (0..u64::from(nout))
                    .map(|k| (GuestAddress(base + k * 0x100), 64))
                    .collect();
                let inb: Vec<_> = (0..u64::from(nin))
                    .map(|k| (GuestAddress(base + 0x800 + k * 0x100), 32))
                    .collect();
                let n = u16::from(nout + nin);
                let ndesc = if indirect && n > 1 && n <= MAX_INDIRECT {
                    1
                } else {
                    n
                };
                let res = if sg {
                    let t = |v: &[(GuestAddress, u32)]| {
                        SgTable::from_entries(v.iter().copied()).unwrap()
                    };
                    q.add_sgs(t(&out), t(&inb), token).map_err(|r| r.error)
                } else {
                    q.add(&out, &inb, token).map_err(|r| r.error)
                };
                match res {
                    Ok(id) => {
                        assert!(n > 0 && ndesc <= free);
                        assert!(!inflight.contains_key(&id) && id < SIZE);
                        inflight.insert(
                            id,
                            InFlight {
                                token,
                                ndesc,
                                writable: 32 * u32::from(nin),
                            },
                        );
                        pending.push(id);
                        free -= ndesc;
                        token += 1;
                        added = true;
                    }
                    Err(Error::EmptyRequest) => assert_eq!(n, 0),
                    Err(Error::QueueFull { .. }) => assert!(ndesc > free),
                    Err(e) => panic!("{e}"),
                }
                assert_eq!(q.num_free(), free);
            }
            Op::Complete { pick, frac } => {
                if pending.is_empty() {
                    continue;
                }
                let id = pending.swap_remove(pick % pending.len());
                let f = &inflight[&id];
                let len = f.writable * u32::from(frac) / 4;
                let flags = if dwrap { (1 << 7) | (1 << 15) } else { 0 };
                let d = Descriptor::new(0, len, id, flags);
                let at = GuestAddress(desc + 16 * u64::from(dpos));
                p.dev.memory().write_obj(d, at).unwrap();
                done.insert(f.token, len);
                dpos += f.ndesc;
                if dpos >= SIZE {
                    dpos -= SIZE;
                    dwrap = !dwrap;
                }
            }
            Op::Reclaim => {
                while let Some(u) = q.pop_used().unwrap() {
                    let f = inflight.remove(&u.head).unwrap();
                    assert_eq!(u.token, f.token);
                    assert_eq!(Some(u.len), done.remove(&u.token));
                    free += f.ndesc;
                }
                assert!(done.is_empty(), "every completion is reclaimed in one go");
                assert_eq!(
                    (q.num_free(), usize::from(q.in_flight())),
                    (free, inflight.len())
                );
            }
            Op::Kick => {
                // The device area stays ENABLE: kick iff something was added.
                assert_eq!(q.kick_prepare().unwrap(), added);
                added = false;
            }
        }
    }
    assert!(!q.is_broken());
    let mut left = q.destroy().unwrap();
    left.sort_unstable();
    let mut want: Vec<_> = inflight.values().map(|f| f.token).collect();
    want.sort_unstable();
    assert_eq!(left, want);
    let leaks = p.dev.release_debug().unwrap();
    assert!(leaks.is_empty(), "{leaks}");
    assert_eq!(
        debug.report().error_count,
        0,
        "{:#?}",
        debug.report().events
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn packed_random_completion_orders_match_the_model(
        kind in prop_oneof![Just(Kind::Direct), Just(Kind::Bounce), Just(Kind::NoPlatform)],
        indirect in any::<bool>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(kind, indirect, &ops);
    }
}
