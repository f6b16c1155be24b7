//! `pal probe --suite SUITE.toml`: compare encoders and integration modes by what the frozen LLM
//! can do with their features (a grid of cells trained and evaluated in child processes,
//! resumable), then write `probe.json` and `probe.md` in the suite's output folder.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `pal probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// The suite (TOML): encoders, modes, seeds, splits, sweeps; see `crates/pal-eval/src/probe.rs`.
    #[arg(long)]
    suite: PathBuf,
    /// Also write the markdown report here (for example `docs/probe.md`).
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs the cells not done yet, aggregates all, and writes the results.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let pal = |a: &[String]| {
        let mut cmd = Command::new(&exe);
        cmd.args(a);
        cmd
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("probe [{bar:30}] {pos}/{len} cells eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let (out, results) = pal_eval::probe::run(&args.suite, &pal, |done, total, cell| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{} {:?} seed {}", cell.row, cell.mode, cell.seed));
    })?;
    bar.finish_and_clear();
    let rows = pal_eval::probe::aggregate(&results);
    let table = pal_eval::probe::markdown(&rows);
    pal_eval::probe_plot::plot(&rows, &out.join("probe.png"))?;
    std::fs::write(
        out.join("probe.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "rows": rows, "cells": results }))?,
    )?;
    let md = format!(
        "# Probe: {}\n\n`pal probe --suite {}`\n\n![accuracy per row with its interval](probe.png)\n\nAccuracy: mean over seeds ± the half-width of its 95% interval (t). Against PLITS: \
         the mean difference in correctness on the same items and seeds ± its 95% interval; \"real\" when \
         the interval excludes 0.\n\n{table}",
        args.suite.display(),
        args.suite.display()
    );
    std::fs::write(out.join("probe.md"), &md)?;
    if let Some(report) = &args.report {
        std::fs::write(report, &md)?;
        std::fs::copy(out.join("probe.png"), report.with_file_name("probe.png"))?;
    }
    println!("{table}");
    Ok(())
}
