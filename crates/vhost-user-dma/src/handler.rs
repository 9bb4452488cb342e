// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The back-end request handler: `vhost`'s [`VhostUserBackendReqHandler`] for the
//! standard messages, plus the IOTLB and back-end channel messages that `vhost`
//! does not dispatch ([`DaemonHandler::handle_iotlb`],
//! [`DaemonHandler::set_backend_channel`]).

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandler,
};
use vhost::{VhostAccess, VhostIotlbMsg, VhostIotlbType, VhostUserMemoryRegionBase};
use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, Permissions};

use crate::device::VirtioDevice;
use crate::iotlb::Iotlb;
use crate::memory::{DirtyLog, MemTable};
use crate::view::IotlbView;
use crate::wire::BackendChannel;
use crate::worker::{QueueSetup, Worker};
use crate::{Error, Result};

/// Options of a daemon (per connection).
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Offer `VIRTIO_F_ACCESS_PLATFORM` (run behind a vIOMMU when the front-end asks).
    pub access_platform: bool,
    /// Cap on IOTLB entries.
    pub iotlb_entries: usize,
    /// How long a worker waits for the front-end to ack one miss.
    pub miss_timeout: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            access_platform: true,
            iotlb_entries: crate::iotlb::DEFAULT_MAX_ENTRIES,
            miss_timeout: Duration::from_secs(5),
        }
    }
}

/// The largest config space read served.
const MAX_CONFIG_SIZE: u32 = 4096;

#[derive(Debug, Default)]
struct Vring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    worker: Option<Worker>,
}

#[derive(Debug, Default)]
struct State {
    features: u64,
    protocol: u64,
    mem: Option<Arc<MemTable>>,
    vrings: Vec<Vring>,
    backend: Option<Arc<BackendChannel>>,
}

/// The per-connection request handler of a device `D`.
#[derive(Debug)]
pub struct DaemonHandler<D: VirtioDevice> {
    device: Arc<D>,
    opts: DaemonOptions,
    iotlb: Iotlb,
    log: Arc<DirtyLog>,
    state: Mutex<State>,
}

fn herr(e: impl std::fmt::Display) -> VuError {
    VuError::ReqHandlerError(std::io::Error::other(e.to_string()))
}

impl<D: VirtioDevice> DaemonHandler<D> {
    /// A handler for a new connection.
    pub fn new(device: Arc<D>, opts: DaemonOptions) -> Result<Self> {
        let nq = device.num_queues();
        let iotlb = Iotlb::new(opts.iotlb_entries)?;
        let vrings = (0..nq).map(|_| Vring::default()).collect();
        Ok(DaemonHandler {
            device,
            opts,
            iotlb,
            log: Arc::new(DirtyLog::default()),
            state: Mutex::new(State {
                vrings,
                ..State::default()
            }),
        })
    }

    /// The IOTLB of this connection.
    pub fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }

    /// The dirty log of this connection.
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.log
    }

    fn lock(&self) -> VuResult<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| herr(Error::Poisoned))
    }

    fn offered_features(&self) -> u64 {
        let mut f = self.device.device_features()
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits();
        if self.opts.access_platform {
            f |= 1 << VIRTIO_F_ACCESS_PLATFORM;
        }
        f
    }

    fn iommu_on(st: &State) -> bool {
        st.features & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0
    }

    /// Whether the front-end negotiated `VIRTIO_F_ACCESS_PLATFORM`.
    pub fn access_platform(&self) -> bool {
        self.state
            .lock()
            .map(|s| Self::iommu_on(&s))
            .unwrap_or(false)
    }

    /// Keep the back-end channel (`SET_BACKEND_REQ_FD`). Running queues pick it up
    /// when they are restarted; it is set before the queues start in practice.
    pub fn set_backend_channel(&self, sock: UnixStream) -> Result<()> {
        let chan = Arc::new(BackendChannel::new(sock, self.opts.miss_timeout)?);
        let mut st = self.state.lock().map_err(|_| Error::Poisoned)?;
        if st.protocol & VhostUserProtocolFeatures::BACKEND_REQ.bits() == 0 {
            return Err(Error::Protocol("SET_BACKEND_REQ_FD without BACKEND_REQ"));
        }
        st.backend = Some(chan);
        self.restart_all(&mut st);
        Ok(())
    }

    /// Number of IOTLB misses sent on the back-end channel.
    pub fn misses_sent(&self) -> u64 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.backend.as_ref().map(|b| b.misses()))
            .unwrap_or(0)
    }

    /// Whether `REPLY_ACK` was negotiated.
    pub fn reply_ack(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0)
            .unwrap_or(false)
    }

    /// Apply a front-end `IOTLB_MSG` (UPDATE or INVALIDATE).
    ///
    /// The IOTLB must be on (`VIRTIO_F_ACCESS_PLATFORM` negotiated); an UPDATE must
    /// lie inside the memory table. When an INVALIDATE returns, no worker can use the
    /// removed translations any more.
    pub fn handle_iotlb(&self, msg: &VhostIotlbMsg) -> Result<()> {
        let mem = {
            let st = self.state.lock().map_err(|_| Error::Poisoned)?;
            if !Self::iommu_on(&st) {
                return Err(Error::Protocol("IOTLB message without ACCESS_PLATFORM"));
            }
            st.mem.clone()
        };
        match msg.msg_type {
            VhostIotlbType::Update => {
                let mem = mem.ok_or(Error::Protocol("IOTLB update before SET_MEM_TABLE"))?;
                let perm = match msg.perm {
                    VhostAccess::ReadOnly => Permissions::Read,
                    VhostAccess::WriteOnly => Permissions::Write,
                    VhostAccess::ReadWrite => Permissions::ReadWrite,
                    VhostAccess::No => Permissions::No,
                };
                self.iotlb
                    .update(msg.iova, msg.size, msg.userspace_addr, perm, &mem)
            }
            VhostIotlbType::Invalidate => self.iotlb.invalidate(msg.iova, msg.size).map(|_| ()),
            other => Err(Error::IotlbType(other as u8)),
        }
    }

    /// Stop every queue thread (disconnect).
    pub fn shutdown(&self) {
        if let Ok(mut st) = self.state.lock() {
            for i in 0..st.vrings.len() {
                Self::stop_ring(&mut st, i);
            }
        }
    }

    fn ring(st: &mut State, index: u32) -> VuResult<&mut Vring> {
        usize::try_from(index)
            .ok()
            .and_then(|i| st.vrings.get_mut(i))
            .ok_or(VuError::InvalidParam)
    }

    /// Stop a ring's thread; its queue position becomes the ring's base.
    fn stop_ring(st: &mut State, i: usize) {
        if let Some(r) = st.vrings.get_mut(i) {
            if let Some(w) = r.worker.take() {
                if let Some(q) = w.stop() {
                    r.base = q.next_avail();
                }
            }
        }
    }

    /// Start ring `i` if it has a kick fd, is enabled and memory is known.
    fn start_ring(&self, st: &mut State, i: usize) {
        let iommu = Self::iommu_on(st);
        let (Some(mem), Some(r)) = (st.mem.clone(), st.vrings.get(i)) else {
            return;
        };
        if r.worker.is_some() || !r.enabled || r.kick.is_none() || r.size == 0 {
            return;
        }
        match self.build_setup(st, &mem, iommu, i) {
            Ok(setup) => match Worker::spawn(setup, Arc::clone(&self.device)) {
                Ok(w) => {
                    if let Some(r) = st.vrings.get_mut(i) {
                        r.worker = Some(w);
                    }
                }
                Err(e) => warn!("queue {i}: cannot start: {e}"),
            },
            Err(e) => warn!("queue {i}: cannot start: {e}"),
        }
    }

    fn build_setup(&self, st: &State, mem: &MemTable, iommu: bool, i: usize) -> Result<QueueSetup> {
        let r = st.vrings.get(i).ok_or(Error::Protocol("no such queue"))?;
        let index = u16::try_from(i).map_err(|_| Error::Protocol("queue index"))?;
        let (desc, avail, used, backing) = if iommu {
            (r.desc, r.avail, r.used, mem.by_uaddr().clone())
        } else {
            let g = |a: u64| mem.uaddr_to_gpa(a).ok_or(Error::RingAddress(a));
            (g(r.desc)?, g(r.avail)?, g(r.used)?, mem.by_gpa().clone())
        };
        let mut q = Queue::new(self.device.max_queue_size()).map_err(Error::Queue)?;
        q.try_set_size(r.size).map_err(Error::Queue)?;
        q.try_set_desc_table_address(GuestAddress(desc))
            .map_err(Error::Queue)?;
        q.try_set_avail_ring_address(GuestAddress(avail))
            .map_err(Error::Queue)?;
        q.try_set_used_ring_address(GuestAddress(used))
            .map_err(Error::Queue)?;
        q.set_next_avail(r.base);
        q.set_next_used(r.base);
        q.set_ready(true);
        let clone = |e: &Option<File>| -> Result<Option<File>> {
            e.as_ref()
                .map(|e| e.try_clone().map_err(Error::Socket))
                .transpose()
        };
        let kick = clone(&r.kick)?.ok_or(Error::Protocol("no kick fd"))?;
        let view = IotlbView::new(
            vm_iommu::DeviceView::new(self.iotlb.endpoint()?, backing),
            iommu,
        );
        Ok(QueueSetup {
            index,
            queue: q,
            kick,
            call: clone(&r.call)?,
            view,
            backend: st.backend.clone(),
        })
    }

    fn restart_all(&self, st: &mut State) {
        for i in 0..st.vrings.len() {
            if st.vrings.get(i).is_some_and(|r| r.worker.is_some()) {
                Self::stop_ring(st, i);
                self.start_ring(st, i);
            }
        }
    }

    fn restart_ring(&self, st: &mut State, i: usize) {
        Self::stop_ring(st, i);
        self.start_ring(st, i);
    }

    fn reset(&self, st: &mut State) {
        for i in 0..st.vrings.len() {
            Self::stop_ring(st, i);
        }
        for r in st.vrings.iter_mut() {
            *r = Vring::default();
        }
        st.features = 0;
        self.log.set_enabled(false);
        let _ = self.iotlb.set_enabled(false);
    }
}

fn unsupported<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation("not supported by this back-end"))
}

impl<D: VirtioDevice> VhostUserBackendReqHandler for DaemonHandler<D> {
    fn set_owner(&self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&self) -> VuResult<()> {
        let mut st = self.lock()?;
        self.reset(&mut st);
        Ok(())
    }

    fn reset_device(&self) -> VuResult<()> {
        self.reset_owner()
    }

    fn get_features(&self) -> VuResult<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&self, features: u64) -> VuResult<()> {
        if features & !self.offered_features() != 0 {
            return Err(VuError::InvalidParam);
        }
        let mut st = self.lock()?;
        let was = st.features;
        st.features = features;
        let iommu = features & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0;
        self.iotlb.set_enabled(iommu).map_err(herr)?;
        self.log
            .set_enabled(features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0);
        // Without PROTOCOL_FEATURES rings start enabled (vhost-user spec).
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            st.vrings.iter_mut().for_each(|r| r.enabled = true);
        }
        if (was ^ features) & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0 {
            self.restart_all(&mut st);
        }
        Ok(())
    }

    fn set_mem_table(
        &self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let table = MemTable::new(ctx, files, &self.log).map_err(herr)?;
        let mut st = self.lock()?;
        let running: Vec<usize> = (0..st.vrings.len())
            .filter(|&i| st.vrings.get(i).is_some_and(|r| r.worker.is_some()))
            .collect();
        for &i in &running {
            Self::stop_ring(&mut st, i);
        }
        st.mem = Some(Arc::new(table));
        for i in running {
            self.start_ring(&mut st, i);
        }
        Ok(None)
    }

    fn set_vring_num(&self, index: u32, num: u32) -> VuResult<()> {
        let max = self.device.max_queue_size();
        let mut st = self.lock()?;
        let r = Self::ring(&mut st, index)?;
        let num = u16::try_from(num).map_err(|_| VuError::InvalidParam)?;
        if num == 0 || num > max || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        r.size = num;
        Ok(())
    }

    fn set_vring_addr(
        &self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let mut st = self.lock()?;
        let r = Self::ring(&mut st, index)?;
        r.desc = descriptor;
        r.used = used;
        r.avail = available;
        Ok(())
    }

    fn set_vring_base(&self, index: u32, base: u32) -> VuResult<()> {
        let mut st = self.lock()?;
        let r = Self::ring(&mut st, index)?;
        r.base = u16::try_from(base).map_err(|_| VuError::InvalidParam)?;
        Ok(())
    }

    fn get_vring_base(&self, index: u32) -> VuResult<VhostUserVringState> {
        let mut st = self.lock()?;
        Self::ring(&mut st, index)?;
        let i = index as usize;
        Self::stop_ring(&mut st, i);
        let r = Self::ring(&mut st, index)?;
        // The ring is stopped: it starts again with the next SET_VRING_KICK.
        r.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(r.base)))
    }

    fn set_vring_kick(&self, index: u8, fd: Option<File>) -> VuResult<()> {
        let mut st = self.lock()?;
        let i = usize::from(index);
        Self::ring(&mut st, u32::from(index))?;
        Self::stop_ring(&mut st, i);
        let fd = fd.ok_or(VuError::InvalidParam)?;
        let r = Self::ring(&mut st, u32::from(index))?;
        r.kick = Some(fd);
        self.start_ring(&mut st, i);
        Ok(())
    }

    fn set_vring_call(&self, index: u8, fd: Option<File>) -> VuResult<()> {
        let mut st = self.lock()?;
        let r = Self::ring(&mut st, u32::from(index))?;
        r.call = fd;
        if r.worker.is_some() {
            self.restart_ring(&mut st, usize::from(index));
        }
        Ok(())
    }

    fn set_vring_err(&self, index: u8, _fd: Option<File>) -> VuResult<()> {
        let mut st = self.lock()?;
        Self::ring(&mut st, u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD)
    }

    fn set_protocol_features(&self, features: u64) -> VuResult<()> {
        let offered = self.get_protocol_features()?.bits();
        if features & !offered != 0 {
            return Err(VuError::InvalidParam);
        }
        self.lock()?.protocol = features;
        Ok(())
    }

    fn get_queue_num(&self) -> VuResult<u64> {
        Ok(self.device.num_queues() as u64)
    }

    fn set_vring_enable(&self, index: u32, enable: bool) -> VuResult<()> {
        let mut st = self.lock()?;
        let r = Self::ring(&mut st, index)?;
        r.enabled = enable;
        let i = index as usize;
        if enable {
            self.start_ring(&mut st, i);
        } else {
            Self::stop_ring(&mut st, i);
        }
        Ok(())
    }

    fn get_config(
        &self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        if size > MAX_CONFIG_SIZE {
            return Err(VuError::InvalidParam);
        }
        let mut buf = vec![0u8; size as usize];
        self.device.read_config(u64::from(offset), &mut buf);
        Ok(buf)
    }

    fn set_config(&self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> VuResult<()> {
        // The config spaces served here are read-only.
        Err(VuError::InvalidParam)
    }

    fn set_gpu_socket(&self, _gpu_backend: GpuBackend) -> VuResult<()> {
        unsupported()
    }

    fn get_shared_object(&self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        unsupported()
    }

    fn get_inflight_fd(
        &self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        unsupported()
    }

    fn set_inflight_fd(&self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        unsupported()
    }

    fn get_max_mem_slots(&self) -> VuResult<u64> {
        unsupported()
    }

    fn add_mem_region(
        &self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        unsupported()
    }

    fn remove_mem_region(&self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        unsupported()
    }

    fn set_device_state_fd(
        &self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        unsupported()
    }

    fn check_device_state(&self) -> VuResult<()> {
        unsupported()
    }

    fn get_shmem_config(&self) -> VuResult<VhostUserShMemConfig> {
        unsupported()
    }

    fn set_log_base(&self, log: &VhostUserLog, file: File) -> VuResult<()> {
        let (size, offset) = (log.mmap_size, log.mmap_offset);
        debug!("dirty log: {size:#x} bytes at offset {offset:#x}");
        self.log.set_area(file, offset, size).map_err(herr)
    }
}
