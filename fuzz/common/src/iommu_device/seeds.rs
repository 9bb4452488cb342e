// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hand-made inputs of `virtio_iommu_device`: the seeds of the corpus and
//! fixed adversarial cases.

use super::*;

fn q(req: Req) -> Step {
    Step::Queue(
        req,
        Shape {
            cut: 0,
            reply: Reply::Tail,
            rsplit: vec![],
            wsplit: vec![],
        },
    )
}

fn map(domain: u8, start: u16, pages: u16, phys: u16, flags: u8) -> Step {
    q(Req::Map {
        domain: Dom::In(domain),
        start: Edge::pages(start),
        end: End::Len(Edge::pages(pages)),
        phys: Edge::pages(phys),
        flags: Flags::Low(flags),
    })
}

fn attach(domain: u8, ep: u8, flags: u8) -> Step {
    q(Req::Attach {
        domain: Dom::In(domain),
        endpoint: Ep::Known(ep),
        flags: Flags::Low(flags),
        reserved: [0; 4],
    })
}

fn unmap(domain: u8, start: Edge, end: End) -> Step {
    q(Req::Unmap {
        domain: Dom::In(domain),
        start,
        end,
        reserved: [0; 4],
    })
}

/// Hand-made inputs (the seed corpus).
pub fn seeds() -> Vec<IommuDeviceInput> {
    let all = 0xff;
    vec![
        // Attach, map, split unmap, whole unmap, detach; probe.
        IommuDeviceInput {
            bypass: false,
            features: all,
            steps: vec![
                attach(0, 0, 0),
                map(0, 16, 4, 32, 3),
                map(0, 18, 1, 0, 1),
                map(0, 32, 2, 0, 2),
                unmap(0, Edge::pages(17), End::Len(Edge::pages(1))),
                unmap(0, Edge::pages(16), End::Len(Edge::pages(4))),
                q(Req::Probe {
                    endpoint: Ep::Known(1),
                    fill: 0xa5,
                }),
                Step::Queue(
                    Req::Probe {
                        endpoint: Ep::Known(2),
                        fill: 0,
                    },
                    Shape {
                        cut: 0,
                        reply: Reply::Probe,
                        rsplit: vec![1, 3, 7],
                        wsplit: vec![5, 0, 40],
                    },
                ),
                q(Req::Detach {
                    domain: Dom::In(0),
                    endpoint: Ep::Known(0),
                    reserved: [0; 8],
                }),
            ],
        },
        // Reserved regions, attach incompatibility, bypass domain, moving attach.
        IommuDeviceInput {
            bypass: false,
            features: all,
            steps: vec![
                attach(1, 1, 0),
                q(Req::Map {
                    domain: Dom::In(1),
                    start: Edge::near(3, 0),
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::pages(1),
                    flags: Flags::Low(3),
                }),
                attach(2, 0, 0),
                map(2, 0, 1, 0, 3),
                attach(2, 2, 0),
                attach(3, 3, 1),
                attach(3, 0, 1),
                q(Req::Map {
                    domain: Dom::In(3),
                    start: Edge::Zero,
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::Zero,
                    flags: Flags::Low(3),
                }),
                attach(1, 0, 0),
                Step::SetBypass(1),
                q(Req::Detach {
                    domain: Dom::In(1),
                    endpoint: Ep::Known(0),
                    reserved: [0xff; 8],
                }),
            ],
        },
        // Edges: unaligned, wrapping, out of range, beyond phys limit, unknown
        // flags and types, short and long requests, split chains.
        IommuDeviceInput {
            bypass: true,
            features: all,
            steps: vec![
                attach(0, 3, 0),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::MaxPage,
                    end: End::Abs(Edge::Max { below: 0 }),
                    phys: Edge::Zero,
                    flags: Flags::Low(1),
                }),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::near(5, -1),
                    end: End::Len(Edge::pages(2)),
                    phys: Edge::Zero,
                    flags: Flags::Low(1),
                }),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::Zero,
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::near(6, 0),
                    flags: Flags::Low(2),
                }),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::One,
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::Zero,
                    flags: Flags::Low(8),
                }),
                Step::Queue(
                    Req::Map {
                        domain: Dom::In(0),
                        start: Edge::pages(4),
                        end: End::Len(Edge::pages(1)),
                        phys: Edge::pages(4),
                        flags: Flags::Low(5),
                    },
                    Shape {
                        cut: -1,
                        reply: Reply::Len(9),
                        rsplit: vec![2],
                        wsplit: vec![],
                    },
                ),
                Step::Queue(
                    Req::Map {
                        domain: Dom::In(0),
                        start: Edge::pages(4),
                        end: End::Len(Edge::pages(1)),
                        phys: Edge::pages(4),
                        flags: Flags::Low(5),
                    },
                    Shape {
                        cut: 5,
                        reply: Reply::Len(7),
                        rsplit: vec![4, 4, 4, 4, 4],
                        wsplit: vec![1, 1, 1],
                    },
                ),
                unmap(0, Edge::Zero, End::Abs(Edge::Max { below: 0 })),
                q(Req::Other {
                    type_: 9,
                    body: vec![1; 40],
                }),
                Step::Queue(
                    Req::Probe {
                        endpoint: Ep::Raw(7),
                        fill: 1,
                    },
                    Shape {
                        cut: 0,
                        reply: Reply::Huge,
                        rsplit: vec![],
                        wsplit: vec![],
                    },
                ),
                q(Req::Attach {
                    domain: Dom::Out(0),
                    endpoint: Ep::Known(0),
                    flags: Flags::Low(0),
                    reserved: [0, 0, 1, 0],
                }),
                Step::Raw {
                    request: vec![3, 0, 0, 0, 1, 0, 0, 0],
                    reply: 4,
                    huge: false,
                    fill: 0x11,
                },
                Step::Raw {
                    request: vec![7, 1, 2],
                    reply: 64,
                    huge: false,
                    fill: 0x22,
                },
            ],
        },
        // Features off, reset, renegotiation.
        IommuDeviceInput {
            bypass: false,
            features: 0,
            steps: vec![
                attach(0, 0, 1),
                attach(0, 0, 0),
                map(0, 1, 1, 1, 3),
                q(Req::Probe {
                    endpoint: Ep::Known(0),
                    fill: 0,
                }),
                Step::SetBypass(1),
                Step::Ack(0xff),
                map(0, 1, 1, 1, 7),
                Step::SetBypass(1),
                Step::Reset,
                attach(1, 1, 0),
                Step::Ack(0x0f),
                Step::SetBypass(0),
            ],
        },
    ]
}
