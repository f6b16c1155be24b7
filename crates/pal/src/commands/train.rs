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
}

/// Runs the curriculum.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let options = TrainOptions {
        resume: args.resume,
        skip_bad: args.skip_bad,
        quiet: args.quiet,
    };
    let summary = train(&args.config, &options)?;
    println!(
        "trained {} steps, final loss {:.4}; adapter, configs, metrics.jsonl and loss.png in {}",
        summary.steps,
        summary.final_loss,
        summary.run_dir.display()
    );
    Ok(())
}
