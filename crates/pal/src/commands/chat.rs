//! `pal chat --llm PATH [PROMPT]`: one answer, or an interactive multi-turn chat; with
//! `--model RUN_DIR --audio FILE`, a chat about one clip (encoded once, its LAL prefix kept).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pal_infer::{generate, ChatTemplate, Conversation, GenerationParams, Message};

/// Arguments of `pal chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// LLM: a Hugging Face folder or a .gguf file (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, conflicts_with = "model")]
    llm: Option<PathBuf>,
    /// Run folder of an audio-LLM (model.toml + adapter.safetensors); needs `--audio`.
    #[arg(long, requires = "audio")]
    model: Option<PathBuf>,
    /// The clip to talk about (wav, flac, ogg, mp3).
    #[arg(long, requires = "model")]
    audio: Option<PathBuf>,
    /// The prompt; without it, read turns from standard input until EOF.
    prompt: Option<String>,
    /// System message (default: the chat template's own, if any).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    weights: super::WeightsArg,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Sampling options shared by the generating commands.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// As generation parameters.
    pub fn params(&self) -> GenerationParams {
        GenerationParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.clone(),
        }
    }
}

/// Calls `answer` with the prompt, or with every non-empty line of standard input.
fn turns(
    prompt: Option<String>,
    mut answer: impl FnMut(String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match prompt {
        Some(prompt) => answer(prompt),
        None => {
            let stdin = std::io::stdin();
            eprint!("> ");
            for line in stdin.lock().lines() {
                let line = line?;
                if !line.trim().is_empty() {
                    answer(line)?;
                }
                eprint!("> ");
            }
            Ok(())
        }
    }
}

/// A chat about one clip with a trained audio-LLM.
fn run_audio(args: ChatArgs, model: PathBuf, audio: PathBuf) -> anyhow::Result<()> {
    let built = super::load_run(&model, args.weights, args.device)?;
    // Read and encoded as `pal ask` does (a long recording window by window).
    let (outputs, lal) = pal_infer::ask::encode_file(&built, &audio)?;
    let mut conversation =
        Conversation::from_encoded(&built.model, &built.tokenizer, outputs, lal)?;
    if let Some(system) = &args.system {
        conversation = conversation.with_system(system);
    }
    let params = args.sampling.params();
    turns(args.prompt, |text| {
        let mut out = std::io::stdout();
        conversation.say(&text, &params, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        println!();
        Ok(())
    })
}

/// Runs the chat.
pub fn run(mut args: ChatArgs) -> anyhow::Result<()> {
    if let (Some(model), Some(audio)) = (args.model.take(), args.audio.take()) {
        return run_audio(args, model, audio);
    }
    let path = super::resolve_llm(args.llm)?;
    let device = args.device.device.open()?;
    let dtype = args.device.precision().dtype;
    let (model, tokenizer, _) =
        pal_models::load_llm_held(&path, dtype, &device, args.weights.weights)
            .with_context(|| format!("loading the LLM from {}", path.display()))?;
    let template = ChatTemplate::for_tokenizer(&tokenizer)?;
    let params = args.sampling.params();
    let mut messages: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .collect();
    turns(args.prompt, |text| {
        messages.push(Message::new("user", text));
        let prompt = template.render(&messages, true)?;
        let ids = tokenizer.encode(&prompt)?;
        let mut out = std::io::stdout();
        let result = generate(&model, &tokenizer, &[ids], &params, |_, piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        println!();
        messages.push(Message::new("assistant", result[0].text.clone()));
        Ok(())
    })
}
