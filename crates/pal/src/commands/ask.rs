//! `pal ask --model RUN_DIR --audio FILE "question"`: one answer about one clip (or several:
//! `--audio` repeated, for a model whose config allows them).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::chat::SamplingArgs;

/// Arguments of `pal ask`.
#[derive(Args)]
pub struct AskArgs {
    /// Run folder (model.toml + adapter.safetensors), as `pal train` writes it.
    #[arg(long)]
    model: PathBuf,
    /// The clip (wav, flac, ogg, mp3); repeat for several clips, placed in order before the
    /// question (up to the model config's `max_clips`).
    #[arg(long, required = true)]
    audio: Vec<PathBuf>,
    /// The question.
    question: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    weights: super::WeightsArg,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Answers, streaming the text to stdout.
pub fn run(args: AskArgs) -> anyhow::Result<()> {
    let built = super::load_run(&args.model, args.weights, args.device)?;
    if args.audio.len() > built.model.max_clips {
        anyhow::bail!(
            "{} clips given; this model takes at most {} (max_clips in {})",
            args.audio.len(),
            built.model.max_clips,
            args.model.join("model.toml").display()
        );
    }
    let mut out = std::io::stdout();
    let mut print = |piece: &str| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    };
    let params = args.sampling.params();
    if let [path] = args.audio.as_slice() {
        // One clip: decoded and encoded as it is read, window by window (any length, in
        // bounded memory).
        let (audio, lal) = pal_infer::ask::encode_file(&built, path)?;
        pal_infer::ask::ask_encoded(&built, audio, &lal, &args.question, &params, &mut print)
            .with_context(|| format!("asking {}", args.model.display()))?;
        println!();
        return Ok(());
    }
    let mut clips = Vec::with_capacity(args.audio.len());
    for path in &args.audio {
        clips.push(
            pal_audio::load_audio(path)?
                .to_16k(&path.display().to_string())?
                .samples,
        );
    }
    pal_infer::ask::ask(&built, &clips, &args.question, &params, &mut print)
        .with_context(|| format!("asking {}", args.model.display()))?;
    println!();
    Ok(())
}
