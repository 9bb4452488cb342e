// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vm-dma run` as a user runs it: the default run verifies, the `--json`
//! fields, every IOMMU mode, dma-debug, bounces under a 32-bit mask, a file
//! disk, and exit code 2 with one stderr line for every error. Runs use a
//! few hundred operations to keep the suite short.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use serde_json::Value;

fn vm_dma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm-dma"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs `vm-dma run --json --ops 300` with `extra` and returns the parsed
/// report, checking that it verified.
fn run_json(extra: &[&str]) -> Value {
    let mut args = vec!["run", "--json", "--ops", "300"];
    args.extend_from_slice(extra);
    let o = vm_dma(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    assert_eq!(stderr(&o), "", "a successful run prints nothing on stderr");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one JSON object on one line: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["ops"], 300, "{v}");
    assert_eq!(v["mismatches"], 0, "{v}");
    assert_eq!(v["failed_requests"], 0, "{v}");
    assert_eq!(v["faults"], 0, "{v}");
    assert!(v["first_problem"].is_null(), "{v}");
    v
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Checks an error run: exit code 2, nothing on stdout, exactly one
/// stderr line that names the command, no panic, no backtrace.
fn assert_one_line_error(args: &[&str], expect: &str) {
    let o = vm_dma(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert_eq!(stdout(&o), "", "{args:?}");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("vm-dma: "), "{err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn run_without_arguments_verifies_and_prints_a_table() {
    let o = vm_dma(&["run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Not a terminal: no progress bar.
    assert_eq!(stderr(&o), "");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("vm-dma run: virtio-blk over the DMA API, iommu:virtio strict"),
        "{out}"
    );
    assert!(lines[1].contains("disk:memory (16 MiB)"), "{out}");
    for row in [
        "ops ",
        "IOPS",
        "MB/s",
        "latency p99",
        "streaming mappings",
        "virtio-iommu requests",
        "bounces",
        "faults",
        "dma-debug findings",
    ] {
        assert!(out.contains(row), "{row} in {out}");
    }
    let ops: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("ops "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(ops[1], "2000", "{out}");
    assert_eq!(*lines.last().unwrap(), "verified: yes", "{out}");
}

#[test]
fn json_has_every_field() {
    let v = run_json(&["--seed", "9", "--queue-depth", "8"]);
    assert_eq!(v["iommu"], "virtio");
    assert_eq!(v["invalidation"], "strict");
    assert_eq!((u(&v, "mask_bits"), u(&v, "queue_depth")), (64, 8));
    assert_eq!((u(&v, "block_size"), u(&v, "seed")), (4096, 9));
    assert_eq!(v["disk"], "memory");
    assert_eq!(u(&v, "disk_bytes"), 16 << 20);
    assert_eq!(u(&v, "memory_bytes"), 256 << 20);
    assert_eq!(u(&v, "reads") + u(&v, "writes"), 300);
    assert!(u(&v, "reads") > 0 && u(&v, "writes") > 0, "{v}");
    assert!(f(&v, "iops") > 0.0 && f(&v, "mb_per_s") > 0.0 && f(&v, "elapsed_s") > 0.0);
    let lat: Vec<f64> = ["p50", "p90", "p99", "max"]
        .iter()
        .map(|p| f(&v, &format!("latency_{p}_us")))
        .collect();
    assert!(lat[0] > 0.0, "{v}");
    assert!(lat.windows(2).all(|w| w[0] <= w[1]), "{lat:?}");
    // The data buffer of each request: headers and status bytes live in the
    // driver's premapped request area.
    assert_eq!(u(&v, "mappings"), 300);
    // Every MAP has its UNMAP; the requests include the ring mappings.
    let (maps, unmaps) = (u(&v, "virtio_iommu_maps"), u(&v, "virtio_iommu_unmaps"));
    assert!(maps >= 300 && maps == unmaps, "{v}");
    assert!(u(&v, "virtio_iommu_requests") >= maps + unmaps, "{v}");
    assert_eq!(u(&v, "iommu_mappings_left"), 0);
    assert_eq!((u(&v, "bounces"), u(&v, "bounce_bytes")), (0, 0));
    assert_eq!(u(&v, "device_requests"), 300);
    assert_eq!(u(&v, "device_failed"), 0);
    for k in [
        "flushes",
        "swiotlb_hiwater_slots",
        "debug_findings",
        "debug_leaks",
    ] {
        assert!(v[k].is_null(), "{k} in {v}");
    }
    assert_eq!(v["debug_events"].as_array().unwrap().len(), 0);
}

#[test]
fn debug_run_has_no_findings_and_verifies() {
    for mode in ["virtio", "direct", "off"] {
        let v = run_json(&["--debug", "--iommu", mode]);
        assert_eq!(v["debug"], true);
        assert_eq!(u(&v, "debug_findings"), 0, "{mode}: {v}");
        assert_eq!(u(&v, "debug_leaks"), 0, "{mode}: {v}");
    }
}

#[test]
fn a_32_bit_mask_without_iommu_bounces_memory_above_4g() {
    let v = run_json(&["--iommu", "off", "--mask", "32"]);
    assert_eq!(v["iommu"], "off");
    assert!(v["invalidation"].is_null());
    let bounces = u(&v, "bounces");
    assert!(bounces > 0 && bounces < u(&v, "mappings"), "{v}");
    assert!(u(&v, "bounce_bytes") > 0, "{v}");
    assert!(u(&v, "swiotlb_hiwater_slots") > 0, "{v}");
    assert!(v["virtio_iommu_requests"].is_null() && v["iommu_mappings_left"].is_null());
    // With a 64-bit mask nothing bounces.
    let v = run_json(&["--iommu", "off"]);
    assert_eq!(u(&v, "bounces"), 0, "{v}");
    // Behind an IOMMU a 32-bit mask remaps instead of bouncing.
    let v = run_json(&["--iommu", "direct", "--mask", "32"]);
    assert_eq!(u(&v, "bounces"), 0, "{v}");
}

#[test]
fn force_bounce_bounces_every_mapping() {
    let v = run_json(&["--iommu", "off", "--force-bounce"]);
    assert_eq!(v["force_bounce"], true);
    assert_eq!(u(&v, "bounces"), u(&v, "mappings"), "{v}");
}

#[test]
fn direct_iommu_and_lazy_invalidation_verify() {
    let v = run_json(&["--iommu", "direct"]);
    assert_eq!(
        (v["iommu"].as_str(), v["invalidation"].as_str()),
        (Some("direct"), Some("strict"))
    );
    assert!(v["virtio_iommu_requests"].is_null());
    assert_eq!(u(&v, "iommu_mappings_left"), 0);
    for mode in ["direct", "virtio"] {
        let v = run_json(&["--iommu", mode, "--lazy"]);
        assert_eq!(v["invalidation"], "lazy");
        assert!(u(&v, "flushes") >= 1, "{mode}: {v}");
        assert_eq!(u(&v, "iommu_mappings_left"), 0, "{mode}: {v}");
    }
    let v = run_json(&["--strict"]);
    assert_eq!(v["invalidation"], "strict");
}

#[test]
fn block_sizes_and_depths_vary() {
    let v = run_json(&["--block-size", "512", "--queue-depth", "1"]);
    assert_eq!(u(&v, "block_size"), 512);
    let v = run_json(&[
        "--block-size",
        "65536",
        "--queue-depth",
        "32",
        "--iommu",
        "off",
        "--mask",
        "32",
    ]);
    assert_eq!(u(&v, "queue_depth"), 32);
    assert!(u(&v, "bounce_bytes") >= 65536, "{v}");
}

#[test]
fn a_file_disk_is_written_and_verified() {
    let path = std::env::temp_dir().join(format!("vm-dma-run-test-{}.img", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 20).unwrap();
    drop(file);
    let p = path.to_str().unwrap();
    let v = run_json(&["--disk", p]);
    assert_eq!(v["disk"], p);
    assert_eq!(u(&v, "disk_bytes"), 1 << 20);
    let data = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(data.iter().any(|&b| b != 0), "the workload wrote the file");
}

#[test]
fn errors_are_one_line_with_exit_code_2() {
    assert_one_line_error(
        &["run", "--iommu", "off", "--mask", "20"],
        "20-bit dma mask",
    );
    assert_one_line_error(&["run", "--force-bounce"], "--force-bounce");
    assert_one_line_error(
        &["run", "--iommu", "direct", "--force-bounce"],
        "--iommu off",
    );
    assert_one_line_error(&["run", "--iommu", "off", "--lazy"], "--lazy");
    assert_one_line_error(&["run", "--strict", "--lazy"], "cannot be used with");
    assert_one_line_error(
        &["run", "--disk", "/nonexistent/vm-dma/disk.img"],
        "cannot open the disk /nonexistent/vm-dma/disk.img",
    );
    assert_one_line_error(&["run", "--block-size", "1000"], "multiple of 512");
    assert_one_line_error(&["run", "--queue-depth", "0"], "--queue-depth");
    assert_one_line_error(&["run", "--ops", "0"], "--ops");
    assert_one_line_error(&["run", "--iommu", "sideways"], "possible values");
    assert_one_line_error(&["run", "--mask", "65"], "--mask");
    assert_one_line_error(&["run", "--bogus"], "unexpected argument");
    assert_one_line_error(
        &[
            "run",
            "--iommu",
            "off",
            "--force-bounce",
            "--queue-depth",
            "128",
            "--block-size",
            "262144",
        ],
        "swiotlb pool",
    );
    // Errors stay one line under --json too.
    assert_one_line_error(&["run", "--json", "--iommu", "off", "--lazy"], "--lazy");
}

#[test]
fn a_disk_smaller_than_a_block_is_refused() {
    let path = std::env::temp_dir().join(format!("vm-dma-run-small-{}.img", std::process::id()));
    std::fs::write(&path, [0u8; 100]).unwrap();
    let p = path.to_str().unwrap().to_string();
    assert_one_line_error(&["run", "--disk", &p], "smaller than one block");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn help_lists_run() {
    let o = vm_dma(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("run"), "{}", stdout(&o));
    let o = vm_dma(&["run", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for flag in [
        "--ops",
        "--block-size",
        "--queue-depth",
        "--disk",
        "--iommu",
        "--mask",
        "--force-bounce",
        "--debug",
        "--lazy",
    ] {
        assert!(out.contains(flag), "{flag} in {out}");
    }
}
