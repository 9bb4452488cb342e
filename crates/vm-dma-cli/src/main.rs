// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vm-dma` binary: parses the command line, runs it, and turns every
//! failure into one line on stderr and exit code 2.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use vm_dma_cli::{run, usage_error_line, Cli, EXIT_ERROR};

fn fail(msg: &dyn std::fmt::Display, code: i32) -> ExitCode {
    // Nothing better to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "vm-dma: {msg}");
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR as u8))
}

fn main() -> ExitCode {
    // A panic is a bug, not a usage error: report it on one line, without
    // a backtrace, and keep Rust's exit code for panics (101).
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = msg.replace('\n', " ");
        let _ = writeln!(std::io::stderr(), "vm-dma: internal error{at}: {msg}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => fail(&usage_error_line(&e), EXIT_ERROR),
            };
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(&cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, e.exit_code()),
    }
}
