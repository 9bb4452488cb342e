// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The connection loop: `vhost`'s dispatcher for the standard messages, this
//! crate's code for `IOTLB_MSG` and `SET_BACKEND_REQ_FD`, one connection at a time.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use log::{debug, info, warn};
use vhost::vhost_user::{BackendReqHandler, Listener};

use crate::device::VirtioDevice;
use crate::handler::{DaemonHandler, DaemonOptions};
use crate::wire::{self, FRONTEND_IOTLB_MSG, FRONTEND_SET_BACKEND_REQ_FD};
use crate::{Error, Result};

/// A vhost-user daemon for one device, serving front-ends one after the other.
///
/// ```no_run
/// use std::sync::Arc;
/// use vhost_user_dma::{Daemon, DaemonOptions, EchoDevice};
///
/// let daemon = Daemon::new(Arc::new(EchoDevice), DaemonOptions::default());
/// // Serve one front-end on the socket, then return.
/// daemon.serve_path("/tmp/echo.sock", Some(1)).unwrap();
/// ```
#[derive(Debug)]
pub struct Daemon<D: VirtioDevice> {
    device: Arc<D>,
    opts: DaemonOptions,
}

/// The header of a message the daemon reads itself, if the vhost crate would
/// accept it ([`wire::RawHeader::is_valid`]); otherwise the connection ends, as
/// it does for any other malformed message.
fn valid(hdr: wire::RawHeader) -> Result<wire::RawHeader> {
    if hdr.is_valid() {
        Ok(hdr)
    } else {
        Err(Error::BadHeader {
            code: hdr.code,
            flags: hdr.flags,
        })
    }
}

impl<D: VirtioDevice> Daemon<D> {
    /// A daemon serving `device`.
    pub fn new(device: Arc<D>, opts: DaemonOptions) -> Self {
        Daemon { device, opts }
    }

    /// The device.
    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// Listen on `path` (replacing a stale socket file) and serve `connections`
    /// front-ends in turn (`None`: forever).
    pub fn serve_path(&self, path: impl AsRef<Path>, connections: Option<usize>) -> Result<()> {
        let listener = Listener::new(path, true).map_err(|e| Error::Vhost(e.to_string()))?;
        self.serve_listener(&listener, connections)
    }

    /// Serve `connections` front-ends that connect to `listener` (`None`: forever).
    /// A connection that fails (a malformed message, a broken socket) is logged and
    /// closed; the daemon goes on with the next one.
    pub fn serve_listener(&self, listener: &Listener, connections: Option<usize>) -> Result<()> {
        let mut served = 0usize;
        while connections.is_none_or(|n| served < n) {
            let Some(stream) = listener.accept().map_err(|e| Error::Vhost(e.to_string()))? else {
                continue;
            };
            served += 1;
            match self.serve_stream(stream) {
                Ok(()) => info!("front-end disconnected"),
                Err(e) => warn!("connection closed: {e}"),
            }
        }
        Ok(())
    }

    /// Serve one connected front-end until it disconnects (`Ok`) or misbehaves
    /// (`Err`). The device's queues are stopped before this returns.
    pub fn serve_stream(&self, stream: UnixStream) -> Result<()> {
        let handler = Arc::new(DaemonHandler::new(
            Arc::clone(&self.device),
            self.opts.clone(),
        )?);
        let res = Self::run(&handler, stream);
        handler.shutdown();
        let st = handler.iotlb().stats();
        info!(
            "connection done: access_platform={} iotlb updates={} invalidations={} evictions={} misses={}",
            handler.access_platform(),
            st.updates,
            st.invalidations,
            st.evictions,
            handler.misses_sent()
        );
        res
    }

    fn run(handler: &Arc<DaemonHandler<D>>, stream: UnixStream) -> Result<()> {
        let mut side = stream.try_clone().map_err(Error::Socket)?;
        let mut vhost = BackendReqHandler::from_stream(stream, Arc::clone(handler));
        loop {
            let Some(hdr) = wire::peek_request(&side)? else {
                return Ok(());
            };
            match hdr.code {
                FRONTEND_IOTLB_MSG => {
                    let req = wire::read_request(&mut side)?;
                    let hdr = valid(req.hdr)?;
                    let res = wire::iotlb_payload(&req)
                        .and_then(|b| wire::decode_iotlb(&b))
                        .and_then(|m| handler.handle_iotlb(&m));
                    if let Err(e) = &res {
                        debug!("IOTLB message refused: {e}");
                    }
                    if hdr.need_reply() {
                        wire::send_u64_reply(&mut side, hdr.code, u64::from(res.is_err()))?;
                    }
                }
                FRONTEND_SET_BACKEND_REQ_FD => {
                    let req = wire::read_request(&mut side)?;
                    let hdr = valid(req.hdr)?;
                    let res =
                        wire::backend_req_socket(req).and_then(|s| handler.set_backend_channel(s));
                    if hdr.need_reply() && handler.reply_ack() {
                        wire::send_u64_reply(&mut side, hdr.code, u64::from(res.is_err()))?;
                    }
                    res?;
                }
                _ => match vhost.handle_request() {
                    Ok(()) => {}
                    Err(vhost::vhost_user::Error::Disconnected) => return Ok(()),
                    Err(e) => return Err(Error::Vhost(e.to_string())),
                },
            }
        }
    }
}
