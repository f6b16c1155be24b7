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
    let kept: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].clips.len() <= takes)
        .collect();
    let scratch = tempfile::tempdir()?;
    let manifest = if kept.len() == records.len() {
        clips.clone()
    } else {
        taken_only(&clips, &records, &kept, scratch.path())?
    };
    let records: Vec<_> = kept.iter().map(|&i| &records[i]).collect();
    let report = pal_eval::evaluate(&built, &manifest, 8, 64)?;
    let mut right = 0;
    for (item, record) in report.items.iter().zip(records) {
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
    let left_out = records_total(&clips)? - report.items.len();
    if left_out > 0 {
        println!(
            "({left_out} question(s) about more clips than this model takes, {takes}, left out)"
        );
    }
    Ok(())
}

/// Non-empty lines of a manifest.
fn records_total(manifest: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

/// A copy of `manifest` in `dir` holding only the examples `kept` (indices of `records`, the
/// manifest's examples in order), their clips by absolute path.
fn taken_only(
    manifest: &Path,
    records: &[pal_data::Record],
    kept: &[usize],
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = String::new();
    for &i in kept {
        let mut example: serde_json::Value = serde_json::from_str(lines[i])
            .with_context(|| format!("{}: line {}", manifest.display(), i + 1))?;
        let paths: Vec<String> = records[i]
            .clips
            .iter()
            .map(|c| c.display().to_string())
            .collect();
        example["audio"] = match paths.as_slice() {
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        out.push_str(&example.to_string());
        out.push('\n');
    }
    let path = dir.join("demo.jsonl");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
