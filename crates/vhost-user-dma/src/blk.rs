// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user-blk daemon: virtio-dma's [`BlockDevice`] served by [`Daemon`],
//! and the `serve` entry point with vhost-device-style flags ([`ServeArgs`]).

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};
use virtio_dma::blk::{BlockBackend, BlockConfig, BlockDevice, FileBackend};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::device::VirtioDevice;
use crate::handler::DaemonOptions;
use crate::iotlb::DEFAULT_MAX_ENTRIES;
use crate::server::Daemon;
use crate::{Error, Result};

/// Queue size offered to the front-end (QEMU's vhost-user-blk default is 128).
pub const BLK_MAX_QUEUE_SIZE: u16 = 1024;

impl<B: BlockBackend + 'static> VirtioDevice for BlockDevice<B> {
    fn device_type(&self) -> u32 {
        BlockDevice::<B>::DEVICE_TYPE
    }

    fn device_features(&self) -> u64 {
        self.features()
    }

    fn num_queues(&self) -> usize {
        usize::from(BlockDevice::num_queues(self))
    }

    fn max_queue_size(&self) -> u16 {
        BLK_MAX_QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        BlockDevice::read_config(self, offset, data)
    }

    fn process<M, T>(&self, _queue: u16, mem: &M, chain: DescriptorChain<T>) -> u32
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        // Restartable: a request re-run after a miss reads or writes the same
        // sectors from or into the same buffers again.
        match self.process_chain(mem, chain) {
            Ok(c) => c.used_len,
            Err(e) => {
                debug!("request without status: {e}");
                0
            }
        }
    }
}

/// Command-line options of the vhost-user-blk daemon, in the style of
/// rust-vmm's vhost-device daemons. Flatten it into a CLI with
/// `#[command(flatten)]`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ServeArgs {
    /// Unix socket to listen on (replaced if it exists).
    #[arg(long = "socket-path", alias = "socket", value_name = "PATH")]
    pub socket_path: PathBuf,
    /// Disk image (a regular file or a block device).
    #[arg(long, value_name = "FILE")]
    pub disk: PathBuf,
    /// Serve the disk read-only (VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,
    /// Number of request queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// Serial number (GET_ID), at most 20 bytes.
    #[arg(long)]
    pub serial: Option<String>,
    /// Do not offer VIRTIO_F_ACCESS_PLATFORM (no vIOMMU support).
    #[arg(long)]
    pub no_access_platform: bool,
    /// Cap on IOTLB entries kept per connection.
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRIES)]
    pub iotlb_entries: usize,
    /// Milliseconds a queue waits for the front-end to acknowledge one IOTLB miss.
    #[arg(long, default_value_t = 5000)]
    pub miss_timeout_ms: u64,
    /// Serve this many front-end connections, then exit (default: forever).
    #[arg(long)]
    pub connections: Option<usize>,
}

impl ServeArgs {
    /// Options with defaults for `socket_path` and `disk`.
    pub fn new(socket_path: impl Into<PathBuf>, disk: impl Into<PathBuf>) -> Self {
        ServeArgs {
            socket_path: socket_path.into(),
            disk: disk.into(),
            read_only: false,
            queues: 1,
            serial: None,
            no_access_platform: false,
            iotlb_entries: DEFAULT_MAX_ENTRIES,
            miss_timeout_ms: 5000,
            connections: None,
        }
    }

    /// The block device these options describe (the disk is opened now).
    pub fn block_device(&self) -> Result<BlockDevice<FileBackend>> {
        let backend = FileBackend::open(&self.disk, self.read_only)
            .map_err(|e| Error::Disk(format!("{}: {e}", self.disk.display())))?;
        let cfg = BlockConfig {
            read_only: self.read_only,
            num_queues: self.queues,
            serial: self.serial.clone().unwrap_or_default().into_bytes(),
            ..BlockConfig::default()
        };
        BlockDevice::new(backend, cfg).map_err(|e| Error::Disk(e.to_string()))
    }

    /// The daemon options these flags describe.
    pub fn daemon_options(&self) -> DaemonOptions {
        DaemonOptions {
            access_platform: !self.no_access_platform,
            iotlb_entries: self.iotlb_entries,
            miss_timeout: Duration::from_millis(self.miss_timeout_ms),
        }
    }
}

/// Run the vhost-user-blk daemon (`vm-dma serve`): open the disk, listen on the
/// socket and serve front-ends until `connections` have been served (or forever).
///
/// ```no_run
/// let args = vhost_user_dma::ServeArgs::new("/tmp/vhost-blk.sock", "disk.img");
/// vhost_user_dma::serve(&args).unwrap();
/// ```
pub fn serve(args: &ServeArgs) -> Result<()> {
    let dev = args.block_device()?;
    info!(
        "vhost-user-blk: {} ({} sectors{}) on {}",
        args.disk.display(),
        dev.capacity(),
        if args.read_only { ", read-only" } else { "" },
        args.socket_path.display()
    );
    Daemon::new(Arc::new(dev), args.daemon_options())
        .serve_path(&args.socket_path, args.connections)
}
