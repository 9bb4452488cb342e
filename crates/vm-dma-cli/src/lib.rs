// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vm-dma` command: measurements and scenarios over the vm-dma DMA API
//! and the vm-iommu virtual IOMMU.
//!
//! ```text
//! vm-dma [--json] [-q] run [--ops N] [--block-size BYTES] [--queue-depth N] [--disk FILE]
//!                          [--iommu virtio|direct|off] [--strict | --lazy] [--mask BITS]
//!                          [--force-bounce] [--debug] [--seed N]
//! vm-dma [--json] [-q] bench map [-t THREADS] [-s SECONDS] [-g PAGES] [-d DIR]
//!                                [-x BITS] [-y NS] [--bounce | --iommu [--strict | --lazy]]
//! ```
//!
//! `vm-dma run` is the main job: a virtio-blk device behind a virtio-iommu,
//! each on an event-manager thread, and a guest driver thread running a
//! verifying workload over the DMA API; see [`run`](mod@run).
//! `vm-dma bench map` is Linux's `dma_map_benchmark`; see [`bench::map`].
//!
//! # Structure
//!
//! - [`Cli`] is the clap parser: [`GlobalOpts`] (`--json`, `--quiet`,
//!   accepted anywhere on the line) and a [`Command`].
//! - Each subcommand is a module with its clap `Args`/`Subcommand` type and
//!   a `run` function that returns a value implementing [`report::Report`];
//!   the dispatcher hands it to [`report::emit`], which writes text or JSON.
//! - Long runs show a [`progress::Progress`] bar on stderr.
//! - Every failure is an [`error::Error`]; `main` prints it as one line on
//!   stderr and exits with [`error::EXIT_ERROR`] (2), as clap does for bad
//!   flags ([`usage_error_line`] condenses clap's message to one line). The
//!   one exception is a `run` that completed but whose data did not verify
//!   ([`Error::NotVerified`], exit code [`run::EXIT_NOT_VERIFIED`], 1): its
//!   report is printed first.
//!
//! ```
//! use clap::Parser;
//! use vm_dma_cli::{Cli, Command};
//!
//! let cli = Cli::try_parse_from(["vm-dma", "bench", "map", "-t", "2", "--json"]).unwrap();
//! assert!(cli.global.json);
//! assert!(matches!(cli.command, Command::Bench(_)));
//! // Bad flags are clap errors with exit code 2.
//! let e = Cli::try_parse_from(["vm-dma", "bench", "map", "-g", "0"]).unwrap_err();
//! assert_eq!(e.exit_code(), 2);
//! ```

use std::io::Write;

use clap::{Args, Parser, Subcommand};

pub mod bench;
pub mod error;
pub mod progress;
pub mod report;
pub mod run;

pub use error::{Error, Result, EXIT_ERROR};

/// The `vm-dma` command line.
#[derive(Debug, Parser)]
#[command(
    name = "vm-dma",
    version,
    about = "The Linux DMA mapping API over VM guest memory: benchmarks and scenarios",
    propagate_version = true
)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes, before or after its name.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct GlobalOpts {
    /// Print the report as one JSON object
    #[arg(long, global = true, display_order = 100)]
    pub json: bool,
    /// Show no progress bar
    #[arg(short, long, global = true, display_order = 101)]
    pub quiet: bool,
}

impl GlobalOpts {
    /// The report format the flags select.
    pub fn format(&self) -> report::Format {
        if self.json {
            report::Format::Json
        } else {
            report::Format::Text
        }
    }

    /// Whether a progress bar may be drawn (it still needs a terminal).
    pub fn show_progress(&self) -> bool {
        !self.json && !self.quiet
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Micro-benchmarks of the DMA API
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The main job: a virtio-blk device behind a virtio-iommu on
    /// event-manager threads, a guest driver thread running a verifying
    /// random read/write workload over the DMA API; prints IOPS, latency,
    /// mappings, bounces, faults, dma-debug findings and whether all data
    /// verified
    Run(run::RunArgs),
    /// A vhost-user-blk daemon on a Unix socket, behind a vIOMMU when the
    /// front-end negotiates VIRTIO_F_ACCESS_PLATFORM (the vhost-user IOTLB
    /// protocol); runs until killed, or for --connections front-ends
    Serve(vhost_user_dma::ServeArgs),
}

/// Runs the command `cli` describes, writing its report to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    match &cli.command {
        Command::Bench(cmd) => bench::run(cmd, &cli.global, out),
        Command::Serve(args) => Ok(vhost_user_dma::serve(args)?),
        Command::Run(args) => {
            let progress = run::progress(args, cli.global.show_progress());
            let result = run::run(args, &progress);
            progress.finish();
            let report = result?;
            report::emit(&report, cli.global.format(), out)?;
            if report.verified {
                Ok(())
            } else {
                Err(Error::NotVerified {
                    mismatches: report.mismatches,
                    failed: report.failed_requests,
                    faults: report.faults,
                    findings: report.debug_findings.unwrap_or(0)
                        + report.debug_leaks.unwrap_or(0) as u64,
                })
            }
        }
    }
}

/// One line for a clap error (clap prints a usage block and tips over
/// several lines): the lines of its message up to the first blank, `Usage:`
/// or `tip:` line, joined, without the `error: ` prefix, and a pointer to
/// `--help`.
///
/// ```
/// use clap::Parser;
/// use vm_dma_cli::{usage_error_line, Cli};
///
/// let e = Cli::try_parse_from(["vm-dma", "bench", "map", "--bogus"]).unwrap_err();
/// assert_eq!(
///     usage_error_line(&e),
///     "unexpected argument '--bogus' found (see --help)"
/// );
/// let e = Cli::try_parse_from(["vm-dma", "bench", "map", "--lazy"]).unwrap_err();
/// assert_eq!(
///     usage_error_line(&e),
///     "the following required arguments were not provided: --iommu (see --help)"
/// );
/// ```
pub fn usage_error_line(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap's message is the whole help text.
        return "a subcommand is missing (see --help)".to_string();
    }
    let text = e.to_string();
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("tip:") {
            if parts.is_empty() {
                continue;
            }
            break;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    if parts.is_empty() {
        parts.push("invalid command line");
    }
    format!("{} (see --help)", parts.join(" "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_before_and_after_the_subcommand() {
        for argv in [
            ["vm-dma", "--json", "bench", "map"],
            ["vm-dma", "bench", "map", "--json"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.global.format(), report::Format::Json);
            assert!(!cli.global.show_progress());
        }
        let cli = Cli::try_parse_from(["vm-dma", "bench", "map"]).unwrap();
        assert!(cli.global.show_progress());
    }

    #[test]
    fn usage_errors_condense_to_one_line() {
        for argv in [
            vec!["vm-dma"],
            vec!["vm-dma", "bench", "map", "--iommu", "--bounce"],
            vec!["vm-dma", "bench", "map", "-d", "sideways"],
            vec!["vm-dma", "bench", "map", "--lazy"],
        ] {
            let e = Cli::try_parse_from(&argv).unwrap_err();
            let line = usage_error_line(&e);
            assert!(!line.contains('\n'), "{argv:?}: {line}");
            assert!(!line.starts_with("error:"), "{line}");
            assert!(line.ends_with("(see --help)"), "{line}");
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }
}
