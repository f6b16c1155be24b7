//! `pal init --config MODEL_TOML --out RUN_DIR`: a run folder with an untrained adapter.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pal_models::audio_llm::{write_untrained_run, ModelConfig};

/// Arguments of `pal init`.
#[derive(Args)]
pub struct InitArgs {
    /// Model config (a model.toml, such as configs/smollm2-whisper-lal.toml).
    #[arg(long)]
    config: PathBuf,
    /// Run folder to write (model.toml + adapter.safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// Writes the run folder: the config with absolute paths and a freshly initialised adapter.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let config = ModelConfig::load(&args.config)?;
    let base = args
        .config
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    write_untrained_run(&config, &base, &args.out)
        .with_context(|| format!("writing the run folder {}", args.out.display()))?;
    eprintln!(
        "wrote {} with an untrained adapter: it serves and benchmarks like a trained one, but its answers mean nothing until it is trained",
        args.out.display()
    );
    Ok(())
}
