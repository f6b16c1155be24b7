//! `pal eval --model RUN_DIR --manifest FILE|--shards DIR [--json OUT]`: accuracy (closed answers), WER
//! (transcripts), BLEU-4 and CIDEr-D (captions) of a trained model on a manifest.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Arguments of `pal eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Run folder (model.toml + adapter.safetensors), as `pal train` writes it.
    #[arg(long)]
    model: PathBuf,
    /// JSONL manifest to evaluate on...
    #[arg(long, required_unless_present = "shards", conflicts_with = "shards")]
    manifest: Option<PathBuf>,
    /// ...or a feature shard set (`pal encode`; the only way for an external encoder).
    #[arg(long)]
    shards: Option<PathBuf>,
    /// Write the per-item results here (JSONL) and the summary next to it (.summary.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Examples per generation batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// Closed answers by scoring every label's log-likelihood instead of generating.
    #[arg(long)]
    loglik: bool,
    /// Word list for the well-formedness of answers (one word per line); default
    /// `/usr/share/dict/words` (Debian: `apt-get install wamerican`), skipped when absent.
    #[arg(long)]
    words: Option<PathBuf>,
    #[command(flatten)]
    weights: super::WeightsArg,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Evaluates and prints the summary.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let built = super::load_run(&args.model, args.weights, args.device)?;
    let scoring = if args.loglik {
        pal_eval::Scoring::LogLikelihood
    } else {
        pal_eval::Scoring::Generate
    };
    let data = match (args.manifest, args.shards) {
        (Some(m), _) => pal_eval::EvalData::Manifest(m),
        (None, Some(s)) => pal_eval::EvalData::Shards(s),
        (None, None) => unreachable!("clap requires one"),
    };
    let words = match pal_eval::wellformed::WordList::load_or_system(args.words.as_deref()) {
        Ok(w) => Some(w),
        // A list that was asked for must load; the system's is optional.
        Err(e) if args.words.is_some() => return Err(e),
        Err(e) => {
            eprintln!("note: well-formedness not judged: {e}");
            None
        }
    };
    let report = pal_eval::evaluate_with(
        &built,
        &data,
        args.batch,
        args.max_tokens,
        scoring,
        words.as_ref(),
    )?;
    if let Some(path) = &args.json {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        for item in &report.items {
            writeln!(f, "{}", serde_json::to_string(item)?)?;
        }
        let summary = report.summary(&data);
        std::fs::write(
            path.with_extension("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
    }
    println!(
        "| data | examples | accuracy | WER | BLEU-4 | CIDEr-D | well-formed |\n|---|---|---|---|---|---|---|"
    );
    let well_formed = report
        .well_formed
        .map_or("-".to_string(), |w| format!("{:.1}%", 100.0 * w));
    println!(
        "| {} | {} | {:.2}% ({}/{}) | {:.2}% | {:.2} | {:.3} | {} |",
        data,
        report.total,
        100.0 * report.accuracy,
        report.correct,
        report.total,
        100.0 * report.wer,
        100.0 * report.bleu4,
        report.cider_d,
        well_formed
    );
    if report.judged_by != "labels" {
        println!("answers judged right by {}", report.judged_by);
    }
    Ok(())
}
