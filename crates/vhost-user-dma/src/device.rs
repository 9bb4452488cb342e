// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a device must provide to be served: feature bits, queues, config space and
//! the processing of one descriptor chain over any [`GuestMemory`].

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

/// A virtio device served over vhost-user.
///
/// `process` is called once per attempt at a request. When the memory view runs into
/// an IOTLB miss it fails every later access of the attempt, the daemon drops the
/// result, resolves the miss with the front-end and calls `process` again with the
/// same chain. So `process` must be **restartable**: executing a request again from
/// the start must be harmless. That holds for block devices (a read or write repeated
/// with the same buffers has the same effect); a device with non-idempotent side
/// effects must defer them until its last guest-memory access succeeded.
pub trait VirtioDevice: Send + Sync + 'static {
    /// The virtio device ID (e.g. 2 for block).
    fn device_type(&self) -> u32;

    /// Device-specific feature bits offered (transport bits are added by the daemon).
    fn device_features(&self) -> u64;

    /// Number of queues.
    fn num_queues(&self) -> usize;

    /// Largest queue size.
    fn max_queue_size(&self) -> u16 {
        256
    }

    /// Read `data.len()` bytes of the config space at `offset` (zero outside it).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Process one request; returns the number of bytes written to device-writable
    /// buffers (the used-ring length).
    ///
    /// `mem` is the memory the descriptors' addresses are in (the chain's own memory).
    fn process<M, T>(&self, queue: u16, mem: &M, chain: DescriptorChain<T>) -> u32
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized;
}

/// A trivial device used by the tests and the examples: every request copies its
/// device-readable bytes, each one XORed with `0xff`, into its device-writable
/// buffers (up to their size). It has one queue and an 8-byte config space holding
/// `0x0123_4567_89ab_cdef` (little endian).
#[derive(Debug, Default)]
pub struct EchoDevice;

impl VirtioDevice for EchoDevice {
    fn device_type(&self) -> u32 {
        0xffff
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = 0x0123_4567_89ab_cdef_u64.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|j| cfg.get(j).copied())
                .unwrap_or(0);
        }
    }

    fn process<M, T>(&self, _queue: u16, mem: &M, chain: DescriptorChain<T>) -> u32
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let Ok(mut reader) = virtio_queue::Reader::new(mem, chain.clone()) else {
            return 0;
        };
        let Ok(mut writer) = virtio_queue::Writer::new(mem, chain) else {
            return 0;
        };
        let mut buf = [0u8; 256];
        let mut written = 0u32;
        loop {
            let want = buf.len().min(writer.available_bytes());
            let Some(chunk) = buf.get_mut(..want) else {
                break;
            };
            let n = match std::io::Read::read(&mut reader, chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Some(data) = buf.get_mut(..n) else { break };
            data.iter_mut().for_each(|b| *b ^= 0xff);
            if std::io::Write::write_all(&mut writer, data).is_err() {
                break;
            }
            written = written.saturating_add(n as u32);
        }
        written
    }
}
