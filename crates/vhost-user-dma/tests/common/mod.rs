// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A test front-end: `vhost`'s `Frontend` over a real Unix socket, memfd guest
//! memory, a hand-driven split ring, raw IOTLB messages and a back-end channel.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_dma::wire::{self, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION};
use vhost_user_dma::{Daemon, DaemonOptions, VirtioDevice};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const MEM_SIZE: u64 = 0x10_0000;
pub const QSIZE: u16 = 16;
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;
/// IOVA = GPA + IOVA_OFF for the rings and buffers under the IOMMU.
pub const IOVA_OFF: u64 = 0x1_0000_0000;
pub const ACCESS_PLATFORM: u64 = 1 << 33;

pub fn memfd(size: u64) -> File {
    memfd_with(size, 0)
}

/// A memfd created with `flags` (e.g. `MFD_ALLOW_SEALING`, as QEMU's).
pub fn memfd_with(size: u64, flags: libc::c_uint) -> File {
    // SAFETY: the name is a valid NUL-terminated string; the returned descriptor (if
    // not negative) is owned by nobody else and is wrapped in a `File` right away.
    let fd = unsafe { libc::memfd_create(c"vhost-test".as_ptr(), flags) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh, valid descriptor owned by this function.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// The test front-end.
pub struct Fe {
    pub fe: Frontend,
    pub raw: UnixStream,
    pub chan: Option<UnixStream>,
    pub mem: GuestMemoryMmap,
    pub uaddr: u64,
    pub kick: EventFd,
    pub call: EventFd,
    pub iommu: bool,
    /// The "guest IOMMU": IOVA page -> (GPA page, perm).
    pub pages: HashMap<u64, (u64, u8)>,
    pub misses: usize,
    pub next_avail: u16,
    pub file: File,
    pub daemon: Option<JoinHandle<vhost_user_dma::Result<()>>>,
    /// Queue 1 (rings at +`Q1_OFF`): kick, call, next avail.
    pub q1: Option<(EventFd, EventFd, u16)>,
}

/// Offset of queue 1's rings from queue 0's.
pub const Q1_OFF: u64 = 0x4000;

pub fn spawn_daemon<D: VirtioDevice>(
    dev: D,
    opts: DaemonOptions,
) -> (UnixStream, JoinHandle<vhost_user_dma::Result<()>>) {
    let (a, b) = UnixStream::pair().unwrap();
    let daemon = Daemon::new(Arc::new(dev), opts);
    let h = std::thread::spawn(move || daemon.serve_stream(b));
    (a, h)
}

impl Fe {
    /// Connect and negotiate; set the memory table and queue 0 (not yet kicked).
    pub fn new(sock: UnixStream, iommu: bool, extra_features: u64) -> Fe {
        let file = memfd(MEM_SIZE);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE as usize,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let uaddr = mem.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
        let raw = sock.try_clone().unwrap();
        let mut fe = Frontend::from_stream(sock, 2);
        let offered = fe.get_features().unwrap();
        assert_ne!(offered & ACCESS_PLATFORM, 0);
        assert_ne!(
            offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        let pf = fe.get_protocol_features().unwrap();
        for need in [
            VhostUserProtocolFeatures::REPLY_ACK,
            VhostUserProtocolFeatures::BACKEND_REQ,
            VhostUserProtocolFeatures::CONFIG,
            VhostUserProtocolFeatures::MQ,
        ] {
            assert!(pf.contains(need), "{need:?} not offered");
        }
        fe.set_protocol_features(pf).unwrap();
        fe.set_owner().unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        fe.set_backend_request_fd(&theirs).unwrap();
        drop(theirs);
        let mut features =
            (1 << 32) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | extra_features;
        if iommu {
            features |= ACCESS_PLATFORM;
        }
        fe.set_features(features).unwrap();
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: uaddr,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        }])
        .unwrap();
        let kick = EventFd::new(0).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut f = Fe {
            fe,
            raw,
            chan: Some(ours),
            mem,
            uaddr,
            kick,
            call,
            iommu,
            pages: HashMap::new(),
            misses: 0,
            next_avail: 0,
            file: file.try_clone().unwrap(),
            daemon: None,
            q1: None,
        };
        f.chan
            .as_ref()
            .unwrap()
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        // Ring memory: zero avail/used headers.
        f.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(DESC))
            .unwrap();
        if iommu {
            for gpa in [DESC, AVAIL, USED] {
                f.map(gpa + IOVA_OFF, gpa, 3);
            }
        }
        f
    }

    /// Another descriptor of the guest memory file.
    pub fn memfd_clone(&self) -> File {
        self.file.try_clone().unwrap()
    }

    /// Address the daemon is told for guest-physical `gpa` (descriptors).
    pub fn dma(&self, gpa: u64) -> u64 {
        if self.iommu {
            gpa + IOVA_OFF
        } else {
            gpa
        }
    }

    /// Address the daemon is told for ring at `gpa`.
    pub fn ring_addr(&self, gpa: u64) -> u64 {
        if self.iommu {
            gpa + IOVA_OFF
        } else {
            self.uaddr + gpa
        }
    }

    /// Put `iova` page -> `gpa` page in the guest IOMMU (answered on misses).
    pub fn map(&mut self, iova: u64, gpa: u64, perm: u8) {
        self.pages.insert(iova >> 12, (gpa >> 12, perm));
    }

    pub fn start_queue(&mut self) {
        self.fe.set_vring_num(0, QSIZE).unwrap();
        self.fe
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: 256,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: self.ring_addr(DESC),
                    used_ring_addr: self.ring_addr(USED),
                    avail_ring_addr: self.ring_addr(AVAIL),
                    log_addr: None,
                },
            )
            .unwrap();
        self.fe.set_vring_base(0, 0).unwrap();
        self.fe.set_vring_call(0, &self.call).unwrap();
        self.fe.set_vring_kick(0, &self.kick).unwrap();
        self.fe.set_vring_enable(0, true).unwrap();
        if self.iommu {
            // QEMU pushes the used ring's translation when the device starts.
            let page = USED + IOVA_OFF;
            assert_eq!(self.iotlb(2, page, 0x1000, self.uaddr + USED, 3), 0);
        }
    }

    /// Set up and start queue 1 (rings at `Q1_OFF` above queue 0's).
    pub fn start_queue1(&mut self) {
        if self.iommu {
            for gpa in [DESC, AVAIL, USED] {
                self.map(gpa + Q1_OFF + IOVA_OFF, gpa + Q1_OFF, 3);
            }
        }
        self.fe.set_vring_num(1, QSIZE).unwrap();
        self.fe
            .set_vring_addr(
                1,
                &VringConfigData {
                    queue_max_size: 256,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: self.ring_addr(DESC + Q1_OFF),
                    used_ring_addr: self.ring_addr(USED + Q1_OFF),
                    avail_ring_addr: self.ring_addr(AVAIL + Q1_OFF),
                    log_addr: None,
                },
            )
            .unwrap();
        self.fe.set_vring_base(1, 0).unwrap();
        let kick = EventFd::new(0).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        self.fe.set_vring_call(1, &call).unwrap();
        self.fe.set_vring_kick(1, &kick).unwrap();
        self.fe.set_vring_enable(1, true).unwrap();
        if self.iommu {
            let page = USED + Q1_OFF + IOVA_OFF;
            assert_eq!(
                self.iotlb(2, page, 0x1000, self.uaddr + USED + Q1_OFF, 3),
                0
            );
        }
        self.q1 = Some((kick, call, 0));
    }

    /// Write descriptor `i` of queue 1.
    pub fn desc1(&self, i: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        let a = DESC + Q1_OFF + u64::from(i) * 16;
        self.mem.write_obj(self.dma(gpa), GuestAddress(a)).unwrap();
        self.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(a + 14)).unwrap();
    }

    /// Make chain `head` of queue 1 available and kick.
    pub fn submit1(&mut self, head: u16) {
        let (kick, _, next) = self.q1.as_mut().unwrap();
        let slot = u64::from(*next % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + Q1_OFF + 4 + slot * 2))
            .unwrap();
        *next = next.wrapping_add(1);
        self.mem
            .write_obj(*next, GuestAddress(AVAIL + Q1_OFF + 2))
            .unwrap();
        kick.write(1).unwrap();
    }

    pub fn used_idx1(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + Q1_OFF + 2)).unwrap()
    }

    /// Answer misses until both queues' used indexes reach `idx`.
    pub fn serve_until_both_used(&mut self, idx: u16, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.used_idx() == idx && self.used_idx1() == idx {
                return true;
            }
            self.serve_one_miss();
        }
        false
    }

    /// Send an IOTLB message on the main socket; returns the reply value.
    pub fn iotlb(&mut self, ty: u8, iova: u64, size: u64, uaddr: u64, perm: u8) -> u64 {
        let mut body = [0u8; 32];
        body[0..8].copy_from_slice(&iova.to_le_bytes());
        body[8..16].copy_from_slice(&size.to_le_bytes());
        body[16..24].copy_from_slice(&uaddr.to_le_bytes());
        body[24] = perm;
        body[25] = ty;
        self.raw
            .write_all(&wire::encode_header(22, FLAG_VERSION | FLAG_NEED_REPLY, 32))
            .unwrap();
        self.raw.write_all(&body).unwrap();
        let mut reply = [0u8; 20];
        self.raw.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[0..4], &22u32.to_le_bytes());
        assert_ne!(
            u32::from_le_bytes(reply[4..8].try_into().unwrap()) & FLAG_REPLY,
            0
        );
        u64::from_le_bytes(reply[12..20].try_into().unwrap())
    }

    /// Write descriptor `i`.
    pub fn desc(&self, i: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        let a = GuestAddress(DESC + u64::from(i) * 16);
        self.mem.write_obj(self.dma(gpa), a).unwrap();
        self.mem.write_obj(len, a.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, a.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, a.unchecked_add(14)).unwrap();
    }

    /// Make chain `head` available and kick.
    pub fn submit(&mut self, head: u16) {
        let slot = u64::from(self.next_avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + slot * 2))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
        self.kick.write(1).unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let a = USED + 4 + u64::from(n % QSIZE) * 8;
        (
            self.mem.read_obj(GuestAddress(a)).unwrap(),
            self.mem.read_obj(GuestAddress(a + 4)).unwrap(),
        )
    }

    /// Answer misses until the used index reaches `idx` (true) or `timeout` passes.
    pub fn serve_until_used(&mut self, idx: u16, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.used_idx() == idx {
                return true;
            }
            self.serve_one_miss();
        }
        self.used_idx() == idx
    }

    /// Answer one miss if one is pending: UPDATE if the page is mapped, then ack.
    pub fn serve_one_miss(&mut self) -> bool {
        let Some(chan) = self.chan.as_mut() else {
            std::thread::sleep(Duration::from_millis(1));
            return false;
        };
        let mut msg = [0u8; 44];
        match chan.read(&mut msg[..1]) {
            Ok(1) => {}
            _ => return false,
        }
        chan.set_read_timeout(None).unwrap();
        chan.read_exact(&mut msg[1..]).unwrap();
        chan.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let code = u32::from_le_bytes(msg[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(msg[4..8].try_into().unwrap());
        assert_eq!(code, 1, "back-end channel message {code}");
        assert_ne!(flags & FLAG_NEED_REPLY, 0);
        assert_eq!(msg[12 + 25], 1, "not a MISS");
        let iova = u64::from_le_bytes(msg[12..20].try_into().unwrap());
        let need = msg[12 + 24];
        self.misses += 1;
        if let Some(&(gpage, perm)) = self.pages.get(&(iova >> 12)) {
            if perm & need == need {
                let r = self.iotlb(2, iova & !0xfff, 0x1000, self.uaddr + (gpage << 12), perm);
                assert_eq!(r, 0);
            }
        }
        let mut ack = [0u8; 20];
        ack[..12].copy_from_slice(&wire::encode_header(1, FLAG_VERSION | FLAG_REPLY, 8));
        self.chan.as_mut().unwrap().write_all(&ack).unwrap();
        true
    }
}
