//! `pal transcribe --whisper PATH FILE`: greedy Whisper transcription (no timestamps).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Args;
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};

/// Arguments of `pal transcribe`.
#[derive(Args)]
pub struct TranscribeArgs {
    /// Whisper model folder: Hugging Face (config.json + safetensors) or CTranslate2 (model.bin).
    /// Default: the fetched Whisper tiny.en.
    #[arg(long)]
    whisper: Option<PathBuf>,
    /// Language of multilingual models.
    #[arg(long, default_value = "en")]
    language: String,
    /// Audio files (wav, flac, ogg, mp3).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Prints the transcript of each file.
pub fn run(args: TranscribeArgs) -> anyhow::Result<()> {
    let folder = match args.whisper {
        Some(p) => p,
        None => {
            anyhow::ensure!(
                pal_assets::WHISPER_TINY_EN.is_present(),
                "no --whisper given and Whisper tiny.en is not fetched: run `pal fetch`"
            );
            pal_assets::WHISPER_TINY_EN.dir()
        }
    };
    let model = Whisper::from_folder(&folder, true, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading Whisper from {}", folder.display()))?;
    let tokenizer = WhisperTokenizer::from_folder(&folder, &model.config, &args.language)?;
    for file in &args.files {
        let audio = pal_audio::load_audio(file)?;
        let audio = audio.to_16k(&file.display().to_string())?;
        let text = pal_infer::transcribe(&model, &tokenizer, &audio.samples)?;
        if args.files.len() > 1 {
            println!("{}\t{}", file.display(), text);
        } else {
            println!("{text}");
        }
    }
    Ok(())
}
