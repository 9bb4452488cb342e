// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The two vhost-user message paths that `vhost` 0.18 lacks, on the wire.
//!
//! * Front-end → back-end `IOTLB_MSG` (22) and `SET_BACKEND_REQ_FD` (21) are taken
//!   off the main socket before `vhost`'s dispatcher sees them ([`peek_request`],
//!   [`read_request`], [`iotlb_payload`], [`backend_req_socket`]); every other message is left on
//!   the socket for `vhost::vhost_user::BackendReqHandler`. `vhost` answers 22 with
//!   `InvalidMessage`, and it keeps the back-end channel socket of 21 private inside
//!   `vhost::vhost_user::Backend`, which has no way to send an IOTLB message.
//! * Back-end → front-end `IOTLB_MSG` (1, MISS) with NEED_REPLY on the back-end
//!   channel ([`BackendChannel`]).
//!
//! The IOTLB payload is decoded into `vhost`'s [`VhostIotlbMsg`] (with its
//! [`VhostAccess`] and [`VhostIotlbType`]); only the 12-byte header and the 32-byte
//! `struct vhost_iotlb_msg` layouts are written here, because `vhost` keeps its header
//! type private and has no `ByteValued` type for the IOTLB payload.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vhost::{VhostAccess, VhostIotlbMsg, VhostIotlbType};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::{Error, Result};

/// Size of a vhost-user message header.
pub const HEADER_SIZE: usize = 12;
/// Size of `struct vhost_iotlb_msg` on the wire (with its 6 padding bytes).
pub const IOTLB_MSG_SIZE: usize = 32;
/// `VHOST_USER_IOTLB_MSG` on the main socket.
pub const FRONTEND_IOTLB_MSG: u32 = 22;
/// `VHOST_USER_SET_BACKEND_REQ_FD` on the main socket.
pub const FRONTEND_SET_BACKEND_REQ_FD: u32 = 21;
/// `VHOST_USER_BACKEND_IOTLB_MSG` on the back-end channel.
pub const BACKEND_IOTLB_MSG: u32 = 1;

/// Header flag: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the sender wants a reply.
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// A decoded message header: request code, flags and payload size.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct RawHeader {
    /// Request code.
    pub code: u32,
    /// Flags (version, REPLY, NEED_REPLY).
    pub flags: u32,
    /// Payload size in bytes.
    pub size: u32,
}

impl RawHeader {
    /// Decode the 12 header bytes (little endian).
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        RawHeader {
            code: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    /// Whether the sender asked for a reply (`VHOST_USER_NEED_REPLY_MASK`).
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    /// Whether the header passes the check the vhost crate applies to every
    /// message it reads (`VhostUserMsgHeader::is_valid`): version 1 and no
    /// reserved flag bits. The daemon applies it to the messages it reads itself,
    /// so that they are refused exactly as the others are.
    pub fn is_valid(&self) -> bool {
        self.flags & 0x3 == FLAG_VERSION && self.flags & !0xf == 0
    }

    /// Whether the header is a well-formed version 1 request (not a reply).
    pub fn is_request_v1(&self) -> bool {
        self.flags & 0x3 == FLAG_VERSION && self.flags & FLAG_REPLY == 0
    }
}

/// Encode a message header (`vhost` keeps its header type private).
pub fn encode_header(code: u32, flags: u32, size: u32) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    b[0..4].copy_from_slice(&code.to_le_bytes());
    b[4..8].copy_from_slice(&flags.to_le_bytes());
    b[8..12].copy_from_slice(&size.to_le_bytes());
    b
}

/// Encode a `struct vhost_iotlb_msg`.
pub fn encode_iotlb(msg: &VhostIotlbMsg) -> [u8; IOTLB_MSG_SIZE] {
    let mut b = [0u8; IOTLB_MSG_SIZE];
    b[0..8].copy_from_slice(&msg.iova.to_le_bytes());
    b[8..16].copy_from_slice(&msg.size.to_le_bytes());
    b[16..24].copy_from_slice(&msg.userspace_addr.to_le_bytes());
    b[24] = msg.perm as u8;
    b[25] = msg.msg_type as u8;
    b
}

fn u64_at(b: &[u8; IOTLB_MSG_SIZE], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Decode a `struct vhost_iotlb_msg`; unknown type values are errors, and so are
/// unknown permission values except in an INVALIDATE, whose `perm` and `uaddr` the
/// front-end leaves undefined (QEMU 7.2 sends garbage there): it decodes with
/// `VhostAccess::No` and `userspace_addr` 0.
pub fn decode_iotlb(b: &[u8; IOTLB_MSG_SIZE]) -> Result<VhostIotlbMsg> {
    let msg_type = match b[25] {
        1 => VhostIotlbType::Miss,
        2 => VhostIotlbType::Update,
        3 => VhostIotlbType::Invalidate,
        4 => VhostIotlbType::AccessFail,
        t => return Err(Error::IotlbType(t)),
    };
    if msg_type == VhostIotlbType::Invalidate {
        return Ok(VhostIotlbMsg {
            iova: u64_at(b, 0),
            size: u64_at(b, 8),
            userspace_addr: 0,
            perm: VhostAccess::No,
            msg_type,
        });
    }
    let perm = match b[24] {
        0 => VhostAccess::No,
        1 => VhostAccess::ReadOnly,
        2 => VhostAccess::WriteOnly,
        3 => VhostAccess::ReadWrite,
        p => return Err(Error::IotlbPerm(p)),
    };
    Ok(VhostIotlbMsg {
        iova: u64_at(b, 0),
        size: u64_at(b, 8),
        userspace_addr: u64_at(b, 16),
        perm,
        msg_type,
    })
}

/// Wait until a whole message header is queued on `sock` and return it without
/// consuming it. `Ok(None)` means the peer closed the connection.
pub fn peek_request(sock: &UnixStream) -> Result<Option<RawHeader>> {
    let mut buf = [0u8; HEADER_SIZE];
    // MSG_WAITALL returns early with a partial header only at EOF (or on a signal):
    // give a slow writer one second, then give up on the connection.
    let mut partial = 0u32;
    loop {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes that outlives
        // the call, and `sock` is an open socket. MSG_PEEK leaves the data (and any
        // attached descriptors) queued for the real read.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_WAITALL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Socket(e));
        }
        match usize::try_from(n) {
            Ok(0) => return Ok(None),
            Ok(HEADER_SIZE) => return Ok(Some(RawHeader::from_bytes(&buf))),
            // A header split over several writes: wait for the rest.
            _ => {
                partial += 1;
                if partial > 1000 {
                    return Err(Error::Protocol("truncated message header"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Largest payload accepted on the two intercepted messages; a larger one closes the
/// connection (it cannot be skipped without reading it).
pub const MAX_INTERCEPTED_PAYLOAD: usize = 256;

/// One request read off the main socket: header, payload (at most
/// [`MAX_INTERCEPTED_PAYLOAD`] bytes) and the first attached descriptor.
#[derive(Debug)]
pub struct Request {
    /// The header.
    pub hdr: RawHeader,
    /// The payload (the first `hdr.size` bytes are valid).
    pub body: [u8; MAX_INTERCEPTED_PAYLOAD],
    /// The first attached file descriptor, if any.
    pub file: Option<std::fs::File>,
}

impl Request {
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        let n = usize::try_from(self.hdr.size)
            .unwrap_or(0)
            .min(MAX_INTERCEPTED_PAYLOAD);
        self.body.get(..n).unwrap_or(&[])
    }
}

/// Read one whole request (header, payload, descriptors) off the main socket.
pub fn read_request(sock: &mut UnixStream) -> Result<Request> {
    let mut hdr = [0u8; HEADER_SIZE];
    let (n, file) = sock.recv_with_fd(&mut hdr).map_err(Error::Fd)?;
    if n == 0 {
        return Err(Error::Disconnected);
    }
    sock.read_exact(&mut hdr[n..]).map_err(Error::Socket)?;
    let h = RawHeader::from_bytes(&hdr);
    let size = usize::try_from(h.size)
        .ok()
        .filter(|s| *s <= MAX_INTERCEPTED_PAYLOAD)
        .ok_or(Error::BadSize {
            code: h.code,
            size: h.size,
        })?;
    let mut body = [0u8; MAX_INTERCEPTED_PAYLOAD];
    if let Some(b) = body.get_mut(..size) {
        sock.read_exact(b).map_err(Error::Socket)?;
    }
    Ok(Request { hdr: h, body, file })
}

/// The IOTLB payload of an `IOTLB_MSG` request: exactly 32 bytes, no descriptor.
pub fn iotlb_payload(req: &Request) -> Result<[u8; IOTLB_MSG_SIZE]> {
    if req.file.is_some() {
        return Err(Error::UnexpectedFd(req.hdr.code));
    }
    req.payload().try_into().map_err(|_| Error::BadSize {
        code: req.hdr.code,
        size: req.hdr.size,
    })
}

/// The back-end channel of a `SET_BACKEND_REQ_FD` request: a connected `AF_UNIX`
/// stream socket (the payload, if any, is ignored, as `vhost` does).
pub fn backend_req_socket(req: Request) -> Result<UnixStream> {
    let file = req.file.ok_or(Error::MissingFd(req.hdr.code))?;
    let stream = UnixStream::from(std::os::fd::OwnedFd::from(file));
    stream.peer_addr().map_err(Error::Socket)?;
    Ok(stream)
}

/// Send the u64 reply of request `code` on the main socket.
pub fn send_u64_reply(sock: &mut UnixStream, code: u32, value: u64) -> Result<()> {
    let mut buf = [0u8; HEADER_SIZE + 8];
    buf[..HEADER_SIZE].copy_from_slice(&encode_header(code, FLAG_VERSION | FLAG_REPLY, 8));
    buf[12..20].copy_from_slice(&value.to_le_bytes());
    sock.write_all(&buf).map_err(Error::Socket)
}

/// How long a miss waits for the front-end's acknowledgement in one poll step.
const ACK_POLL: Duration = Duration::from_millis(20);

/// The back-end → front-end channel (`SET_BACKEND_REQ_FD`), used to send IOTLB
/// misses with NEED_REPLY and to wait for their acknowledgements.
///
/// Workers share it: one miss is in flight at a time (a mutex around send and
/// receive). Waits poll a caller-supplied stop condition so that a worker being
/// stopped (e.g. by `GET_VRING_BASE`, during which the front-end answers nothing)
/// never hangs.
#[derive(Debug)]
pub struct BackendChannel {
    sock: Mutex<UnixStream>,
    timeout: Duration,
    misses: AtomicU64,
}

/// Why a miss produced no acknowledgement.
#[derive(Debug, Eq, PartialEq)]
pub enum MissOutcome {
    /// The front-end acknowledged the miss (the UPDATE, if any, came before).
    Acked,
    /// The caller's stop condition became true.
    Stopped,
}

impl BackendChannel {
    /// Wrap the back-end channel socket; `timeout` bounds the wait for one ack.
    pub fn new(sock: UnixStream, timeout: Duration) -> Result<Self> {
        sock.set_read_timeout(Some(ACK_POLL))
            .map_err(Error::Socket)?;
        Ok(BackendChannel {
            sock: Mutex::new(sock),
            timeout,
            misses: AtomicU64::new(0),
        })
    }

    /// Number of misses sent.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Send a MISS for `iova` needing `perm` and wait for the front-end's ack.
    pub fn send_miss(
        &self,
        iova: u64,
        perm: VhostAccess,
        stop: &dyn Fn() -> bool,
    ) -> Result<MissOutcome> {
        let mut guard = loop {
            match self.sock.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if stop() {
                        return Ok(MissOutcome::Stopped);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        };
        let sock = &mut *guard;
        drain_stale_acks(sock)?;
        let body = encode_iotlb(&VhostIotlbMsg {
            iova,
            size: 1,
            userspace_addr: 0,
            perm,
            msg_type: VhostIotlbType::Miss,
        });
        let mut msg = [0u8; HEADER_SIZE + IOTLB_MSG_SIZE];
        msg[..HEADER_SIZE].copy_from_slice(&encode_header(
            BACKEND_IOTLB_MSG,
            FLAG_VERSION | FLAG_NEED_REPLY,
            IOTLB_MSG_SIZE as u32,
        ));
        msg[HEADER_SIZE..].copy_from_slice(&body);
        sock.write_all(&msg).map_err(Error::Socket)?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let mut reply = [0u8; HEADER_SIZE + 8];
        let mut got = 0;
        while got < reply.len() {
            if stop() {
                return Ok(MissOutcome::Stopped);
            }
            if start.elapsed() > self.timeout {
                return Err(Error::MissTimeout(iova));
            }
            match sock.read(&mut reply[got..]) {
                Ok(0) => return Err(Error::Disconnected),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Error::Socket(e)),
            }
        }
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&reply[..HEADER_SIZE]);
        let h = RawHeader::from_bytes(&h);
        if h.code != BACKEND_IOTLB_MSG || h.flags & FLAG_REPLY == 0 || h.size != 8 {
            return Err(Error::BadReply(h.code));
        }
        Ok(MissOutcome::Acked)
    }
}

/// Discard complete acknowledgements left on the channel by misses whose sender
/// stopped waiting, so that they are not taken for the next miss's ack.
fn drain_stale_acks(sock: &mut UnixStream) -> Result<()> {
    sock.set_nonblocking(true).map_err(Error::Socket)?;
    let mut buf = [0u8; 256];
    let res = loop {
        match sock.read(&mut buf) {
            Ok(0) => break Err(Error::Disconnected),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Error::Socket(e)),
        }
    };
    sock.set_nonblocking(false).map_err(Error::Socket)?;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_iotlb_encode_decode_roundtrip() {
        let m = VhostIotlbMsg {
            iova: 0x1234_5000,
            size: 0x2000,
            userspace_addr: 0x7f00_0000_1000,
            perm: VhostAccess::WriteOnly,
            msg_type: VhostIotlbType::Update,
        };
        let d = decode_iotlb(&encode_iotlb(&m)).unwrap();
        assert_eq!(
            (d.iova, d.size, d.userspace_addr, d.perm, d.msg_type),
            (m.iova, m.size, m.userspace_addr, m.perm, m.msg_type)
        );
    }

    #[test]
    fn test_iotlb_decode_rejects_unknown_perm_and_type() {
        let mut b = [0u8; IOTLB_MSG_SIZE];
        b[24] = 4;
        b[25] = 2;
        assert!(matches!(decode_iotlb(&b), Err(Error::IotlbPerm(4))));
        b[24] = 3;
        b[25] = 0;
        assert!(matches!(decode_iotlb(&b), Err(Error::IotlbType(0))));
        // INVALIDATE: perm and uaddr are undefined and ignored.
        b[24] = 0xb2;
        b[25] = 3;
        b[16] = 0x55;
        let m = decode_iotlb(&b).unwrap();
        assert_eq!(
            (m.msg_type, m.perm, m.userspace_addr),
            (VhostIotlbType::Invalidate, VhostAccess::No, 0)
        );
        b[25] = 7;
        assert!(matches!(decode_iotlb(&b), Err(Error::IotlbType(7))));
    }

    #[test]
    fn test_header_flags() {
        let h = RawHeader::from_bytes(&[22, 0, 0, 0, 9, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(h.code, 22);
        assert!(h.need_reply());
        assert!(h.is_request_v1());
        assert_eq!(h.size, 32);
        let r = RawHeader::from_bytes(&[22, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0]);
        assert!(!r.is_request_v1());
        assert!(h.is_valid() && r.is_valid());
        // Version 0 (NEED_REPLY alone), version 2, a reserved bit.
        for flags in [8u8, 0xa, 0x19] {
            let b = RawHeader::from_bytes(&[22, 0, 0, 0, flags, 0, 0, 0, 32, 0, 0, 0]);
            assert!(!b.is_valid(), "flags {flags:#x}");
        }
    }
}
