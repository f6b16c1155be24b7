//! `pal encode --model MODEL.toml --manifest M.jsonl [--manifest ...] --out DIR`: a model's frozen
//! encoders over the manifests' clips, written as a feature shard set that `pal train` streams
//! (`shards = [...]` in a stage) and `pal eval --shards` reads. Run again after an interruption,
//! it continues where it stopped.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pal_data::encode_shards::{encode_to_shards, encoders_of, EncodeJob};
use pal_data::encoding::EncodeOptions;
use pal_models::formats::feature_shards::FeatureDtype;

/// Arguments of `pal encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// Model config (TOML) whose encoders to run, or a run folder holding `model.toml`.
    #[arg(long)]
    model: PathBuf,
    /// JSONL manifest(s), encoded in the order given.
    #[arg(long = "manifest", required = true)]
    manifests: Vec<PathBuf>,
    /// The shard set folder to write (or to continue).
    #[arg(long)]
    out: PathBuf,
    /// Storage dtype of the features: f16 (half the disk of f32), bf16 or f32 (exact).
    #[arg(long, default_value = "f16")]
    dtype: FeatureDtype,
    /// Shard size target in MB (a shard ends with the record that reaches it).
    #[arg(long, default_value_t = 256.0)]
    shard_mb: f64,
    /// Skip undecodable clips and bad manifest lines (each warned and counted in the index).
    #[arg(long)]
    skip_bad: bool,
    /// Threads that decode audio while the encoder runs (default: cores - 1).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// Most clips per encoder batch.
    #[arg(long, default_value_t = 64)]
    batch_clips: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Encodes, with a progress bar, and prints a summary.
pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    let (encoders, described) = encoders_of(&args.model)
        .with_context(|| format!("loading the encoders of {}", args.model.display()))?;
    let mut options = EncodeOptions {
        batch_clips: args.batch_clips.max(1),
        ..EncodeOptions::default()
    };
    if let Some(threads) = args.decode_threads {
        options.decode_threads = threads.max(1);
    }
    let job = EncodeJob {
        manifests: args.manifests.clone(),
        out: args.out.clone(),
        dtype: args.dtype,
        shard_bytes: (args.shard_mb * 1048576.0).max(1.0) as usize,
        skip_bad: args.skip_bad,
        options,
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "encode [{bar:30}] {pos}/{len} clips {per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let summary = encode_to_shards(&job, &encoders, described, |done, total, seconds| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{:.2} h of audio", seconds / 3600.0));
    })?;
    bar.finish_and_clear();
    let index = &summary.index;
    let tokens: Vec<String> = index
        .encoders
        .iter()
        .zip(&index.tokens)
        .map(|(e, t)| format!("{} {t}", e.name))
        .collect();
    println!(
        "{}: {} clips ({} encoded now at {:.1} clips/s, {} kept from before), {:.2} h of audio, tokens: {}, {} shards, {:.1} MB ({:?}), {} failures",
        args.out.display(),
        index.records,
        summary.encoded_now,
        summary.encoded_now as f64 / summary.elapsed_s.max(1e-9),
        summary.kept,
        index.seconds / 3600.0,
        tokens.join(", "),
        index.shards.len(),
        summary.bytes as f64 / 1e6,
        index.dtype,
        index.failures.len()
    );
    for f in &index.failures {
        println!("  skipped {}: {}", f.origin, f.error);
    }
    Ok(())
}
