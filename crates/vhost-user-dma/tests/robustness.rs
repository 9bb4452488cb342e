// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hostile and broken front-ends: random messages, malformed headers, disconnects
//! and reconnects. The daemon must never panic and must keep serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vhost_user_dma::wire::{self, FLAG_NEED_REPLY, FLAG_VERSION};
use vhost_user_dma::{Daemon, DaemonOptions, EchoDevice};
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(10);

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn drain(sock: &mut UnixStream) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    sock.set_nonblocking(false).unwrap();
}

/// One plain request on a fresh connection: the daemon still works.
fn check_alive<D: vhost_user_dma::VirtioDevice>(sock: UnixStream, _d: &D) {
    let mut fe = Fe::new(sock, true, 0);
    fe.mem
        .write_slice(b"alive", GuestAddress(0x20_000))
        .unwrap();
    fe.map(0x20_000 + IOVA_OFF, 0x20_000, 3);
    fe.map(0x21_000 + IOVA_OFF, 0x21_000, 3);
    fe.desc(0, 0x20_000, 5, 1, 1);
    fe.desc(1, 0x21_000, 16, 2, 0);
    fe.start_queue();
    fe.submit(0);
    assert!(fe.serve_until_used(1, T));
    assert_eq!(fe.used_elem(0), (0, 5));
}

#[test]
fn test_ten_thousand_random_messages_never_crash_the_daemon() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0usize;
    let mut sessions = 0usize;
    while sent < 10_000 {
        let (mut sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
        sock.set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        sessions += 1;
        // Start most sessions with a sane negotiation so deeper states are reached.
        let mut fe = None;
        if rng.next() % 4 != 0 {
            let mut f = Fe::new(sock.try_clone().unwrap(), rng.next() % 2 == 0, 0);
            if rng.next() % 2 == 0 {
                f.start_queue();
            }
            // Misses go unanswered: the channel's peer is gone.
            f.chan = None;
            fe = Some(f);
        }
        for _ in 0..200 {
            let r = rng.next();
            // Mostly known request codes, sometimes anything.
            let code = if r % 8 == 0 {
                (r >> 8) as u32
            } else {
                (r >> 8) as u32 % 48
            };
            let flags = match (r >> 40) % 4 {
                0 => FLAG_VERSION,
                1 => FLAG_VERSION | FLAG_NEED_REPLY,
                2 => (r >> 16) as u32,
                _ => 0,
            };
            let size = match (r >> 44) % 8 {
                0 => 0,
                1 => 8,
                2 => 32,
                3 => 40,
                4 => 12,
                5 => 24,
                _ => (r >> 48) as u32 % 300,
            };
            let mut msg = wire::encode_header(code, flags, size).to_vec();
            let mut body = vec![0u8; size as usize];
            for b in body.iter_mut() {
                *b = rng.next() as u8;
            }
            // Sometimes a plausible IOTLB message.
            if code == 22 && size == 32 && r % 3 == 0 {
                body[24] = (r % 5) as u8;
                body[25] = (r % 6) as u8;
                body[8..16].copy_from_slice(&(0x1000u64 << (r % 4)).to_le_bytes());
            }
            msg.extend_from_slice(&body);
            sent += 1;
            if sock.write_all(&msg).is_err() {
                break;
            }
            drain(&mut sock);
        }
        drop(sock);
        drop(fe);
        // The daemon returns (Ok or Err), it never panics.
        let _ = daemon.join().expect("daemon thread panicked");
    }
    assert!(sent >= 10_000);
    assert!(sessions > 1);
    let (sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    check_alive(sock, &EchoDevice);
    assert!(daemon.join().unwrap().is_ok());
}

#[test]
fn test_malformed_headers_close_the_connection_cleanly() {
    // A payload too large for the intercepted IOTLB message.
    let (mut sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    sock.write_all(&wire::encode_header(
        22,
        FLAG_VERSION | FLAG_NEED_REPLY,
        0x10_0000,
    ))
    .unwrap();
    assert!(daemon.join().unwrap().is_err());
    // A truncated message, then EOF.
    let (mut sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    sock.write_all(&wire::encode_header(22, FLAG_VERSION, 32)[..7])
        .unwrap();
    drop(sock);
    let _ = daemon.join().unwrap();
    // An IOTLB message of the wrong size is refused but the stream stays in sync.
    let (mut sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    sock.write_all(&wire::encode_header(22, FLAG_VERSION | FLAG_NEED_REPLY, 8))
        .unwrap();
    sock.write_all(&[0u8; 8]).unwrap();
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply).unwrap();
    assert_ne!(u64::from_le_bytes(reply[12..20].try_into().unwrap()), 0);
    check_alive(sock, &EchoDevice);
    assert!(daemon.join().unwrap().is_ok());
}

#[test]
fn test_disconnect_mid_request_and_reconnect() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("vhost.sock");
    let daemon = Daemon::new(Arc::new(EchoDevice), DaemonOptions::default());
    let p = path.clone();
    let server = std::thread::spawn(move || daemon.serve_path(p, Some(3)));
    let connect = || {
        for _ in 0..200 {
            if let Ok(s) = UnixStream::connect(&path) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon socket never appeared");
    };
    // 1: disconnect while a request waits for a miss that is never answered.
    {
        let mut fe = Fe::new(connect(), true, 0);
        fe.desc(0, 0x20_000, 5, 1, 1);
        fe.desc(1, 0x21_000, 16, 2, 0);
        fe.start_queue();
        fe.submit(0);
        std::thread::sleep(Duration::from_millis(30));
    }
    // 2: disconnect right after negotiation.
    drop(Fe::new(connect(), false, 0));
    // 3: a full request works.
    check_alive(connect(), &EchoDevice);
    server.join().unwrap().unwrap();
}

/// Found with the `vhost_user_messages` fuzz target: a memory table region (or a
/// dirty log area) larger than the file passed with it was mapped, and the
/// queue worker's first read of a ring past the end of the file killed the
/// daemon with SIGBUS. Such a table is refused now, and the daemon keeps serving.
#[test]
fn test_region_past_the_end_of_its_file_is_refused() {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::{
        VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    };
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo};

    // Negotiated with REPLY_ACK, so that the front-end sees the refusals.
    let connect = |sock| {
        let mut fe = Frontend::from_stream(sock, 1);
        fe.get_features().unwrap();
        fe.set_features((1 << 32) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .unwrap();
        fe.get_protocol_features().unwrap();
        fe.set_protocol_features(
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD,
        )
        .unwrap();
        fe.set_owner().unwrap();
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        fe
    };
    let (sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    let fe = connect(sock);
    let short = memfd(MEM_SIZE);
    let region = |size: u64, offset: u64| VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: offset,
        mmap_handle: short.as_raw_fd(),
    };
    // Twice the file, and the file's size at an offset inside it: both refused.
    assert!(fe.set_mem_table(&[region(2 * MEM_SIZE, 0)]).is_err());
    drop(fe);
    let _ = daemon.join().expect("daemon thread panicked");
    let (sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    let fe = connect(sock);
    assert!(fe.set_mem_table(&[region(MEM_SIZE, 0x1000)]).is_err());
    drop(fe);
    let _ = daemon.join().expect("daemon thread panicked");
    // A log area past the end of its file is refused too.
    let (sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    let fe = connect(sock);
    let log = memfd(0x1000);
    assert!(fe
        .set_log_base(
            0,
            Some(VhostUserDirtyLogRegion {
                mmap_size: 0x2000,
                mmap_offset: 0,
                mmap_handle: log.as_raw_fd(),
            }),
        )
        .is_err());
    drop(fe);
    let _ = daemon.join().expect("daemon thread panicked");
    // The exact size still works, and so does a full request afterwards.
    let (sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    check_alive(sock, &EchoDevice);
    assert!(daemon.join().unwrap().is_ok());
}

#[test]
fn test_sealable_guest_memory_cannot_be_shrunk_under_the_daemon() {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

    let (sock, daemon) = spawn_daemon(EchoDevice, DaemonOptions::default());
    let mut fe = Frontend::from_stream(sock, 1);
    fe.get_features().unwrap();
    fe.set_features((1 << 32) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
        .unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    fe.set_owner().unwrap();
    let file = memfd_with(MEM_SIZE, libc::MFD_ALLOW_SEALING);
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }])
    .unwrap();
    // GET_FEATURES round trip: SET_MEM_TABLE has been handled when it returns.
    fe.get_features().unwrap();
    // The daemon sealed the file against shrinking: the front-end's truncation,
    // which would turn the daemon's mapping into SIGBUS, fails.
    let err = file.set_len(MEM_SIZE / 2).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(file.metadata().unwrap().len(), MEM_SIZE);
    drop(fe);
    assert!(daemon.join().unwrap().is_ok());
}
