//! `pal train --config CURRICULUM.toml [--resume]`: run a training curriculum.

use std::path::PathBuf;

use clap::Args;
use pal_train::{train, TrainOptions};

/// Arguments of `pal train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Curriculum file (TOML): model config, output folder, stages.
    #[arg(long)]
    config: PathBuf,
    /// Continue from the run folder's latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Skip bad manifest lines and undecodable clips (each warned, counted at the end).
    #[arg(long)]
    skip_bad: bool,
    /// Log lines instead of a progress bar.
    #[arg(long)]
    quiet: bool,
    /// Model config to use instead of the curriculum's `model` (compare modes on one curriculum).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Run folder to use instead of the curriculum's `output`.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Runs the curriculum.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let options = TrainOptions {
        resume: args.resume,
        skip_bad: args.skip_bad,
        quiet: args.quiet,
        model: args.model,
        output: args.output,
    };
    let start = std::time::Instant::now();
    let resumed = args.resume;
    let summary = train(&args.config, &options)?;
    // What this invocation cost, for comparing modes (`scripts/results.sh` reads it).
    let (peak_rss_bytes, _) = pal_train::metrics::memory_bytes();
    std::fs::write(
        summary.run_dir.join("train_summary.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "steps": summary.steps,
            "final_loss": summary.final_loss,
            "seconds": start.elapsed().as_secs_f64(),
            "peak_rss_bytes": peak_rss_bytes,
            "resumed": resumed,
        }))?,
    )?;
    println!(
        "trained {} steps, final loss {:.4}; adapter, configs, metrics.jsonl and loss.png in {}",
        summary.steps,
        summary.final_loss,
        summary.run_dir.display()
    );
    Ok(())
}
