//! `pal`: the command-line front end. Each subcommand is a thin layer over the library crates.

mod commands;

use clap::{Parser, Subcommand};

/// Build, train, evaluate and serve audio-language models.
#[derive(Parser)]
#[command(name = "pal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the base models (SmolLM2-135M-Instruct, Whisper tiny.en) into the cache.
    Fetch(commands::fetch::FetchArgs),
    /// Ask a trained audio-LLM one question about one clip.
    Ask(commands::ask::AskArgs),
    /// Chat with an LLM: answer one prompt, or talk interactively when no prompt is given.
    Chat(commands::chat::ChatArgs),
    /// Build data manifests.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Evaluate a trained model on a manifest (accuracy of closed answers).
    Eval(commands::eval::EvalArgs),
    /// Serve a trained audio-LLM over an OpenAI-compatible HTTP API.
    Serve(commands::serve::ServeArgs),
    /// Train an audio-LLM adapter from a curriculum file (resumable).
    Train(commands::train::TrainArgs),
    /// Transcribe audio files with Whisper (greedy, no timestamps).
    Transcribe(commands::transcribe::TranscribeArgs),
    /// Benchmarks; results are written to files.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Ask(args) => commands::ask::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Eval(args) => commands::eval::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Transcribe(args) => commands::transcribe::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
    }
}
