// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `BlkDriver` against a hostile device (property test): the device pops
//! the chains and answers each with any status byte and any used length —
//! or writes a used entry whose id or length is impossible. The driver
//! never panics; every plausible entry completes its request with exactly
//! the classification the bytes call for (status, `NoStatus`,
//! `UnknownStatus`, `ShortRead`); every impossible one breaks the queue,
//! and `reset` gives back exactly the requests still in flight. Under
//! strict dma-debug nothing leaks and nothing is misused.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{platform_with_debug, Kind, Mem};
use proptest::prelude::*;
use virtio_dma::blk::driver::{BadCompletion, BlkDriver, BlkDriverConfig, DriverError};
use virtio_dma::blk::{RequestType, Status};
use virtio_dma::{queue_from_rings, Error, QueueConfig};
use virtio_queue::QueueOwnedT;
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 16;

/// What the device does with the next chain.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Writes `status` and uses the chain with `len` (capped at what was
    /// posted, so the entry is plausible).
    Plausible { status: u8, len: u32 },
    /// A used entry with this id (taken modulo 64: often out of range or
    /// not a head) and length.
    Forged { id: u32, len: u32 },
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        8 => (prop_oneof![Just(0u8), Just(1), Just(2), any::<u8>()], 0u32..1200)
            .prop_map(|(status, len)| Answer::Plausible { status, len }),
        1 => (0u32..64, 0u32..2000).prop_map(|(id, len)| Answer::Forged { id, len }),
    ]
}

/// A request: 0 read, 1 write, 2 flush; sectors 1..=2.
fn request() -> impl Strategy<Value = (u8, u64)> {
    (0u8..3, 1u64..=2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn hostile_completions_never_panic_and_are_classified(
        rounds in prop::collection::vec(
            (prop::collection::vec(request(), 1..6), prop::collection::vec(answer(), 6)),
            1..6,
        ),
    ) {
        let debug = Arc::new(DmaDebug::new(DebugConfig {
            mode: DebugMode::Strict,
            ..DebugConfig::default()
        }));
        let p = platform_with_debug(Kind::Direct, DebugHook::new(Arc::clone(&debug)));
        let cfg = BlkDriverConfig::new(QueueConfig::new(SIZE).with_features(p.features(false, false)));
        let mut drv: BlkDriver<Mem, u32> = BlkDriver::new(&p.dev, cfg).unwrap();
        let view = p.dev.device_view();
        let mut q = queue_from_rings(drv.ring_addrs(), SIZE, false).unwrap();
        let mut token = 0u32;
        for (reqs, answers) in rounds {
            // (type, data bytes) of every request in flight.
            let mut posted: HashMap<u32, (RequestType, u32)> = HashMap::new();
            for (kind, sectors) in reqs {
                token += 1;
                let len = (sectors * 512) as u32;
                let buf = [(GuestAddress(p.buffers.0 + u64::from(token % 64) * 0x2000), len)];
                let (res, ty, data) = match kind {
                    0 => (drv.read(0, &buf, token), RequestType::In, len),
                    1 => (drv.write(0, &buf, token), RequestType::Out, 0),
                    _ => (drv.flush(token), RequestType::Flush, 0),
                };
                match res {
                    Ok(_) => {
                        posted.insert(token, (ty, data));
                    }
                    Err(r) => prop_assert!(matches!(r.error, DriverError::QueueFull { .. }), "{r:?}"),
                }
            }
            // The device pops what was posted; chains' heads and status
            // byte addresses, in order.
            let mut chains = Vec::new();
            while let Some(c) = q.iter(&view).unwrap().next() {
                let last = c.clone().last().unwrap();
                let writable: u32 = c.clone().filter(|d| d.is_write_only()).map(|d| d.len()).sum();
                chains.push((c.head_index(), last.addr(), writable));
            }
            let mut broken = false;
            // Heads a forged entry already completed.
            let mut taken = Vec::new();
            for (i, &(head, status_at, writable)) in chains.iter().enumerate() {
                let a = answers[i % answers.len()];
                let (id, len, status) = match a {
                    Answer::Plausible { status, len } => {
                        let len = len.min(writable);
                        if len > 0 {
                            view.write_obj(status, status_at).unwrap();
                        }
                        (u32::from(head), len, status)
                    }
                    // The status byte was preset and nobody wrote it.
                    Answer::Forged { id, len } => (id, len, 0xff),
                };
                // A used element, written as a device would.
                let used = drv.ring_addrs().used;
                let idx: u16 = view.read_obj(GuestAddress(used + 2)).unwrap();
                let at = used + 4 + 8 * u64::from(idx % SIZE);
                view.write_obj(id, GuestAddress(at)).unwrap();
                view.write_obj(len, GuestAddress(at + 4)).unwrap();
                view.write_obj(idx.wrapping_add(1), GuestAddress(used + 2)).unwrap();
                match drv.poll() {
                    Ok(Some(c)) => {
                        let (ty, data) = posted.remove(&c.token).unwrap();
                        taken.push(id);
                        prop_assert_eq!(c.request, ty);
                        prop_assert_eq!(c.used_len, len);
                        let want = if len == 0 {
                            Err(BadCompletion::NoStatus)
                        } else {
                            match Status::try_from(status) {
                                Err(_) => Err(BadCompletion::UnknownStatus(status)),
                                Ok(Status::Ok) if ty == RequestType::In && len != data + 1 => {
                                    Err(BadCompletion::ShortRead {
                                        used_len: len,
                                        expected: u64::from(data) + 1,
                                    })
                                }
                                Ok(s) => Ok(s),
                            }
                        };
                        prop_assert_eq!(c.status, want);
                    }
                    Ok(None) => prop_assert!(false, "a used entry was written"),
                    Err(DriverError::Queue(e)) => {
                        prop_assert!(matches!(
                            e,
                            Error::UsedIdOutOfRange { .. }
                                | Error::UsedIdNotInFlight { .. }
                                | Error::UsedLenTooLarge { .. }
                        ), "{e}");
                        // Only a forged entry, or a true one for a chain a
                        // forged entry already completed.
                        let forged = matches!(a, Answer::Forged { .. });
                        prop_assert!(forged || taken.contains(&u32::from(head)), "{:?}", a);
                        broken = true;
                        break;
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
            if broken {
                prop_assert!(drv.is_broken());
                let mut back = drv.reset();
                back.sort_unstable();
                let mut want: Vec<u32> = posted.keys().copied().collect();
                want.sort_unstable();
                prop_assert_eq!(back, want);
                q = queue_from_rings(drv.ring_addrs(), SIZE, false).unwrap();
            } else {
                prop_assert!(posted.is_empty());
            }
            prop_assert_eq!((drv.in_flight(), drv.num_free()), (0, SIZE));
        }
        prop_assert!(drv.destroy().unwrap().is_empty());
        let leaks = p.dev.release_debug().unwrap();
        prop_assert!(leaks.is_empty(), "{}", leaks);
        prop_assert_eq!(debug.report().error_count, 0);
    }
}
