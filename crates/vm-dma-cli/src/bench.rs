// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vm-dma bench`: measurements of the DMA API in the style of Linux's own
//! benchmarks. Each measurement is a subcommand with its own module.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use crate::error::Result;
use crate::progress::Progress;
use crate::report::emit;
use crate::GlobalOpts;

pub mod map;
pub mod rig;
pub mod stats;

/// The `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Linux's dma_map_benchmark: threads map and unmap a buffer for some
    /// seconds; prints the average and standard deviation of map and unmap
    /// latency
    Map(map::MapArgs),
}

/// Runs a `bench` subcommand and writes its report to `out`.
pub fn run(cmd: &BenchCommand, global: &GlobalOpts, out: &mut dyn Write) -> Result<()> {
    match cmd {
        BenchCommand::Map(args) => {
            let total = Duration::from_secs(u64::from(args.seconds));
            let progress = Progress::timed("dma_map_benchmark", total, global.show_progress());
            let result = map::run(args, &progress);
            progress.finish();
            emit(&result?, global.format(), out)
        }
    }
}
