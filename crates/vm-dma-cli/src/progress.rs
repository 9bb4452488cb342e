// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A progress bar for runs of known length, on stderr, so that stdout holds
//! only the report. It is drawn only when stderr is a terminal and the
//! caller wants it (no `--json`, no `--quiet`); otherwise every call is a
//! no-op, so a subcommand updates it unconditionally.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar that fills over a fixed duration.
///
/// ```
/// use std::time::Duration;
/// use vm_dma_cli::progress::Progress;
///
/// // Hidden: nothing is drawn, updates are free.
/// let p = Progress::timed("map", Duration::from_secs(5), false);
/// assert!(p.is_hidden());
/// p.set_elapsed(Duration::from_secs(1));
/// p.finish();
/// ```
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar labelled `label` that is full after `total`; drawn on stderr
    /// only if `visible` and stderr is a terminal.
    pub fn timed(label: &str, total: Duration, visible: bool) -> Self {
        let len = u64::try_from(total.as_millis()).unwrap_or(u64::MAX);
        let bar = if visible && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            // The template is a constant known to parse; fall back to the
            // default style rather than fail a run over a cosmetic detail.
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {elapsed}/{prefix}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(format!("{}s", total.as_secs()));
            bar.set_message(label.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar }
    }

    /// A bar labelled `label` that is full after `total` units of work
    /// (requests, say), moved with [`set_done`](Self::set_done); drawn on
    /// stderr only if `visible` and stderr is a terminal.
    ///
    /// ```
    /// use vm_dma_cli::progress::Progress;
    ///
    /// let p = Progress::counted("requests", 2000, false);
    /// assert!(p.is_hidden());
    /// p.set_done(500);
    /// p.finish();
    /// ```
    pub fn counted(label: &str, total: u64, visible: bool) -> Self {
        let bar = if visible && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar }
    }

    /// Moves the bar to `done` units of its total.
    pub fn set_done(&self, done: u64) {
        self.bar
            .set_position(done.min(self.bar.length().unwrap_or(done)));
    }

    /// Whether nothing is drawn.
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Moves the bar to `elapsed` of the total.
    pub fn set_elapsed(&self, elapsed: Duration) {
        let pos = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.bar
            .set_position(pos.min(self.bar.length().unwrap_or(pos)));
    }

    /// Removes the bar from the terminal.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
