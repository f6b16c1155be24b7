//! A probe's results written where `pal probe` and `pal.probe` put them: `probe.json` (rows and
//! cells), `probe.md` (the table) and `probe.png` (the plot), in the suite's results folder.

use std::path::Path;

use crate::probe::{aggregate, markdown, CellResult, Row};

/// Writes the report of `results` into `out` (titled after `suite`); returns the rows and the
/// markdown page.
pub fn write_report(
    out: &Path,
    suite: &str,
    results: &[CellResult],
) -> anyhow::Result<(Vec<Row>, String)> {
    let rows = aggregate(results);
    let table = markdown(&rows);
    crate::probe_plot::plot(&rows, &out.join("probe.png"))?;
    std::fs::write(
        out.join("probe.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "rows": rows, "cells": results }))?,
    )?;
    let md = format!(
        "# Probe: {suite}\n\n`pal probe --suite {suite}`\n\n![accuracy per row with its interval](probe.png)\n\nAccuracy: mean over seeds ± the half-width of its 95% interval (t). Against PLITS: \
         the mean difference in correctness on the same items and seeds ± its 95% interval; \"real\" when \
         the interval excludes 0.\n\n{table}"
    );
    std::fs::write(out.join("probe.md"), &md)?;
    Ok((rows, md))
}
