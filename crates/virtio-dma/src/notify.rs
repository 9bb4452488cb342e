// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How a driver-side queue notifies its device.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Something that tells the device a queue has new buffers: a transport's
/// queue-notify register, an ioeventfd, a test counter.
pub trait Notify {
    /// Sends one notification.
    fn notify(&self) -> io::Result<()>;
}

/// An ioeventfd-style notifier: each notification adds 1 to the counter.
///
/// ```
/// use virtio_dma::Notify;
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let fd = EventFd::new(EFD_NONBLOCK).unwrap();
/// fd.notify().unwrap();
/// fd.notify().unwrap();
/// assert_eq!(fd.read().unwrap(), 2);
/// ```
impl Notify for EventFd {
    fn notify(&self) -> io::Result<()> {
        self.write(1)
    }
}

impl<N: Notify + ?Sized> Notify for &N {
    fn notify(&self) -> io::Result<()> {
        (**self).notify()
    }
}
