// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Random submit, fetch, completion and reclaim orders against a model:
//! the driver accepts a request exactly when the model says it fits (direct
//! or indirect), its free count matches the model, every reclaimed chain
//! carries its own token, the length the device wrote and the device's
//! data, and at the end nothing is mapped, bounced or leaked (dma-debug in
//! strict mode reports nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use common::{pattern, platform_with_debug, Kind, Mem, Platform};
use proptest::prelude::*;
use virtio_dma::{queue_from_rings, vring_need_event, Error, QueueConfig, SplitQueue};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Reader, Writer};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::SgTable;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const SIZE: u16 = 8;
const MAX_INDIRECT: u16 = 4;
const AREAS: usize = 32;
const AREA: u64 = 0x4000;

#[derive(Clone, Debug)]
enum Op {
    Add {
        nout: u8,
        nin: u8,
        len: u16,
        sg: bool,
    },
    Fetch,
    Complete {
        pick: usize,
        frac: u8,
    },
    Reclaim,
    Kick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..4, 1u16..700, any::<bool>())
            .prop_map(|(nout, nin, len, sg)| Op::Add { nout, nin, len, sg }),
        2 => Just(Op::Fetch),
        3 => (any::<usize>(), 0u8..=4).prop_map(|(pick, frac)| Op::Complete { pick, frac }),
        2 => Just(Op::Reclaim),
        1 => Just(Op::Kick),
    ]
}

type Segs = Vec<(GuestAddress, u32)>;
/// An area, out buffers, in buffers, the payload.
type Bufs = (usize, Segs, Segs, Vec<u8>);

struct Posted {
    area: usize,
    payload: Vec<u8>,
    inb: Vec<(GuestAddress, u32)>,
    ndesc: u16,
}

struct Model<'p> {
    p: &'p Platform,
    indirect: bool,
    event_idx: bool,
    areas: [bool; AREAS],
    posted: HashMap<u32, Posted>,
    /// Device-written length per head, until the driver reclaims it.
    written: HashMap<u16, u32>,
    free: u16,
    next_token: u32,
    avail: u16,
    added_since_kick: u16,
}

impl Model<'_> {
    fn buffers(&mut self, nout: u8, nin: u8, len: u16) -> Option<Bufs> {
        let area = self.areas.iter().position(|used| !used)?;
        let base = self.p.buffers.0 + area as u64 * AREA;
        let payload = pattern(
            u64::from(self.next_token),
            usize::from(len) * usize::from(nout),
        );
        let mut out = Vec::new();
        for k in 0..u64::from(nout) {
            let addr = GuestAddress(base + 0x10 + k * 0x800);
            let start = k as usize * usize::from(len);
            self.p
                .dev
                .memory()
                .write_slice(&payload[start..start + usize::from(len)], addr)
                .unwrap();
            out.push((addr, u32::from(len)));
        }
        let inb: Vec<_> = (0..u64::from(nin))
            .map(|k| {
                (
                    GuestAddress(base + 0x2000 + 0x40 + k * 0x800),
                    u32::from(len),
                )
            })
            .collect();
        Some((area, out, inb, payload))
    }

    fn add(&mut self, q: &mut SplitQueue<Mem, u32>, nout: u8, nin: u8, len: u16, sg: bool) {
        let Some((area, out, inb, payload)) = self.buffers(nout, nin, len) else {
            return;
        };
        let n = u16::from(nout + nin);
        let ndesc = if self.indirect && n > 1 && n <= MAX_INDIRECT {
            1
        } else {
            n
        };
        let token = self.next_token;
        let res = if sg {
            let t = |v: &[(GuestAddress, u32)]| SgTable::from_entries(v.iter().copied()).unwrap();
            q.add_sgs(t(&out), t(&inb), token).map_err(|r| r.error)
        } else {
            q.add(&out, &inb, token).map_err(|r| r.error)
        };
        match res {
            Ok(_) => {
                assert!(
                    n > 0 && ndesc <= self.free,
                    "accepted {n} with {} free",
                    self.free
                );
                self.free -= ndesc;
                self.areas[area] = true;
                self.posted.insert(
                    token,
                    Posted {
                        area,
                        payload,
                        inb,
                        ndesc,
                    },
                );
                self.next_token += 1;
                self.avail = self.avail.wrapping_add(1);
                self.added_since_kick += 1;
            }
            Err(Error::EmptyRequest) => assert_eq!(n, 0),
            Err(Error::QueueFull { .. }) => assert!(ndesc > self.free),
            Err(e) => panic!("unexpected {e}"),
        }
        assert_eq!(q.num_free(), self.free);
    }

    fn reclaim(&mut self, q: &mut SplitQueue<Mem, u32>) {
        while let Some(u) = q.pop_used().unwrap() {
            let posted = self.posted.remove(&u.token).expect("token in flight");
            assert_eq!(Some(u.len), self.written.remove(&u.head));
            let mut want = posted.payload.clone();
            want.reverse();
            want.truncate(u.len as usize);
            let mut got = Vec::new();
            for &(addr, len) in &posted.inb {
                let mut part = vec![0u8; len as usize];
                self.p.dev.memory().read_slice(&mut part, addr).unwrap();
                got.extend(part);
            }
            got.truncate(u.len as usize);
            assert_eq!(got, want, "token {}", u.token);
            self.free += posted.ndesc;
            self.areas[posted.area] = false;
        }
        assert_eq!(q.num_free(), self.free);
        assert_eq!(usize::from(q.in_flight()), self.posted.len());
    }
}

/// The device completes one fetched chain: the readable bytes reversed,
/// `frac` quarters of what fits.
fn complete<V: GuestMemory>(view: &V, chain: DescriptorChain<&V>, frac: u8) -> u32 {
    let mut r = Reader::new(view, chain.clone()).unwrap();
    let mut w = Writer::new(view, chain).unwrap();
    let mut data = vec![0u8; r.available_bytes()];
    r.read_exact(&mut data).unwrap();
    data.reverse();
    let n = data.len().min(w.available_bytes()) * usize::from(frac) / 4;
    w.write_all(&data[..n]).unwrap();
    n as u32
}

fn run(kind: Kind, event_idx: bool, indirect: bool, ops: &[Op]) {
    let debug = Arc::new(DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        ..DebugConfig::default()
    }));
    let p = platform_with_debug(kind, DebugHook::new(Arc::clone(&debug)));
    let mut cfg = QueueConfig::new(SIZE).with_features(p.features(event_idx, indirect));
    cfg.max_indirect = MAX_INDIRECT;
    let mut q = SplitQueue::<Mem, u32>::new(&p.dev, cfg).unwrap();
    let mut m = Model {
        p: &p,
        indirect,
        event_idx,
        areas: [false; AREAS],
        posted: HashMap::new(),
        written: HashMap::new(),
        free: SIZE,
        next_token: 0,
        avail: 0,
        added_since_kick: 0,
    };
    with_view!(p, |view| {
        let mut dq = queue_from_rings(q.ring_addrs(), SIZE, event_idx).unwrap();
        let mut fetched: Vec<DescriptorChain<&_>> = Vec::new();
        let fetch = |dq: &mut virtio_queue::Queue, fetched: &mut Vec<_>| {
            for chain in dq.iter(&view).unwrap() {
                fetched.push(chain);
            }
        };
        for op in ops {
            match *op {
                Op::Add { nout, nin, len, sg } => m.add(&mut q, nout, nin, len, sg),
                Op::Fetch => fetch(&mut dq, &mut fetched),
                Op::Complete { pick, frac } => {
                    if !fetched.is_empty() {
                        let chain = fetched.swap_remove(pick % fetched.len());
                        let head = chain.head_index();
                        let n = complete(&view, chain, frac);
                        dq.add_used(&view, head, n).unwrap();
                        assert!(m.written.insert(head, n).is_none());
                    }
                }
                Op::Reclaim => m.reclaim(&mut q),
                Op::Kick => {
                    let old = m.avail.wrapping_sub(m.added_since_kick);
                    let want = m.added_since_kick > 0
                        && (!m.event_idx || vring_need_event(0, m.avail, old));
                    assert_eq!(q.kick_prepare().unwrap(), want);
                    m.added_since_kick = 0;
                }
            }
        }
        // Drain: the device finishes everything, the driver reclaims it.
        fetch(&mut dq, &mut fetched);
        for chain in fetched.drain(..) {
            let head = chain.head_index();
            let n = complete(&view, chain, 4);
            dq.add_used(&view, head, n).unwrap();
            m.written.insert(head, n);
        }
        m.reclaim(&mut q);
    });
    assert!(m.posted.is_empty() && m.written.is_empty());
    assert_eq!((q.num_free(), q.in_flight()), (SIZE, 0));
    assert!(!q.is_broken());
    assert!(q.destroy().unwrap().is_empty());
    let leaks = p.dev.release_debug().unwrap();
    assert!(leaks.is_empty(), "{leaks}");
    let r = debug.report();
    assert_eq!(r.error_count, 0, "{:#?}", r.events);
    if let Some(tlb) = p.dev.bus().swiotlb() {
        assert_eq!(tlb.stats().used, 0);
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::NoPlatform),
        Just(Kind::Direct),
        Just(Kind::Bounce),
        Just(Kind::IommuView)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_submit_and_completion_orders_match_the_model(
        kind in kind(),
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(kind, event_idx, indirect, &ops);
    }
}
