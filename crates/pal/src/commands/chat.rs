//! `pal chat --llm PATH [PROMPT]`: one answer, or an interactive multi-turn chat.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Args;
use pal_infer::{generate, ChatTemplate, GenerationParams, Message};

/// Arguments of `pal chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// LLM: a Hugging Face folder or a .gguf file (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    llm: Option<PathBuf>,
    /// The prompt; without it, read turns from standard input until EOF.
    prompt: Option<String>,
    /// System message (default: the chat template's own, if any).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
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

/// Runs the chat.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let path = super::resolve_llm(args.llm)?;
    let (model, tokenizer) = super::load_llm(&path)?;
    let template = ChatTemplate::for_tokenizer(&tokenizer)?;
    let params = args.sampling.params();
    let mut messages: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .collect();
    let answer = |messages: &mut Vec<Message>, text: String| -> anyhow::Result<()> {
        messages.push(Message::new("user", text));
        let prompt = template.render(messages, true)?;
        let ids = tokenizer.encode(&prompt)?;
        let mut out = std::io::stdout();
        let result = generate(&model, &tokenizer, &[ids], &params, |_, piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        println!();
        messages.push(Message::new("assistant", result[0].text.clone()));
        Ok(())
    };
    match args.prompt {
        Some(prompt) => answer(&mut messages, prompt),
        None => {
            let stdin = std::io::stdin();
            eprint!("> ");
            for line in stdin.lock().lines() {
                let line = line?;
                if !line.trim().is_empty() {
                    answer(&mut messages, line)?;
                }
                eprint!("> ");
            }
            Ok(())
        }
    }
}
