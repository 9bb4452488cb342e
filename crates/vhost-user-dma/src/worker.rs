// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One thread per started queue: wait for kicks, run requests, resolve misses.
//!
//! Each request is run in *attempts*. An attempt pops a chain, lets the device
//! process it and puts it on the used ring, all under one vm-iommu access guard (so
//! an INVALIDATE waits for at most one attempt). If the view recorded a miss, the
//! queue's `next_avail`/`next_used` are rolled back, the guard is dropped, the miss
//! is sent on the back-end channel and, once the front-end acked it, the request is
//! attempted again. A request whose misses do not make progress (the same page
//! missed [`MAX_SAME_MISS`] times, or [`MAX_MISSES_PER_REQUEST`] misses) gets one
//! last attempt with recording off, so the device reports the fault its own way
//! (a block device answers IOERR).
//!
//! Stopping (`GET_VRING_BASE`, disable, disconnect) interrupts a miss wait, rolls the
//! unfinished request back and hands the queue back: its `next_avail` is the vring
//! base to report, and the front-end will make the request available again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::{debug, warn};
use std::fs::File;
use std::io::{Read, Write};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::PollContext;

use crate::device::VirtioDevice;
use crate::memory::DaemonMemory;
use crate::view::IotlbView;
use crate::wire::{BackendChannel, MissOutcome};
use crate::{Error, Result};

/// Consecutive misses on one page after which a request stops asking.
pub const MAX_SAME_MISS: u32 = 4;
/// Misses one request may cause before it stops asking.
pub const MAX_MISSES_PER_REQUEST: u32 = 4096;

/// Everything a queue thread needs.
#[derive(Debug)]
pub(crate) struct QueueSetup {
    pub index: u16,
    pub queue: Queue,
    pub kick: File,
    pub call: Option<File>,
    pub view: IotlbView<DaemonMemory>,
    pub backend: Option<Arc<BackendChannel>>,
}

/// A running queue thread.
#[derive(Debug)]
pub(crate) struct Worker {
    stop: Arc<AtomicBool>,
    stop_evt: EventFd,
    thread: JoinHandle<Queue>,
}

enum Step {
    Empty,
    Done,
    Stopped,
    Broken,
}

enum Outcome {
    Empty,
    Done,
    Missed,
    UsedFailed,
}

struct Runner<D> {
    s: QueueSetup,
    device: Arc<D>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Start the thread for `setup`.
    pub fn spawn<D: VirtioDevice>(setup: QueueSetup, device: Arc<D>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Socket)?;
        let evt = stop_evt.try_clone().map_err(Error::Socket)?;
        let name = format!("vhost-q{}", setup.index);
        let runner = Runner {
            s: setup,
            device,
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || runner.run(evt))
            .map_err(Error::Socket)?;
        Ok(Worker {
            stop,
            stop_evt,
            thread,
        })
    }

    /// Stop the thread and take the queue back (`None` if the thread panicked).
    pub fn stop(self) -> Option<Queue> {
        self.stop.store(true, Ordering::Release);
        let _ = self.stop_evt.write(1);
        self.thread.join().ok()
    }
}

impl<D: VirtioDevice> Runner<D> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn run(mut self, stop_evt: EventFd) -> Queue {
        let ctx = match PollContext::<u32>::new() {
            Ok(c) => c,
            Err(e) => {
                warn!("queue {}: cannot poll: {e}", self.s.index);
                return self.s.queue;
            }
        };
        if ctx.add(&self.s.kick, 0).is_err() || ctx.add(&stop_evt, 1).is_err() {
            return self.s.queue;
        }
        // Requests made available before the queue started.
        self.process_all();
        while !self.stopped() {
            let Ok(events) = ctx.wait() else { break };
            let mut kicked = false;
            for e in events.iter_readable() {
                match e.token() {
                    0 => {
                        let mut b = [0u8; 8];
                        let _ = (&self.s.kick).read(&mut b);
                        kicked = true;
                    }
                    _ => return self.s.queue,
                }
            }
            if kicked {
                // A broken queue (used ring unreachable) is retried on each kick.
                self.process_all();
            }
        }
        self.s.queue
    }

    /// Run every available request (until the queue is empty, broken or stopped).
    fn process_all(&mut self) {
        let mut done = false;
        while !self.stopped() {
            match self.request() {
                Step::Done => done = true,
                Step::Empty | Step::Stopped | Step::Broken => break,
            }
        }
        if done {
            if let Some(call) = &self.s.call {
                let _ = (&*call).write_all(&1u64.to_ne_bytes());
            }
        }
    }

    /// One attempt: pop, process, put on the used ring, under one access guard.
    fn attempt(&mut self) -> Outcome {
        let view = &self.s.view;
        view.begin_attempt();
        let _guard = view.pin();
        // Probe the avail ring header first: a miss there is then recorded by the
        // view instead of being logged as an error by virtio-queue's iterator.
        let avail = GuestAddress(self.s.queue.avail_ring());
        if !view.check_range(avail, 4, Permissions::Read) {
            return Outcome::Empty;
        }
        let Some(chain) = self.s.queue.pop_descriptor_chain(view) else {
            return Outcome::Empty;
        };
        let head = chain.head_index();
        let len = self.device.process(self.s.index, view, chain);
        if view.poisoned() {
            return Outcome::Missed;
        }
        match self.s.queue.add_used(view, head, len) {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::UsedFailed,
        }
    }

    /// Run the next request to completion, resolving its misses.
    fn request(&mut self) -> Step {
        let mut last_page = None;
        let mut same = 0u32;
        let mut total = 0u32;
        loop {
            let (na, nu) = (self.s.queue.next_avail(), self.s.queue.next_used());
            let out = self.attempt();
            let Some((iova, perm)) = self.s.view.take_miss() else {
                return match out {
                    Outcome::Empty => Step::Empty,
                    Outcome::Done => Step::Done,
                    Outcome::Missed | Outcome::UsedFailed => {
                        self.s.queue.set_next_avail(na);
                        self.s.queue.set_next_used(nu);
                        warn!("queue {}: used ring not writable", self.s.index);
                        Step::Broken
                    }
                };
            };
            self.s.queue.set_next_avail(na);
            self.s.queue.set_next_used(nu);
            let page = iova >> 12;
            if last_page == Some(page) {
                same += 1;
            } else {
                same = 0;
                last_page = Some(page);
            }
            total += 1;
            let give_up = same >= MAX_SAME_MISS || total >= MAX_MISSES_PER_REQUEST;
            let acked = match (&self.s.backend, give_up) {
                (Some(chan), false) => {
                    let stop = Arc::clone(&self.stop);
                    match chan.send_miss(iova, perm, &move || stop.load(Ordering::Acquire)) {
                        Ok(MissOutcome::Acked) => true,
                        Ok(MissOutcome::Stopped) => return Step::Stopped,
                        Err(e) => {
                            warn!("queue {}: miss at {iova:#x}: {e}", self.s.index);
                            false
                        }
                    }
                }
                _ => false,
            };
            if acked {
                continue;
            }
            debug!("queue {}: giving up on IOVA {iova:#x}", self.s.index);
            // Last attempt without recording: the device reports the fault itself.
            self.s.view.set_recording(false);
            let out = self.attempt();
            self.s.view.set_recording(true);
            return match out {
                Outcome::Empty => Step::Empty,
                Outcome::Done => Step::Done,
                Outcome::Missed | Outcome::UsedFailed => {
                    self.s.queue.set_next_avail(na);
                    self.s.queue.set_next_used(nu);
                    Step::Broken
                }
            };
        }
    }
}
