//! `pal demo`: the shipped adapter answers a question about each bundled clip
//! (`assets/clips/demo.jsonl`), with the expected answer next to each.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// The repository's bundled files, found from the source tree or the working directory.
fn bundled(relative: &str) -> PathBuf {
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    if from_source.exists() {
        from_source
    } else {
        PathBuf::from(relative)
    }
}

/// Arguments of `pal demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Run folder (default: the shipped adapter, adapters/smollm2-whisper-pal).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Manifest of clips, questions and expected answers (default: assets/clips/demo.jsonl).
    #[arg(long)]
    clips: Option<PathBuf>,
    #[command(flatten)]
    weights: super::WeightsArg,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Answers every clip's question and prints it next to the expected answer.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .unwrap_or_else(|| bundled("adapters/smollm2-whisper-pal"));
    let clips = args
        .clips
        .unwrap_or_else(|| bundled("assets/clips/demo.jsonl"));
    let built = super::load_run(&model, args.weights, args.device)
        .with_context(|| format!("loading {} (run `pal fetch` first)", model.display()))?;
    let records = pal_data::load_manifest(&clips, false)?.records;
    // Questions about more clips than the model takes are left out, and said to be.
    let takes = built.model.max_clips;
    let total = records.len();
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| r.too_many_clips(takes).is_none())
        .collect();
    let scratch = tempfile::tempdir()?;
    let manifest = if records.len() == total {
        clips.clone()
    } else {
        manifest_of(&records, scratch.path())?
    };
    let report = pal_eval::evaluate(&built, &manifest, 8, 64)?;
    let mut right = 0;
    for (item, record) in report.items.iter().zip(&records) {
        // Closed answers must match; a transcript is right within 25% word error rate.
        let wer = pal_eval::metrics::word_error_rate(&[(&item.reference, &item.answer)]);
        let ok = item.correct || (item.reference.split_whitespace().count() > 3 && wer <= 0.25);
        right += ok as usize;
        let clip = record
            .clips
            .iter()
            .filter_map(|c| c.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        println!("{clip}\n  Q: {}\n  A: {}", item.question, item.answer);
        println!(
            "  expected: {} [{}]\n",
            item.reference,
            if ok { "right" } else { "wrong" }
        );
    }
    println!("{right}/{} answers right", report.items.len());
    let left_out = total - records.len();
    if left_out > 0 {
        println!(
            "({left_out} question(s) about more clips than this model takes, {takes}, left out)"
        );
    }
    Ok(())
}

/// `records` written as a manifest in `dir`, their clips by absolute path (the manifest's
/// folder is not theirs).
fn manifest_of(records: &[pal_data::Record], dir: &Path) -> anyhow::Result<PathBuf> {
    let mut out = String::new();
    for record in records {
        let paths = record
            .clips
            .iter()
            .map(|c| std::path::absolute(c).map(|p| p.display().to_string()))
            .collect::<std::io::Result<Vec<String>>>()?;
        let audio = match paths.as_slice() {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        out.push_str(&serde_json::json!({"audio": audio, "messages": record.messages}).to_string());
        out.push('\n');
    }
    let path = dir.join("demo.jsonl");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
