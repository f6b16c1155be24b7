//! `pal`: the command-line front end. Each subcommand is a thin layer over the library crates.
//! The same front end runs inside the Python package (`python -m pal`), through [`run`].

mod commands;

use clap::{Parser, Subcommand};

/// Build, train, evaluate and serve audio-language models.
#[derive(Parser)]
#[command(name = "pal", version, about)]
struct Cli {
    /// Compute threads (default: every core). On a machine whose cores are shared with other
    /// work (a server's HTTP side and its clients, say), fewer threads can be faster: the
    /// threads of one computation wait for each other at every step.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// Sizes candle's compute pools (both read these variables once, when first used; no thread has
/// started yet). Child processes (`pal probe`'s cells) inherit them.
fn set_compute_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        let n = n.max(1).to_string();
        std::env::set_var("CANDLE_NUM_THREADS", &n);
        std::env::set_var("RAYON_NUM_THREADS", &n);
    }
}

#[derive(Subcommand)]
enum Command {
    /// Download the base models (SmolLM2-135M-Instruct, Whisper tiny.en) into the cache.
    Fetch(commands::fetch::FetchArgs),
    /// The shipped adapter answers a question about each bundled clip.
    Demo(commands::demo::DemoArgs),
    /// Ask a trained audio-LLM one question about one clip.
    Ask(commands::ask::AskArgs),
    /// Chat with an LLM: answer one prompt, or talk interactively when no prompt is given.
    Chat(commands::chat::ChatArgs),
    /// Build data manifests.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Run a model's frozen encoders over manifests into a feature shard set (resumable).
    Encode(commands::encode::EncodeArgs),
    /// Evaluate a trained model on a manifest or shard set (accuracy, WER, BLEU, CIDEr).
    Eval(commands::eval::EvalArgs),
    /// Compare encoders and integration modes: a grid of trained and evaluated cells, with
    /// confidence intervals and paired comparisons (resumable).
    Probe(commands::probe::ProbeArgs),
    /// Serve a trained audio-LLM over an OpenAI-compatible HTTP API.
    Serve(commands::serve::ServeArgs),
    /// Train an audio-LLM adapter from a curriculum file (resumable).
    Train(commands::train::TrainArgs),
    /// Write a run folder with an untrained adapter (for serving, benchmarks and plumbing
    /// before training).
    Init(commands::init::InitArgs),
    /// Transcribe audio files with Whisper (greedy, no timestamps).
    Transcribe(commands::transcribe::TranscribeArgs),
    /// Check that pal computes correctly on a device (ops, training steps, generation, against
    /// the CPU in f64).
    Selftest(commands::selftest::SelftestArgs),
    /// Benchmarks; results are written to files.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Keeps freed memory in the process for reuse instead of returning it to the kernel. Training
/// allocates and frees tensors of tens of MiB every step (LAL's all-layer projections are one
/// (layers, rows, d) tensor); by default glibc maps each allocation above 32 MiB afresh and the
/// kernel zeroes its pages again every step (a quarter of a LAL step's time, measured with perf).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    if std::env::var_os("PAL_DEFAULT_MALLOC").is_some_and(|v| !v.is_empty()) {
        return;
    }
    // SAFETY: mallopt only changes allocator tuning parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, pal_bench::MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, pal_bench::MALLOC_TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// How this front end runs itself again (`pal probe`'s cells): this program, unless the host
/// set another way ([`set_self_command`]).
static SELF_COMMAND: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Makes [`run`]'s child processes start with `command` (the Python package runs the command
/// line as `python -m pal`, where this process's executable is Python).
pub fn set_self_command(command: Vec<std::ffi::OsString>) {
    let _ = SELF_COMMAND.set(command);
}

/// The command that runs this front end again, ready for more arguments.
pub(crate) fn self_command() -> anyhow::Result<std::process::Command> {
    match SELF_COMMAND.get() {
        Some(parts) if !parts.is_empty() => {
            let mut cmd = std::process::Command::new(&parts[0]);
            cmd.args(&parts[1..]);
            Ok(cmd)
        }
        _ => Ok(std::process::Command::new(std::env::current_exe()?)),
    }
}

/// Runs the command line `args` (the first is the program's name): what `pal ARGS...` does.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    keep_freed_memory();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Help and version print and succeed; a usage error prints and fails (exit code 2).
        Err(e) => e.exit(),
    };
    set_compute_threads(cli.threads);
    match cli.command {
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Ask(args) => commands::ask::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Encode(args) => commands::encode::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Probe(args) => commands::probe::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Init(args) => commands::init::run(args),
        Command::Transcribe(args) => commands::transcribe::run(args),
        Command::Selftest(args) => commands::selftest::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
    }
}
