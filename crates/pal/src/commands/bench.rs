//! `pal bench ...`: benchmarks whose results are written to files (never timed tests).

use std::path::PathBuf;
use std::process::Command;

use clap::{Args, Subcommand};
use pal_bench::audio::AudioBench;
use pal_bench::llm::{LlmBench, LlmChildJob};
use pal_bench::modes::{ChildJob, ModesBench, RandomShapes, Setup, Trainable};
use pal_bench::report::{with_suffix, write};

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of an LLM on the CPU (greedy), per weight form and batch size,
    /// optionally next to transformers and llama.cpp.
    Llm(LlmBenchArgs),
    /// Feature extraction and encoder throughput, in seconds of audio per second.
    Audio(AudioBenchArgs),
    /// Clips/s of encoding a manifest one clip at a time against `pal encode`'s batched path.
    Encode(EncodeBenchArgs),
    /// Training step (forward + backward, frozen backbone) of PLITS, LAL and PAL side by side,
    /// each in its own process (for peak memory), interleaved, next to the cost model.
    Modes(ModesBenchArgs),
    /// One question about recordings of 30 s to an hour, per model config: peak memory,
    /// encoding, first token and decoding, each in its own process, next to the cost model.
    LongAudio(LongAudioArgs),
}

/// Arguments of `pal bench long-audio`.
#[derive(Args, Clone)]
pub struct LongAudioArgs {
    /// The models, `label=config.toml`, comma-separated (each run untrained).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lal=configs/smollm2-whisper-lal-long.toml,lal-pool2=configs/long-audio/lal-pool2.toml,pal=configs/long-audio/pal.toml,plits=configs/long-audio/plits.toml"
    )]
    models: Vec<String>,
    /// Lengths of the recordings, in minutes.
    #[arg(long, value_delimiter = ',', default_value = "0.5,2,10,30,60")]
    minutes: Vec<f64>,
    /// Speech clips (16 kHz WAV) the recordings repeat.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "assets/clips/jfk_16k.wav,assets/clips/beckett_16k.wav"
    )]
    clips: Vec<PathBuf>,
    /// The question.
    #[arg(long, default_value = "What is said in the recording?")]
    question: String,
    /// Tokens decoded per answer (greedy).
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Output prefix: writes PREFIX.json, PREFIX.md and PREFIX.png.
    #[arg(long, default_value = "docs/bench/long-audio")]
    out: PathBuf,
    /// Internal: run one measurement (a JSON job) and print its result as one JSON line.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// Arguments of `pal bench modes`.
#[derive(Args, Clone)]
pub struct ModesBenchArgs {
    /// LLM file or folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, conflicts_with = "shapes")]
    llm: Option<PathBuf>,
    /// Instead of a real LLM, random weights with these shapes: `llama-3.2-1b`, `smollm2-135m`.
    #[arg(long)]
    shapes: Option<RandomShapes>,
    /// Encoder tokens per clip; several (comma-separated) make a sweep and a plot.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    audio_tokens: Vec<usize>,
    /// Text tokens per example (all trained).
    #[arg(long, default_value_t = 64)]
    text_tokens: usize,
    /// Examples per training batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Encoder width (384 = Whisper tiny).
    #[arg(long, default_value_t = 384)]
    d_enc: usize,
    /// First LAL layer (LAL and PAL); 0 puts audio keys/values in every layer.
    #[arg(long, default_value_t = 0)]
    lal_start: usize,
    /// PAL's latent summary tokens.
    #[arg(long, default_value_t = 16)]
    summary: usize,
    /// What trains: `adapter` (frozen LLM) or `lora` (adapter + rank-8 LoRA on q/v projections);
    /// empty skips training.
    #[arg(long, value_delimiter = ',', default_value = "adapter")]
    trainable: Vec<String>,
    /// Inference batch sizes (prefill latency, decode tokens/s, samples/s); empty skips inference.
    #[arg(long, value_delimiter = ',')]
    infer_batches: Vec<usize>,
    /// Tokens decoded per inference run.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    /// Rounds; each round runs every measurement once, each in its own process.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed steps per process (after one warm-up step).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Output prefix: writes PREFIX.json, PREFIX.md and (for a sweep) PREFIX.png.
    #[arg(long, default_value = "docs/bench/modes")]
    out: PathBuf,
    /// A Python with torch: also time scripts/bench_modes_torch.py (PLITS and LAL training steps,
    /// same shapes), interleaved in the same rounds.
    #[arg(long)]
    compare_python: Option<PathBuf>,
    /// Internal: run one measurement (a JSON job, see `pal_bench::modes`) and print its result
    /// as one JSON line.
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Where pal (and the PyTorch reference's timings) run, and the frozen LLM's type.
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Arguments of `pal bench audio`.
#[derive(Args)]
pub struct AudioBenchArgs {
    /// Whisper folder (default: the fetched Whisper tiny.en).
    #[arg(long)]
    whisper: Option<PathBuf>,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Output prefix: writes PREFIX.json and PREFIX.md.
    #[arg(long, default_value = "docs/bench/audio")]
    out: PathBuf,
}

/// Arguments of `pal bench encode`.
#[derive(Args)]
pub struct EncodeBenchArgs {
    /// Model config whose encoders run.
    #[arg(long, default_value = "configs/smollm2-whisper-lal.toml")]
    model: PathBuf,
    /// Manifest of the clips (FSDD train: `pal data shared`).
    #[arg(long)]
    manifest: PathBuf,
    /// Passes of each path, alternating; the median is reported.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Decoding threads of the batched path (default: cores - 1).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// Output prefix: writes PREFIX.json and PREFIX.md.
    #[arg(long, default_value = "docs/bench/encode")]
    out: PathBuf,
}

/// Arguments of `pal bench llm`.
#[derive(Args)]
pub struct LlmBenchArgs {
    /// LLM: folder or .gguf (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    llm: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decoded tokens per sequence and run.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Runs per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Batch sizes (sequences decoded together).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batches: Vec<usize>,
    /// pal's weight forms to measure (auto, f32, quantized).
    #[arg(long, value_delimiter = ',', default_value = "f32,auto,quantized")]
    weights: Vec<pal_models::WeightForm>,
    /// Output prefix: writes PREFIX.json and PREFIX.md.
    #[arg(long, default_value = "docs/bench/llm")]
    out: PathBuf,
    /// A Python with torch + transformers: also run scripts/bench_llm_transformers.py on the same
    /// model and shapes, in this run.
    #[arg(long)]
    compare_python: Option<PathBuf>,
    /// A Python with llama-cpp-python: also run scripts/bench_llm_llamacpp.py on the same GGUF,
    /// shapes and threads, in this run.
    #[arg(long)]
    llama_cpp_python: Option<PathBuf>,
    /// Internal: run one measurement (a JSON job) and print its result as one JSON line.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// Runs a benchmark and prints its report.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Llm(args) => match &args.child {
            Some(job) => {
                let job: LlmChildJob = serde_json::from_str(job)?;
                let result = pal_bench::llm::run_child(&job)?;
                println!("{}", serde_json::to_string(&result)?);
            }
            None => {
                let bench = LlmBench {
                    llm: args.llm,
                    prompt_tokens: args.prompt_tokens,
                    decode_tokens: args.decode_tokens,
                    repeats: args.repeats,
                    batches: args.batches,
                    forms: args.weights,
                    transformers_python: args.compare_python,
                    llama_cpp_python: args.llama_cpp_python,
                };
                let exe = std::env::current_exe()?;
                let launch = |job: &LlmChildJob| {
                    let mut cmd = Command::new(&exe);
                    let job = serde_json::to_string(job).expect("a job serializes");
                    cmd.args(["bench", "llm", "--child", &job]);
                    cmd
                };
                let report = bench.run(&launch, command_line())?;
                write(&args.out, &report, &report.markdown())?;
                println!("{}", report.markdown());
            }
        },
        BenchCommand::Audio(args) => {
            let report = AudioBench {
                whisper: args.whisper,
                seconds: args.seconds,
                repeats: args.repeats,
            }
            .run()?;
            write(&args.out, &report, &report.markdown(&command_line()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        BenchCommand::Encode(args) => {
            let mut options = pal_data::encoding::EncodeOptions::default();
            if let Some(threads) = args.decode_threads {
                options.decode_threads = threads.max(1);
            }
            let report = pal_bench::encode::EncodeBench {
                model: args.model,
                manifest: args.manifest,
                repeats: args.repeats,
                options,
            }
            .run()?;
            let markdown = report.markdown(&command_line());
            write(&args.out, &report, &markdown)?;
            println!("{markdown}");
        }
        BenchCommand::Modes(args) => match &args.child {
            Some(job) => {
                let job: ChildJob = serde_json::from_str(job)?;
                let result = pal_bench::modes::run_child(&job)?;
                println!("{}", serde_json::to_string(&result)?);
            }
            None => modes(args)?,
        },
        BenchCommand::LongAudio(args) => match &args.child {
            Some(job) => {
                let job: pal_bench::long_audio::LongAudioJob = serde_json::from_str(job)?;
                let result = pal_bench::long_audio::run_child(&job)?;
                println!("{}", serde_json::to_string(&result)?);
            }
            None => {
                let models = args
                    .models
                    .iter()
                    .map(|m| match m.split_once('=') {
                        Some((label, path)) => Ok((label.to_string(), PathBuf::from(path))),
                        None => anyhow::bail!("--models takes label=config.toml, not {m:?}"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let bench = pal_bench::long_audio::LongAudioBench {
                    models,
                    minutes: args.minutes,
                    clips: args.clips,
                    question: args.question,
                    max_tokens: args.max_tokens,
                };
                let exe = std::env::current_exe()?;
                let launch = |job: &pal_bench::long_audio::LongAudioJob| {
                    let mut cmd = Command::new(&exe);
                    let job = serde_json::to_string(job).expect("a job serializes");
                    cmd.args(["bench", "long-audio", "--child", &job]);
                    cmd
                };
                let report = bench.run(&launch, command_line())?;
                let plot = with_suffix(&args.out, "png");
                let name = plot.file_name().map(|n| n.to_string_lossy().to_string());
                let markdown = pal_bench::long_audio::markdown(&report, &name.unwrap_or_default());
                write(&args.out, &report, &markdown)?;
                pal_bench::long_audio::draw(&report, &plot)?;
                println!("{markdown}");
            }
        },
    }
    Ok(())
}

fn modes(args: ModesBenchArgs) -> anyhow::Result<()> {
    let trainable = args
        .trainable
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| t.parse())
        .collect::<anyhow::Result<Vec<Trainable>>>()?;
    let bench = ModesBench {
        setup: Setup {
            llm: args.llm,
            shapes: args.shapes,
            text_tokens: args.text_tokens,
            batch: args.batch,
            d_enc: args.d_enc,
            lal_start: args.lal_start,
            summary: args.summary,
            steps: args.steps,
            decode_tokens: args.decode_tokens,
            device: args.device.device,
            dtype: args.device.dtype,
        },
        audio_tokens: args.audio_tokens,
        trainable,
        infer_batches: args.infer_batches,
        rounds: args.rounds,
        compare_python: args.compare_python,
        command: command_line(),
    };
    let exe = std::env::current_exe()?;
    let launch = |job: &ChildJob| {
        let mut cmd = Command::new(&exe);
        let job = serde_json::to_string(job).expect("a job serializes");
        cmd.args(["bench", "modes", "--child", &job]);
        cmd
    };
    let report = bench.run(&launch)?;
    write(&args.out, &report, &report.markdown())?;
    if bench.audio_tokens.len() > 1 && bench.trainable.contains(&Trainable::Adapter) {
        pal_bench::modes::plot::draw(&report, &with_suffix(&args.out, "png"))?;
    }
    println!("{}", report.markdown());
    Ok(())
}

/// This process's command line, for a report: as a shell would take it back (empty and
/// unusual words quoted), with the home folder written `~` (a report names no machine's paths).
fn command_line() -> String {
    let home = std::env::var("HOME").ok().filter(|h| h.len() > 1);
    let words: Vec<String> = std::env::args()
        .skip(1)
        .map(|word| {
            let word = match &home {
                Some(h) if word.starts_with(&format!("{h}/")) => format!("~{}", &word[h.len()..]),
                _ => word,
            };
            shell_word(word)
        })
        .collect();
    format!("pal {}", words.join(" "))
}

/// `word` as one shell word: as it is when it needs no quoting, else in single quotes.
fn shell_word(word: String) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c);
    let home_path = word.starts_with("~/") && word[1..].chars().all(plain);
    if !word.is_empty() && (word.chars().all(plain) || home_path) {
        word
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
