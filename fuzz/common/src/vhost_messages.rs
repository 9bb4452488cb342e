// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `vhost_user_messages`: arbitrary vhost-user message streams into
//! the connection handler of `vhost_user_dma::Daemon` (`serve_stream`, the
//! one entry point that serves a connected front-end), as
//! `crates/vhost-user-dma/tests/robustness.rs` does with random messages.
//!
//! An input is a list of messages, each a header (request code among the
//! known ones or any, flags V1 / V1 + NEED_REPLY / any, size exact / off by a
//! few / any) and a typed payload: `u64`s, vring state and addresses,
//! `IOTLB_MSG` (22) UPDATE / INVALIDATE / other types with edge-biased iova,
//! size, uaddr and perm, memory tables whose regions are backed by a memfd
//! passed along, config space accesses, or raw bytes. File descriptors go
//! with messages (memfds, eventfds, a socket for the back-end channel, any
//! number); eventfds passed as kick fds can be kicked, so queues run (the
//! daemon serves `EchoDevice`, IOTLB capped at a few entries, a short miss
//! timeout).
//!
//! Oracle:
//! * the daemon never panics and never hangs: after the stream the socket is
//!   shut down for writing and the daemon must close its end within
//!   [`DEADLINE`] (an input takes milliseconds);
//! * everything the daemon sent is a sequence of complete, well-formed
//!   replies (REPLY flag, version 1, payload as long as the header says),
//!   each answering a message that was sent, in order;
//! * when the connection ended cleanly and the stream stayed in sync (every
//!   header size matched its payload), every `GET_FEATURES`,
//!   `GET_PROTOCOL_FEATURES` and `IOTLB_MSG` with NEED_REPLY got its reply,
//!   and an IOTLB reply is an 8-byte 0 or 1;
//! * afterwards the same `Daemon` serves a fresh connection (`GET_FEATURES`
//!   answered with the features it offers, ACCESS_PLATFORM included).
//!
//! The IOTLB's own state is per connection and not observable through the
//! public API of a served connection; its bound is exercised by the small
//! entry cap.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use vhost_user_dma::wire::{
    encode_header, RawHeader, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, HEADER_SIZE,
};
use vhost_user_dma::{Daemon, DaemonOptions, EchoDevice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::edge::Edge;
use crate::Reached;

/// Longest an input may keep the daemon busy after its stream ended.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Pause after a kick, so that the worker runs the queue.
pub const KICK_PAUSE: Duration = Duration::from_micros(300);
/// Most messages one input sends.
pub const MAX_MESSAGES: usize = 64;
/// Size of the memfd passed with memory tables (sparse).
pub const MEMFD_LEN: u64 = 16 << 20;
/// The front-end user address the seeds use for the memfd.
pub const UADDR: u64 = 0x7f00_0000_0000;
/// IOVA the seeds map the memfd at.
pub const IOVA: u64 = 0x1_0000_0000;
/// `VIRTIO_F_ACCESS_PLATFORM`.
const ACCESS_PLATFORM: u64 = 1 << 33;

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const IOTLB_MSG: u32 = 22;

/// Request codes the fuzzer picks from (every front-end request of the
/// vhost-user spec up to 41, and 0).
const CODES: [u32; 42] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
];

const ANCHORS: [u64; 6] = [0, MEMFD_LEN, UADDR, IOVA, 0x1_0000, UADDR + MEMFD_LEN];

/// A request code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Code {
    /// One of the spec's codes (0..=41).
    Known(u8),
    /// Any code.
    Raw(u32),
}

/// Header flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum HFlags {
    /// Version 1.
    V1,
    /// Version 1, NEED_REPLY.
    NeedReply,
    /// Any flags.
    Raw(u32),
}

/// The header's size field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Size {
    /// The payload's length.
    Exact,
    /// The payload's length plus a small signed delta (wrapping).
    Delta(i8),
    /// Any value.
    Raw(u32),
}

/// One memory region of a memory table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct Region {
    /// Guest-physical address.
    pub gpa: Edge,
    /// Size.
    pub size: Edge,
    /// Front-end user address.
    pub uaddr: Edge,
    /// Offset in the file.
    pub offset: Edge,
}

/// A message payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Payload {
    /// No payload.
    Empty,
    /// Raw bytes (at most 512).
    Bytes(Vec<u8>),
    /// One `u64` (features, vring index and flags of KICK/CALL/ERR, ...).
    U64(Edge),
    /// `vhost_vring_state`.
    State {
        /// Queue index.
        index: u32,
        /// Value.
        num: Edge,
    },
    /// `vhost_vring_addr`.
    Addr {
        /// Queue index.
        index: u32,
        /// Flags (bit 0: log).
        flags: u32,
        /// Descriptor table.
        desc: Edge,
        /// Used ring.
        used: Edge,
        /// Available ring.
        avail: Edge,
        /// Log address.
        log: Edge,
    },
    /// `vhost_iotlb_msg`.
    Iotlb {
        /// IOVA.
        iova: Edge,
        /// Size.
        size: Edge,
        /// User address.
        uaddr: Edge,
        /// Permission (1 RO, 2 WO, 3 RW, others unknown).
        perm: u8,
        /// Type (2 UPDATE, 3 INVALIDATE, others).
        type_: u8,
    },
    /// A memory table (`nregions` may differ from the regions given).
    MemTable {
        /// The count field (`None`: the number of regions).
        nregions: Option<u32>,
        /// The regions.
        regions: Vec<Region>,
    },
    /// `GET_CONFIG` / `SET_CONFIG` payload.
    Config {
        /// Offset.
        offset: u32,
        /// Size.
        size: u32,
        /// Flags.
        flags: u32,
        /// Data (at most 256 bytes).
        data: Vec<u8>,
    },
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        let r = |e: &Edge| e.resolve(&ANCHORS).to_le_bytes();
        let mut v = Vec::new();
        match self {
            Payload::Empty => {}
            Payload::Bytes(b) => v.extend_from_slice(b.get(..b.len().min(512)).unwrap_or(&[])),
            Payload::U64(e) => v.extend_from_slice(&r(e)),
            Payload::State { index, num } => {
                v.extend_from_slice(&index.to_le_bytes());
                v.extend_from_slice(&(num.resolve(&ANCHORS) as u32).to_le_bytes());
            }
            Payload::Addr {
                index,
                flags,
                desc,
                used,
                avail,
                log,
            } => {
                v.extend_from_slice(&index.to_le_bytes());
                v.extend_from_slice(&flags.to_le_bytes());
                for e in [desc, used, avail, log] {
                    v.extend_from_slice(&r(e));
                }
            }
            Payload::Iotlb {
                iova,
                size,
                uaddr,
                perm,
                type_,
            } => {
                for e in [iova, size, uaddr] {
                    v.extend_from_slice(&r(e));
                }
                v.extend_from_slice(&[*perm, *type_, 0, 0, 0, 0, 0, 0]);
            }
            Payload::MemTable { nregions, regions } => {
                let regions = regions.get(..regions.len().min(12)).unwrap_or(&[]);
                let n = nregions.unwrap_or(regions.len() as u32);
                v.extend_from_slice(&n.to_le_bytes());
                v.extend_from_slice(&0u32.to_le_bytes());
                for g in regions {
                    for e in [&g.gpa, &g.size, &g.uaddr, &g.offset] {
                        v.extend_from_slice(&r(e));
                    }
                }
            }
            Payload::Config {
                offset,
                size,
                flags,
                data,
            } => {
                v.extend_from_slice(&offset.to_le_bytes());
                v.extend_from_slice(&size.to_le_bytes());
                v.extend_from_slice(&flags.to_le_bytes());
                v.extend_from_slice(data.get(..data.len().min(256)).unwrap_or(&[]));
            }
        }
        v
    }
}

/// File descriptors sent with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Fds {
    /// None.
    None,
    /// The memfd, `n % 9` times (one per region).
    Memfd(u8),
    /// `n % 4` fresh eventfds (kick, call, err, log fds), kept for [`Step::Kick`].
    EventFd(u8),
    /// One end of a fresh socket pair (the back-end channel); the other end is
    /// closed at once.
    Socket,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct Msg {
    /// Request code.
    pub code: Code,
    /// Header flags.
    pub flags: HFlags,
    /// Header size field.
    pub size: Size,
    /// Payload.
    pub payload: Payload,
    /// File descriptors.
    pub fds: Fds,
}

/// One step of an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Step {
    /// Send a message.
    Send(Msg),
    /// Write the `n`-th eventfd sent so far (a queue kick).
    Kick(u8),
    /// Write guest memory: `bytes` (at most 256) at `offset % MEMFD_LEN` of the
    /// memfd (rings, descriptors, buffers; zeroed again after the run).
    Poke {
        /// Offset in the memfd.
        offset: Edge,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

/// One input: a message stream on one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct VhostInput {
    /// The steps.
    pub steps: Vec<Step>,
}

/// What was sent, for matching replies.
struct Sent {
    code: u32,
    /// The header was V1 with NEED_REPLY and nothing else unusual.
    need_reply: bool,
}

fn daemon() -> Arc<Daemon<EchoDevice>> {
    static D: OnceLock<Arc<Daemon<EchoDevice>>> = OnceLock::new();
    Arc::clone(D.get_or_init(|| {
        Arc::new(Daemon::new(
            Arc::new(EchoDevice),
            DaemonOptions {
                access_platform: true,
                iotlb_entries: 4,
                miss_timeout: Duration::from_millis(20),
            },
        ))
    }))
}

thread_local! {
    static MEMFD: std::fs::File = memfd();
}

/// A sparse file of [`MEMFD_LEN`] bytes, unlinked (no `unsafe` memfd_create).
fn memfd() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "vhost-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path);
    let f = match f {
        Ok(f) => f,
        Err(e) => panic!("memfd {}: {e}", path.display()),
    };
    let _ = std::fs::remove_file(&path);
    if let Err(e) = f.set_len(MEMFD_LEN) {
        panic!("memfd size: {e}");
    }
    f
}

fn spawn(
    d: Arc<Daemon<EchoDevice>>,
) -> (
    UnixStream,
    std::thread::JoinHandle<vhost_user_dma::Result<()>>,
) {
    let (a, b) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => panic!("socketpair: {e}"),
    };
    let h = std::thread::spawn(move || d.serve_stream(b));
    if a.set_read_timeout(Some(DEADLINE)).is_err() || a.set_write_timeout(Some(DEADLINE)).is_err() {
        panic!("socket timeouts");
    }
    (a, h)
}

/// Reads what is available without blocking.
fn drain(sock: &mut UnixStream, out: &mut Vec<u8>) {
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(buf.get(..n).unwrap_or(&[]));
    }
    let _ = sock.set_nonblocking(false);
}

fn join(h: std::thread::JoinHandle<vhost_user_dma::Result<()>>) -> vhost_user_dma::Result<()> {
    match h.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Runs one input; panics when the daemon panics, hangs, sends a malformed
/// or unsolicited reply, misses a reply it owes, or cannot serve afterwards.
/// `Reached::deep` counts replies received.
pub fn run_vhost(input: &VhostInput) -> Reached {
    let mut reached = Reached::default();
    let d = daemon();
    let (mut sock, h) = spawn(Arc::clone(&d));
    let mut sent: Vec<Sent> = Vec::new();
    let mut replies = Vec::new();
    let mut kicks: Vec<EventFd> = Vec::new();
    let mut in_sync = true;
    let mut closed = false;
    let mut poked: Vec<(u64, usize)> = Vec::new();
    for step in input.steps.iter().take(MAX_MESSAGES) {
        let m = match step {
            Step::Kick(i) => {
                if !kicks.is_empty() {
                    let _ = kicks[usize::from(*i) % kicks.len()].write(1);
                    // Let the queue's worker run before the next message.
                    std::thread::sleep(KICK_PAUSE);
                }
                continue;
            }
            Step::Poke { offset, bytes } => {
                let at = offset.resolve(&ANCHORS) % MEMFD_LEN;
                let n = bytes.len().min(256).min((MEMFD_LEN - at) as usize);
                let b = bytes.get(..n).unwrap_or(&[]);
                MEMFD
                    .with(|f| f.write_all_at(b, at))
                    .unwrap_or_else(|e| panic!("poke: {e}"));
                poked.push((at, n));
                continue;
            }
            Step::Send(m) => m,
        };
        let code = match m.code {
            Code::Known(i) => CODES[usize::from(i) % CODES.len()],
            Code::Raw(c) => c,
        };
        let flags = match m.flags {
            HFlags::V1 => FLAG_VERSION,
            HFlags::NeedReply => FLAG_VERSION | FLAG_NEED_REPLY,
            HFlags::Raw(f) => f,
        };
        let body = m.payload.bytes();
        let size = match m.size {
            Size::Exact => body.len() as u32,
            Size::Delta(d) => (body.len() as u32).wrapping_add_signed(i32::from(d)),
            Size::Raw(s) => s,
        };
        in_sync &= size as usize == body.len();
        let mut msg = encode_header(code, flags, size).to_vec();
        msg.extend_from_slice(&body);
        // Descriptors to pass, and what keeps them open until sent.
        let mut owned_evt = Vec::new();
        let mut owned_sock = Vec::new();
        let fds: Vec<RawFd> = match m.fds {
            Fds::None => Vec::new(),
            Fds::Memfd(n) => {
                let fd = MEMFD.with(|f| f.as_raw_fd());
                vec![fd; usize::from(n % 9)]
            }
            Fds::EventFd(n) => {
                for _ in 0..n % 4 {
                    match EventFd::new(0) {
                        Ok(e) => owned_evt.push(e),
                        Err(e) => panic!("eventfd: {e}"),
                    }
                }
                owned_evt.iter().map(|e| e.as_raw_fd()).collect()
            }
            Fds::Socket => match UnixStream::pair() {
                Ok((x, y)) => {
                    owned_sock.push(x);
                    drop(y);
                    owned_sock.iter().map(|s| s.as_raw_fd()).collect()
                }
                Err(e) => panic!("socketpair: {e}"),
            },
        };
        sent.push(Sent {
            code,
            // What the daemon (and the vhost crate) take as a request for a
            // reply: a valid header with NEED_REPLY; a header that is not
            // valid ends the connection.
            need_reply: {
                let h = RawHeader::from_bytes(&encode_header(code, flags, size));
                h.is_valid() && h.need_reply()
            },
        });
        // The header and the descriptors in one sendmsg, the rest as a stream.
        let first = msg.len().min(HEADER_SIZE);
        let res = sock
            .send_with_fds(&[msg.get(..first).unwrap_or(&[])], &fds)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
            .and_then(|n| {
                if n == first {
                    Ok(())
                } else {
                    Err(std::io::Error::new(ErrorKind::WriteZero, "short header"))
                }
            })
            .and_then(|()| sock.write_all(msg.get(first..).unwrap_or(&[])));
        kicks.extend(owned_evt);
        if let Err(e) = res {
            // The daemon closed the connection (a refused message): clean close.
            assert!(
                matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "sending to the daemon: {e}"
            );
            closed = true;
            break;
        }
        drain(&mut sock, &mut replies);
    }
    // End of stream: the daemon must finish and close its end in time.
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => replies.extend_from_slice(buf.get(..n).unwrap_or(&[])),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "the daemon did not close the connection within {:?}: {e}",
                start.elapsed()
            ),
        }
    }
    let res = join(h);
    reached.count(res.is_ok());
    // The memfd is reused: zero what this run wrote, and the first 64 KiB
    // (where the seeds' rings and buffers are, which the daemon writes).
    if !poked.is_empty() {
        poked.push((0, 0x1_0000));
    }
    for (at, n) in poked {
        MEMFD
            .with(|f| f.write_all_at(&vec![0u8; n], at))
            .unwrap_or_else(|e| panic!("zero: {e}"));
    }
    // Replies: complete, well formed, each answering a sent message in order.
    let mut pos = 0usize;
    let mut next = 0usize;
    let mut got: Vec<(u32, usize, Option<u64>)> = Vec::new();
    while pos < replies.len() {
        let hdr = replies
            .get(pos..pos + HEADER_SIZE)
            .unwrap_or_else(|| panic!("truncated reply header at byte {pos}"));
        let (code, flags, size) = (le_u32(hdr, 0), le_u32(hdr, 4), le_u32(hdr, 8) as usize);
        assert_eq!(flags & 3, FLAG_VERSION, "reply {code}: version");
        assert_ne!(flags & FLAG_REPLY, 0, "reply {code}: REPLY flag");
        assert!(size <= 64 * 1024, "reply {code}: size {size}");
        let body = replies
            .get(pos + HEADER_SIZE..pos + HEADER_SIZE + size)
            .unwrap_or_else(|| panic!("reply {code}: truncated payload of {size} bytes"));
        // An `IOTLB_MSG` without NEED_REPLY gets no reply: a reply of that code
        // answers the next one that asked for it (else every later IOTLB reply
        // would be matched one message too early).
        let Some(k) = sent
            .iter()
            .skip(next)
            .position(|s| s.code == code && (code != IOTLB_MSG || s.need_reply))
        else {
            panic!("reply {code} answers no message sent (after #{next})");
        };
        next += k + 1;
        let value = (size == 8).then(|| le_u64(body, 0));
        got.push((code, next - 1, value));
        reached.deep += 1;
        pos += HEADER_SIZE + size;
    }
    if res.is_ok() && in_sync && !closed {
        for (i, s) in sent.iter().enumerate() {
            let must = match s.code {
                GET_FEATURES | GET_PROTOCOL_FEATURES => true,
                IOTLB_MSG => s.need_reply,
                _ => false,
            };
            if !must {
                continue;
            }
            let r = got.iter().find(|g| g.1 == i);
            let Some(&(_, _, value)) = r else {
                panic!("message #{i} (code {}) got no reply", s.code);
            };
            if s.code == IOTLB_MSG {
                assert!(
                    matches!(value, Some(0) | Some(1)),
                    "IOTLB reply to #{i}: {value:?}"
                );
            } else {
                assert!(value.is_some(), "reply to #{i}: not a u64");
            }
        }
    }
    // The daemon serves a fresh connection.
    let (mut fresh, h) = spawn(d);
    let probe = encode_header(GET_FEATURES, FLAG_VERSION, 0);
    if let Err(e) = fresh.write_all(&probe) {
        panic!("fresh connection: {e}");
    }
    let mut reply = [0u8; HEADER_SIZE + 8];
    if let Err(e) = fresh.read_exact(&mut reply) {
        panic!("fresh connection: no GET_FEATURES reply: {e}");
    }
    assert_eq!(le_u32(&reply, 0), GET_FEATURES, "fresh connection: code");
    assert_eq!(le_u32(&reply, 8), 8, "fresh connection: size");
    assert_ne!(
        le_u64(&reply, HEADER_SIZE) & ACCESS_PLATFORM,
        0,
        "fresh connection: ACCESS_PLATFORM offered"
    );
    drop(fresh);
    assert!(join(h).is_ok(), "fresh connection ended in an error");
    reached
}

mod seeds;

pub use seeds::seeds;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_get_replies_and_the_daemon_keeps_serving() {
        for (i, s) in seeds().iter().enumerate() {
            let r = run_vhost(s);
            assert!(r.deep > 0, "seed {i}: no reply: {r:?}");
        }
        // The sane sessions end cleanly.
        assert_eq!(run_vhost(&seeds()[0]).ok, 1);
        assert_eq!(run_vhost(&seeds()[2]).ok, 1);
    }
}
