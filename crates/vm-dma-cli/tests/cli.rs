// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vm-dma` binary as a user runs it: output, `--json` fields, every
//! mapping mode, and exit code 2 with one stderr line for every error.
//! Runs use `-s 1` to keep the suite short.

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

/// Runs a benchmark with `--json` and returns the parsed object.
fn bench_json(extra: &[&str]) -> Value {
    let mut args = vec!["bench", "map", "-s", "1", "--json"];
    args.extend_from_slice(extra);
    let o = vm_dma(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    assert_eq!(stderr(&o), "", "a successful run prints nothing on stderr");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one JSON object on one line: {out}");
    serde_json::from_str(&out).unwrap()
}

fn assert_measured(v: &Value, mode: &str, threads: u64) {
    assert_eq!(v["mode"], mode);
    assert_eq!(v["threads"], threads);
    let loops = v["loops"].as_u64().unwrap();
    assert!(loops > 0, "{v}");
    let per_thread: Vec<u64> = v["thread_loops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(per_thread.len() as u64, threads);
    assert_eq!(per_thread.iter().sum::<u64>(), loops);
    for key in [
        "map_avg_us",
        "unmap_avg_us",
        "map_min_us",
        "ops_per_s",
        "elapsed_s",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
    for key in [
        "map_stddev_us",
        "unmap_stddev_us",
        "map_min_us",
        "unmap_min_us",
    ] {
        assert!(v[key].as_f64().unwrap() >= 0.0, "{key} in {v}");
    }
    assert!(v["map_max_us"].as_f64().unwrap() >= v["map_avg_us"].as_f64().unwrap());
    assert!(v["unmap_min_us"].as_f64().unwrap() <= v["unmap_avg_us"].as_f64().unwrap());
    let elapsed = v["elapsed_s"].as_f64().unwrap();
    assert!((1.0..10.0).contains(&elapsed), "{elapsed}");
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
fn default_output_has_the_linux_lines_and_a_table() {
    let o = vm_dma(&["bench", "map", "-s", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Not a terminal: no progress bar.
    assert_eq!(stderr(&o), "");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "dma mapping benchmark: threads:1 seconds:1 node:-1 dir:BIDIRECTIONAL granule: 1"
    );
    for (line, op) in [(lines[1], "map"), (lines[2], "unmap")] {
        let rest = line
            .strip_prefix(&format!("average {op} latency(us):"))
            .unwrap_or_else(|| panic!("{line}"));
        let (avg, sd) = rest.split_once(" standard deviation:").unwrap();
        // Linux's "%.1f".
        for v in [avg, sd] {
            let (_, frac) = v.split_once('.').unwrap();
            assert_eq!(frac.len(), 1, "{line}");
            assert!(v.parse::<f64>().unwrap() >= 0.0);
        }
    }
    assert_eq!(lines[3], "");
    assert!(
        lines[4].starts_with("mode:direct mask:32 bits buffer:4096 bytes"),
        "{out}"
    );
    assert!(
        lines[5].starts_with("op ") && lines[5].contains("ops/s"),
        "{out}"
    );
    assert!(lines[6].starts_with("---"), "{out}");
    let map_row: Vec<&str> = lines[7].split_whitespace().collect();
    assert_eq!(map_row[0], "map");
    assert!(map_row[1].parse::<u64>().unwrap() > 0, "{out}");
    assert!(lines[8].starts_with("unmap"), "{out}");
    assert_eq!(lines.len(), 9, "{out}");
}

#[test]
fn json_has_every_field_with_positive_latencies() {
    let v = bench_json(&["-t", "2", "-g", "2", "-d", "to-device", "-x", "40"]);
    assert_measured(&v, "direct", 2);
    assert_eq!(v["seconds"], 1);
    assert_eq!(v["granule"], 2);
    assert_eq!(v["buffer_bytes"], 8192);
    assert_eq!(v["direction"], "TO_DEVICE");
    assert_eq!(v["mask_bits"], 40);
    assert_eq!(v["node"], -1);
    assert_eq!(v["delay_ns"], 0);
    assert!(v["swiotlb_hiwater_slots"].is_null());
    assert!(v["flush_queue_capacity"].is_null() && v["flushes"].is_null());
}

#[test]
fn many_threads_start_together_and_stop_on_time() {
    // 256 threads on a 2-CPU machine: each stops at the deadline by its own
    // clock, so the run does not wait for the main thread to be scheduled.
    let v = bench_json(&["-t", "256", "--iommu", "--lazy"]);
    assert_eq!(v["thread_loops"].as_array().unwrap().len(), 256);
    assert!(v["loops"].as_u64().unwrap() > 0);
    let elapsed = v["elapsed_s"].as_f64().unwrap();
    assert!(elapsed < 10.0, "{elapsed}");
}

#[test]
fn bounce_mode_goes_through_the_swiotlb_pool() {
    let v = bench_json(&["--bounce", "-t", "2", "-d", "2"]);
    assert_measured(&v, "bounce", 2);
    assert_eq!(v["direction"], "FROM_DEVICE");
    // Two threads of one 4 KiB buffer: two slots each at most at once.
    let hiwater = v["swiotlb_hiwater_slots"].as_u64().unwrap();
    assert!((2..=4).contains(&hiwater), "{hiwater}");
}

#[test]
fn iommu_strict_mode_is_the_iommu_default() {
    let v = bench_json(&["--iommu", "-g", "16"]);
    assert_measured(&v, "iommu-strict", 1);
    assert_eq!(v["buffer_bytes"], 65536);
    assert!(v["flushes"].is_null());
    let v = bench_json(&["--iommu", "--strict", "-x", "64"]);
    assert_measured(&v, "iommu-strict", 1);
}

#[test]
fn iommu_lazy_mode_uses_a_flush_queue() {
    let v = bench_json(&["--iommu", "--lazy", "-y", "1000"]);
    assert_measured(&v, "iommu-lazy", 1);
    assert_eq!(v["flush_queue_capacity"], 32768);
    assert_eq!(v["delay_ns"], 1000);
    // The final flush (IOVAs still queued at the end are released) counts
    // at least; the 1 s timer and full rings add more.
    assert!(v["flushes"].as_u64().unwrap() >= 1, "{v}");
}

#[test]
fn text_output_names_the_mode_and_its_counters() {
    let o = vm_dma(&[
        "bench", "map", "-s", "1", "-q", "--iommu", "--lazy", "-d", "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("dir:TO_DEVICE"), "{out}");
    assert!(
        out.contains("mode:iommu-lazy") && out.contains("flush-queue:32768"),
        "{out}"
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for (args, expect) in [
        (
            vec!["bench", "map", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (vec!["bench", "map", "-t", "0"], "--threads"),
        (vec!["bench", "map", "-t", "1025"], "--threads"),
        (vec!["bench", "map", "-s", "0"], "--seconds"),
        (vec!["bench", "map", "-s", "301"], "--seconds"),
        (vec!["bench", "map", "-g", "0"], "--granule"),
        (vec!["bench", "map", "-g", "1025"], "--granule"),
        (vec!["bench", "map", "-d", "3"], "--dir"),
        (vec!["bench", "map", "-d", "sideways"], "--dir"),
        (vec!["bench", "map", "-x", "0"], "--dma-bits"),
        (vec!["bench", "map", "-x", "65"], "--dma-bits"),
        (vec!["bench", "map", "-y", "10000001"], "--delay-ns"),
        (vec!["bench", "map", "-s", "x"], "invalid value 'x'"),
        (vec!["bench", "nope"], "unrecognized subcommand 'nope'"),
        (vec![], "a subcommand is missing"),
        (vec!["bench"], "a subcommand is missing"),
    ] {
        assert_one_line_error(&args, expect);
    }
}

#[test]
fn impossible_combinations_exit_2_with_one_line() {
    for (args, expect) in [
        (
            vec!["bench", "map", "--iommu", "--bounce"],
            "cannot be used with",
        ),
        (vec!["bench", "map", "--lazy"], "--iommu"),
        (vec!["bench", "map", "--strict"], "--iommu"),
        (
            vec!["bench", "map", "--iommu", "--strict", "--lazy"],
            "cannot be used with",
        ),
        // A mask below all the memory the driver owns, without bouncing.
        (vec!["bench", "map", "-x", "24"], "below all guest memory"),
        // Below what dma_set_mask accepts.
        (vec!["bench", "map", "-x", "16"], "not supported"),
        // Bouncing through a pool the mask cannot reach.
        (
            vec!["bench", "map", "--bounce", "-x", "24"],
            "cannot reach the swiotlb pool",
        ),
        // Larger than a swiotlb segment.
        (
            vec!["bench", "map", "--bounce", "-g", "128"],
            "larger than the largest mapping",
        ),
        // No IOVA fits below a 12-bit mask.
        (
            vec!["bench", "map", "--iommu", "-x", "12"],
            "failed before the run",
        ),
        // 1024 threads of 4 MiB do not fit in 496 MiB.
        (
            vec!["bench", "map", "-t", "1024", "-g", "1024", "--iommu"],
            "no room for 1024 buffers",
        ),
    ] {
        assert_one_line_error(&args, expect);
    }
}

#[test]
fn help_and_version_exit_0() {
    let o = vm_dma(&["bench", "map", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    for flag in [
        "--threads",
        "--seconds",
        "--granule",
        "--dir",
        "--dma-bits",
        "--iommu",
        "--bounce",
        "--lazy",
        "--json",
    ] {
        assert!(out.contains(flag), "{flag} missing from help");
    }
    let o = vm_dma(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("vm-dma "));
}
