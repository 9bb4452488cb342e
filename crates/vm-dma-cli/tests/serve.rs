// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vm-dma serve`: the vhost-user-blk daemon entry point. The protocol
//! itself is tested in crates/vhost-user-dma (a vhost Frontend over a real
//! socket); here the command starts, listens, serves the connections asked
//! for and exits, and refuses bad input with one line and exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn vm_dma() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vm-dma"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vm-dma-serve-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn serve_listens_serves_one_connection_and_exits() {
    let dir = scratch("one");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.join("blk.sock");
    let mut child = vm_dma()
        .args(["serve", "--connections", "1", "--socket-path"])
        .arg(&sock)
        .arg("--disk")
        .arg(&disk)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    // A front-end that connects and goes away: the daemon's one
    // connection ends, and so does the daemon.
    drop(stream);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the daemon did not exit after its connection");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_refuses_a_missing_disk_with_one_line() {
    let dir = scratch("missing");
    let out = vm_dma()
        .args(["serve", "--disk", "/nonexistent/disk.img", "--socket-path"])
        .arg(dir.join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = vm_dma().args(["serve", "--disk", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the socket path is required");
    std::fs::remove_dir_all(&dir).unwrap();
}
