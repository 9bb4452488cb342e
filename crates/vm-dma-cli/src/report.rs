// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How subcommands print their results: a [`Report`] is written either as
//! text for people (free lines and aligned [`Table`]s) or as one JSON object
//! on one line (`--json`), chosen by [`Format`]. A subcommand builds its
//! report value and hands it to [`emit`]; it never prints by itself, so
//! every subcommand gets `--json` for free and tests can capture the output.
//!
//! ```
//! use serde::Serialize;
//! use vm_dma_cli::report::{emit, Align, Format, Report, Table};
//!
//! #[derive(Serialize)]
//! struct Pings {
//!     sent: u64,
//!     lost: u64,
//! }
//!
//! impl Report for Pings {
//!     fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
//!         let mut t = Table::new(["what", "count"]).align(1, Align::Right);
//!         t.row(["sent", &self.sent.to_string()]);
//!         t.row(["lost", &self.lost.to_string()]);
//!         write!(out, "{t}")
//!     }
//! }
//!
//! let mut text = Vec::new();
//! emit(&Pings { sent: 10, lost: 0 }, Format::Text, &mut text).unwrap();
//! assert_eq!(String::from_utf8(text).unwrap(), "what  count\n----  -----\nsent     10\nlost      0\n");
//!
//! let mut json = Vec::new();
//! emit(&Pings { sent: 10, lost: 0 }, Format::Json, &mut json).unwrap();
//! assert_eq!(json, b"{\"sent\":10,\"lost\":0}\n");
//! ```

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

use crate::error::Result;

/// The output format of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text for people: what [`Report::write_text`] writes.
    Text,
    /// One JSON object on one line: the report's `Serialize` form.
    Json,
}

/// The result of a command: serializable for `--json`, and able to write
/// itself as text.
pub trait Report: Serialize {
    /// Writes the text form (lines ending in `\n`).
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// Writes `report` to `out` in `format`, and flushes.
///
/// Errors: [`crate::error::Error::Output`] when `out` fails,
/// [`crate::error::Error::Json`] when serialization fails.
pub fn emit<R: Report + ?Sized>(report: &R, format: Format, out: &mut dyn Write) -> Result<()> {
    match format {
        Format::Text => report.write_text(out)?,
        Format::Json => {
            serde_json::to_writer(&mut *out, report)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Align {
    /// Padded on the right (text).
    #[default]
    Left,
    /// Padded on the left (numbers).
    Right,
}

/// A text table: a header row, a dashed rule, and rows whose cells are
/// padded to the widest cell of their column, columns two spaces apart.
/// Rows shorter than the header get empty cells; cells beyond the header's
/// columns are dropped. Trailing spaces are trimmed.
///
/// ```
/// use vm_dma_cli::report::{Align, Table};
///
/// let mut t = Table::new(["op", "avg (ns)"]).align(1, Align::Right);
/// t.row(["map", "41.5"]);
/// t.row(["unmap", "7.0"]);
/// assert_eq!(
///     t.to_string(),
///     "op     avg (ns)\n-----  --------\nmap        41.5\nunmap       7.0\n"
/// );
/// ```
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let align = vec![Align::Left; headers.len()];
        Table {
            headers,
            align,
            rows: Vec::new(),
        }
    }

    /// Aligns column `col` (0-based) as `align`; a column that does not
    /// exist is ignored.
    pub fn align(mut self, col: usize, align: Align) -> Self {
        if let Some(a) = self.align.get_mut(col) {
            *a = align;
        }
        self
    }

    /// Appends a row.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.headers.len())
            .map(Into::into)
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
        self
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        self.headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain(std::iter::once(h.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }
}

fn write_line<'a>(
    f: &mut fmt::Formatter<'_>,
    cells: impl Iterator<Item = &'a str>,
    widths: &[usize],
    align: &[Align],
) -> fmt::Result {
    let mut line = String::new();
    for (i, ((cell, w), a)) in cells.zip(widths).zip(align).enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        let pad = w.saturating_sub(cell.chars().count());
        match a {
            Align::Left => {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
            Align::Right => {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
    }
    writeln!(f, "{}", line.trim_end())
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        write_line(
            f,
            self.headers.iter().map(String::as_str),
            &widths,
            &self.align,
        )?;
        let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        write_line(f, rules.iter().map(String::as_str), &widths, &self.align)?;
        for row in &self.rows {
            write_line(f, row.iter().map(String::as_str), &widths, &self.align)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_short_rows_and_drops_extra_cells() {
        let mut t = Table::new(["a", "b"]);
        t.row(["1"]);
        t.row(["22", "x", "dropped"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.to_string(), "a   b\n--  -\n1\n22  x\n");
    }

    #[test]
    fn table_without_rows_prints_header_and_rule() {
        let t = Table::new(["name"]).align(7, Align::Right);
        assert!(t.is_empty());
        assert_eq!(t.to_string(), "name\n----\n");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_unicode_cell() {
        let mut t = Table::new(["µs", "n"]).align(1, Align::Right);
        t.row(["µµµ", "5"]);
        assert_eq!(t.to_string(), "µs   n\n---  -\nµµµ  5\n");
    }

    #[derive(Serialize)]
    struct One {
        x: u32,
    }

    impl Report for One {
        fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
            writeln!(out, "x is {}", self.x)
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn emit_writes_text_or_one_json_line() {
        let mut out = Vec::new();
        emit(&One { x: 3 }, Format::Text, &mut out).unwrap();
        assert_eq!(out, b"x is 3\n");
        out.clear();
        emit(&One { x: 3 }, Format::Json, &mut out).unwrap();
        assert_eq!(out, b"{\"x\":3}\n");
    }

    #[test]
    fn emit_reports_a_failing_output() {
        for format in [Format::Text, Format::Json] {
            let e = emit(&One { x: 1 }, format, &mut Broken).unwrap_err();
            assert!(e.to_string().contains("closed"), "{e}");
        }
    }
}
