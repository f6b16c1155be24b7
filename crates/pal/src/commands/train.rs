//! `pal train --config CURRICULUM.toml [--resume]`: run a training curriculum; under `mpirun -np N`
//! or `srun` (a build with `--features mpi`), as N data-parallel ranks.

use std::path::PathBuf;

use clap::Args;
use pal_train::{train_ranks, TrainOptions};

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
    /// Seed of the batch order instead of the curriculum's `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// Cache the frozen encoders' outputs in this folder instead of the run folder's `cache/`
    /// (shared by runs over the same clips).
    #[arg(long)]
    encoder_cache: Option<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Runs the curriculum.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let options = TrainOptions {
        resume: args.resume,
        skip_bad: args.skip_bad,
        quiet: args.quiet,
        model: args.model,
        output: args.output,
        seed: args.seed,
        encoder_cache: args.encoder_cache,
        device: args.device.device,
        dtype: args.device.dtype,
        on_step: None,
    };
    let start = std::time::Instant::now();
    let resumed = args.resume;
    // Under `mpirun`/`srun` (a build with `--features mpi`) this process is one rank of the job.
    let ranks = pal_train::distributed::from_launcher(options.device)?;
    if ranks.rank() == 0 && !options.quiet && (ranks.size() > 1 || ranks.sums_single_rank()) {
        eprintln!(
            "data-parallel training: {} rank(s), gradients summed by {}",
            ranks.size(),
            ranks.engine()
        );
    }
    if ranks.rank() == 0 && !options.quiet {
        eprintln!(
            "computing in {}",
            options.dtype.precision(options.device).describe()
        );
    }
    let summary = match train_ranks(&args.config, &options, ranks.as_ref()) {
        Ok(summary) => summary,
        Err(e) if ranks.size() > 1 => {
            // One rank's error ends the whole job instead of leaving the others waiting.
            eprintln!("Error on rank {} of {}: {e:#}", ranks.rank(), ranks.size());
            ranks.abort(1)
        }
        Err(e) => return Err(e.into()),
    };
    if ranks.rank() > 0 {
        return Ok(());
    }
    summary.write(
        start.elapsed().as_secs_f64(),
        resumed,
        ranks.size(),
        ranks.engine(),
    )?;
    println!(
        "trained {} steps, final loss {:.4}; adapter, configs, metrics.jsonl and loss.png in {}",
        summary.steps,
        summary.final_loss,
        summary.run_dir.display()
    );
    Ok(())
}
