// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests: MAP/UNMAP sequences against a model of the spec's semantics,
//! and arbitrary request bytes.

#![allow(clippy::unwrap_used)]

mod iommu_common;

use iommu_common::*;
use proptest::prelude::*;
use virtio_dma::iommu::Status;
use vm_memory::Permissions;

const PAGE: u64 = 0x1000;

#[derive(Clone, Debug)]
enum Op {
    /// Map pages `first..first + count`.
    Map { first: u64, count: u64 },
    /// Unmap from page `first` (+ half a page if `skew_start`) to the end of page
    /// `last` (- half a page if `skew_end`).
    Unmap {
        first: u64,
        last: u64,
        skew_start: bool,
        skew_end: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..32, 1u64..5).prop_map(|(first, count)| Op::Map { first, count }),
        (0u64..32, 0u64..8, any::<bool>(), any::<bool>()).prop_map(
            |(first, n, skew_start, skew_end)| {
                Op::Unmap {
                    first,
                    last: first + n,
                    skew_start,
                    skew_end,
                }
            }
        ),
    ]
}

/// The spec's semantics over inclusive byte ranges.
#[derive(Default)]
struct Model {
    maps: Vec<(u64, u64)>,
}

impl Model {
    fn map(&mut self, s: u64, e: u64) -> Status {
        if self.maps.iter().any(|&(ms, me)| ms <= e && s <= me) {
            return Status::Inval;
        }
        self.maps.push((s, e));
        Status::Ok
    }

    fn unmap(&mut self, s: u64, e: u64) -> Status {
        if e < s {
            return Status::Inval;
        }
        let affected = |&(ms, me): &(u64, u64)| ms <= e && s <= me;
        if self
            .maps
            .iter()
            .filter(|m| affected(m))
            .any(|&(ms, me)| ms < s || me > e)
        {
            return Status::Range;
        }
        self.maps.retain(|m| !affected(m));
        Status::Ok
    }

    fn mapped(&self, a: u64) -> bool {
        self.maps.iter().any(|&(s, e)| s <= a && a <= e)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn map_unmap_follow_the_spec_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (iommu, mut dev) = device(&[1]);
        prop_assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
        let mut model = Model::default();
        for op in &ops {
            let (got, want) = match *op {
                Op::Map { first, count } => {
                    let (s, e) = (first * PAGE, (first + count) * PAGE - 1);
                    (status(&mut dev, &map(1, s, e, s, RW)), model.map(s, e))
                }
                Op::Unmap { first, last, skew_start, skew_end } => {
                    let s = first * PAGE + if skew_start { PAGE / 2 } else { 0 };
                    let e = (last + 1) * PAGE - 1 - if skew_end { PAGE / 2 } else { 0 };
                    (status(&mut dev, &unmap(1, s, e)), model.unmap(s, e))
                }
            };
            prop_assert_eq!(got, want, "{:?}", op);
            prop_assert_eq!(
                iommu.domain(1).unwrap().mapping_count().unwrap(),
                model.maps.len()
            );
        }
        for page in 0..40u64 {
            let a = page * PAGE + 8;
            prop_assert_eq!(
                iommu.translate(1, a, 1, Permissions::Read).is_ok(),
                model.mapped(a),
                "page {}", page
            );
        }
    }

    #[test]
    fn arbitrary_request_bytes_never_panic_and_reply_or_stay_untouched(
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
        type_ in 0u8..8,
        reply_len in 0usize..600,
    ) {
        let (_, mut dev) = device(&[0, 1, 2]);
        let mut req = bytes;
        if let Some(t) = req.first_mut() {
            *t = type_;
        }
        let mut reply = vec![0xeeu8; reply_len];
        let used = dev.handle_request(&req, &mut reply);
        if used == 0 {
            prop_assert!(reply.iter().all(|&b| b == 0xee));
        } else {
            prop_assert_eq!(used as usize, reply_len);
            let tail = &reply[reply_len - 4..];
            prop_assert!(Status::from_u8(tail[0]).is_some());
            prop_assert_eq!(&tail[1..], &[0, 0, 0]);
        }
    }
}
