// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hand-made inputs of `vhost_user_messages`: a real negotiation, queue set-up,
//! IOTLB traffic and malformed messages, the seeds of the corpus.

use super::*;

fn send(code: u8, flags: HFlags, payload: Payload, fds: Fds) -> Step {
    Step::Send(Msg {
        code: Code::Known(code),
        flags,
        size: Size::Exact,
        payload,
        fds,
    })
}

fn iotlb(iova: Edge, size: Edge, uaddr: Edge, perm: u8, type_: u8) -> Step {
    send(
        22,
        HFlags::NeedReply,
        Payload::Iotlb {
            iova,
            size,
            uaddr,
            perm,
            type_,
        },
        Fds::None,
    )
}

/// A sane negotiation: features with ACCESS_PLATFORM (or not), every protocol
/// feature offered, owner, memory table of the memfd at [`UADDR`].
fn negotiate(iommu: bool) -> Vec<Step> {
    let features = (1u64 << 32) | (1 << 30) | if iommu { ACCESS_PLATFORM } else { 0 };
    vec![
        send(1, HFlags::V1, Payload::Empty, Fds::None),
        send(15, HFlags::V1, Payload::Empty, Fds::None),
        send(16, HFlags::V1, Payload::U64(Edge::Raw(0x22b)), Fds::None),
        send(3, HFlags::NeedReply, Payload::Empty, Fds::None),
        send(
            2,
            HFlags::NeedReply,
            Payload::U64(Edge::Raw(features)),
            Fds::None,
        ),
        send(
            5,
            HFlags::NeedReply,
            Payload::MemTable {
                nregions: None,
                regions: vec![Region {
                    gpa: Edge::Zero,
                    size: Edge::Raw(MEMFD_LEN),
                    uaddr: Edge::Raw(UADDR),
                    offset: Edge::Zero,
                }],
            },
            Fds::Memfd(1),
        ),
    ]
}

/// Queue 0 of 16 entries with rings at IOVAs (or GPAs) `base`, kick fd, enable.
fn queue(base: u64) -> Vec<Step> {
    vec![
        send(
            8,
            HFlags::NeedReply,
            Payload::State {
                index: 0,
                num: Edge::Raw(16),
            },
            Fds::None,
        ),
        send(
            9,
            HFlags::NeedReply,
            Payload::Addr {
                index: 0,
                flags: 0,
                desc: Edge::Raw(base),
                used: Edge::Raw(base + 0x200),
                avail: Edge::Raw(base + 0x100),
                log: Edge::Zero,
            },
            Fds::None,
        ),
        send(
            10,
            HFlags::NeedReply,
            Payload::State {
                index: 0,
                num: Edge::Zero,
            },
            Fds::None,
        ),
        send(
            12,
            HFlags::NeedReply,
            Payload::U64(Edge::Zero),
            Fds::EventFd(1),
        ),
        send(
            13,
            HFlags::NeedReply,
            Payload::U64(Edge::Zero),
            Fds::EventFd(1),
        ),
        send(
            18,
            HFlags::NeedReply,
            Payload::State {
                index: 0,
                num: Edge::One,
            },
            Fds::None,
        ),
        Step::Kick(0),
    ]
}

/// Hand-made inputs (the seed corpus).
pub fn seeds() -> Vec<VhostInput> {
    let mut iommu = negotiate(true);
    iommu.push(iotlb(
        Edge::Raw(IOVA),
        Edge::Raw(0x10_0000),
        Edge::Raw(UADDR),
        3,
        2,
    ));
    iommu.extend(queue(IOVA));
    iommu.push(iotlb(Edge::Raw(IOVA), Edge::Raw(0x1000), Edge::Zero, 0, 3));
    iommu.push(iotlb(
        Edge::MaxPage,
        Edge::Raw(0x1000),
        Edge::Raw(UADDR),
        3,
        2,
    ));
    iommu.push(iotlb(Edge::Zero, Edge::Max { below: 0 }, Edge::Zero, 0, 3));
    iommu.push(send(
        11,
        HFlags::V1,
        Payload::State {
            index: 0,
            num: Edge::Zero,
        },
        Fds::None,
    ));
    let mut plain = negotiate(false);
    // Descriptor 0: 5 readable bytes at 0x2000, then descriptor 1: 16 writable
    // bytes at 0x3000; avail ring: idx 1, ring[0] = 0.
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut v = addr.to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&next.to_le_bytes());
        v
    };
    let mut table = desc(0x2000, 5, 1, 1);
    table.extend(desc(0x3000, 16, 2, 0));
    plain.push(Step::Poke {
        offset: Edge::Raw(0x1000),
        bytes: table,
    });
    plain.push(Step::Poke {
        offset: Edge::Raw(0x1100),
        bytes: vec![0, 0, 1, 0, 0, 0],
    });
    plain.push(Step::Poke {
        offset: Edge::Raw(0x2000),
        bytes: b"hello".to_vec(),
    });
    plain.extend(queue(UADDR + 0x1000));
    plain.push(send(
        24,
        HFlags::V1,
        Payload::Config {
            offset: 0,
            size: 8,
            flags: 0,
            data: vec![0; 8],
        },
        Fds::None,
    ));
    plain.push(send(21, HFlags::NeedReply, Payload::Empty, Fds::Socket));
    plain.push(iotlb(Edge::Raw(IOVA), Edge::One, Edge::Raw(UADDR), 3, 2));
    let mut caps = negotiate(true);
    for i in 0..8u16 {
        caps.push(iotlb(
            Edge::Raw(IOVA + u64::from(i) * 0x1000),
            Edge::Raw(0x1000),
            Edge::Raw(UADDR + u64::from(i) * 0x1000),
            1 + (i % 3) as u8,
            2,
        ));
    }
    caps.push(iotlb(Edge::Raw(IOVA), Edge::Raw(1 << 20), Edge::Zero, 7, 3));
    // Found by the fuzzer (a wrong oracle): an UPDATE without NEED_REPLY gets
    // no reply; the oracle matched the next IOTLB reply to it, and so every
    // later one a message too early, and then wanted a reply for the last.
    let mut quiet_update = caps.clone();
    if let Some(Step::Send(m)) = quiet_update.get_mut(6 + 4) {
        m.flags = HFlags::V1;
    }
    // A region twice the size of its file, rings past the end of the file
    // (killed the daemon with SIGBUS before the table was refused).
    let mut past_eof = negotiate(false);
    if let Some(Step::Send(m)) = past_eof.get_mut(5) {
        m.payload = Payload::MemTable {
            nregions: None,
            regions: vec![Region {
                gpa: Edge::Zero,
                size: Edge::Raw(2 * MEMFD_LEN),
                uaddr: Edge::Raw(UADDR),
                offset: Edge::Zero,
            }],
        };
    }
    past_eof.extend(queue(UADDR + MEMFD_LEN + 0x10_0000));
    past_eof.extend((0..40).map(|_| Step::Kick(0)));
    vec![
        VhostInput { steps: iommu },
        VhostInput { steps: past_eof },
        VhostInput { steps: plain },
        VhostInput { steps: caps },
        VhostInput {
            steps: quiet_update,
        },
        // Broken framing: a size beyond the payload, unknown codes and flags.
        VhostInput {
            steps: vec![
                send(1, HFlags::V1, Payload::Empty, Fds::None),
                Step::Send(Msg {
                    code: Code::Raw(0xdead),
                    flags: HFlags::Raw(0xff),
                    size: Size::Delta(-1),
                    payload: Payload::Bytes(vec![1, 2, 3]),
                    fds: Fds::EventFd(3),
                }),
                Step::Send(Msg {
                    code: Code::Known(22),
                    flags: HFlags::NeedReply,
                    size: Size::Raw(0x10_0000),
                    payload: Payload::Empty,
                    fds: Fds::None,
                }),
            ],
        },
        // Found by the fuzzer: an IOTLB message with version 0 (NEED_REPLY
        // alone) was served; it now ends the connection, as the vhost crate
        // does for any other message with a bad header.
        VhostInput {
            steps: vec![
                send(1, HFlags::V1, Payload::Empty, Fds::None),
                Step::Send(Msg {
                    code: Code::Known(22),
                    flags: HFlags::Raw(8),
                    size: Size::Exact,
                    payload: Payload::Empty,
                    fds: Fds::None,
                }),
            ],
        },
        // Memory tables that do not match their descriptors or wrap.
        VhostInput {
            steps: vec![
                send(1, HFlags::V1, Payload::Empty, Fds::None),
                send(
                    5,
                    HFlags::V1,
                    Payload::MemTable {
                        nregions: Some(2),
                        regions: vec![Region {
                            gpa: Edge::MaxPage,
                            size: Edge::pages(2),
                            uaddr: Edge::Zero,
                            offset: Edge::Zero,
                        }],
                    },
                    Fds::Memfd(2),
                ),
            ],
        },
    ]
}
