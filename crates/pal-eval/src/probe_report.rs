//! A probe's results written where `pal probe` and `pal.probe` put them: `probe.json` (rows and
//! cells), `probe.md` (the table) and `probe.png` (the plot), in the suite's results folder.

use std::path::Path;

use crate::probe::CellResult;
use crate::probe_table::{aggregate, markdown, Row};

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
        "# Probe: {suite}\n\n`pal probe --suite {suite}`\n\n![accuracy per row with its interval](probe.png)\n\n\
         A trained model is one sample: every figure takes the seed as its unit. Accuracy: a \
         cell's score on a split (its items' mean; word accuracy, 1 - WER at least 0, for \
         speech-words), as the mean over seeds with its 95% interval (Student's t over seeds, \
         clipped to 0-100%). The headline is the mean of splits, each split counted once. \
         Against PLITS: per seed, the mode's score minus PLITS's on the same items, its mean \
         over seeds with its 95% interval and the paired t test's two-sided p; \"real\" when \
         significant after Holm's correction over every comparison of the grid (family-wise \
         error 5%), \"undecided\" otherwise: with few seeds a difference can be the same sign \
         on every seed and still undecided.\n\n{table}"
    );
    std::fs::write(out.join("probe.md"), &md)?;
    Ok((rows, md))
}
