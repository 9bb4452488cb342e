// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A stand-alone vhost-user-blk daemon (what `vm-dma serve` runs):
//!
//! ```text
//! cargo run --release -p vhost-user-dma --example vhost-user-blk -- \
//!     --socket-path /tmp/vhost-blk.sock --disk disk.img
//! ```

use clap::Parser;

/// vhost-user-blk daemon on vm-dma (works behind a vIOMMU).
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    serve: vhost_user_dma::ServeArgs,
}

/// Log to stderr at the level named by `VHOST_USER_DMA_LOG` (error if unset).
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }

    fn flush(&self) {}
}

fn main() {
    let level = std::env::var("VHOST_USER_DMA_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Error);
    let _ = log::set_logger(Box::leak(Box::new(StderrLog(level))));
    log::set_max_level(level);
    let cli = Cli::parse();
    if let Err(e) = vhost_user_dma::serve(&cli.serve) {
        eprintln!("vhost-user-blk: {e}");
        std::process::exit(1);
    }
}
