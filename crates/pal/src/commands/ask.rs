//! `pal ask --model RUN_DIR --audio FILE "question"`: one answer about one clip.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pal_infer::{generate_with_audio, ChatTemplate, Message};
use pal_models::audio_llm::Example;

use super::chat::SamplingArgs;

/// Arguments of `pal ask`.
#[derive(Args)]
pub struct AskArgs {
    /// Run folder (model.toml + adapter.safetensors), as `pal train` writes it.
    #[arg(long)]
    model: PathBuf,
    /// The clip (wav, flac, ogg, mp3).
    #[arg(long)]
    audio: PathBuf,
    /// The question.
    question: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    weights: super::WeightsArg,
}

/// Answers, streaming the text to stdout.
pub fn run(args: AskArgs) -> anyhow::Result<()> {
    let built = super::load_run(&args.model, args.weights)?;
    let audio = pal_audio::load_audio(&args.audio)?.to_16k(&args.audio.display().to_string())?;
    let outputs = built
        .encode_clip(&audio.samples)
        .with_context(|| format!("encoding {}", args.audio.display()))?;
    let template = ChatTemplate::for_tokenizer(&built.tokenizer)?;
    let segments = pal_models::text::segments::prompt_segments(
        &template,
        &built.tokenizer,
        &[Message::new("user", args.question)],
    )?;
    let mut out = std::io::stdout();
    generate_with_audio(
        &built.model,
        &built.tokenizer,
        &[Example {
            segments,
            audio: outputs,
        }],
        &args.sampling.params(),
        |_, piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        },
    )?;
    println!();
    Ok(())
}
