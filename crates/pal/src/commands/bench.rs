//! `pal bench ...`: benchmarks whose results are written to files (never timed tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use candle_core::Tensor;
use clap::{Args, Subcommand};
use serde_json::json;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of an LLM on the CPU (batch 1, greedy).
    Llm(LlmBenchArgs),
    /// Feature extraction and encoder throughput, in seconds of audio per second.
    Audio(AudioBenchArgs),
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

/// Arguments of `pal bench llm`.
#[derive(Args)]
pub struct LlmBenchArgs {
    /// LLM: folder or .gguf (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    llm: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decoded tokens per run.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Output prefix: writes PREFIX.json and PREFIX.md.
    #[arg(long, default_value = "docs/bench/llm")]
    out: PathBuf,
    /// A Python with torch + transformers: also run scripts/bench_llm_transformers.py on the same
    /// model and shapes, in this run, and report the ratio.
    #[arg(long)]
    compare_python: Option<PathBuf>,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Llm(args) => bench_llm(args),
        BenchCommand::Audio(args) => bench_audio(args),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_llm(args: LlmBenchArgs) -> anyhow::Result<()> {
    let path = super::resolve_llm(args.llm.clone())?;
    let (model, _tokenizer) = super::load_llm(&path)?;
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let ids = Tensor::from_vec(prompt, (1, args.prompt_tokens), model.device())?;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.repeats.max(1) {
        let mut cache = model.new_cache();
        let start = Instant::now();
        let hidden = model.forward_embeds(&model.embed(&ids)?, None, &mut cache)?;
        let logits = model.logits(&hidden.narrow(1, args.prompt_tokens - 1, 1)?)?;
        let mut next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        prefill.push(args.prompt_tokens as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..args.decode_tokens {
            let step = Tensor::new(&[[next]], model.device())?;
            let logits = model.forward(&step, None, &mut cache)?;
            next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        }
        decode.push(args.decode_tokens as f64 / start.elapsed().as_secs_f64());
    }
    let ours = json!({
        "prefill_tokens_per_s": median(prefill),
        "decode_tokens_per_s": median(decode),
    });
    let reference = match &args.compare_python {
        Some(python) => Some(run_transformers(python, &path, &args)?),
        None => None,
    };
    let result = json!({
        "model": path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "repeats": args.repeats,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "pal": ours,
        "transformers": reference,
    });
    write_llm_report(&args.out, &result)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

fn run_transformers(
    python: &Path,
    model: &Path,
    args: &LlmBenchArgs,
) -> anyhow::Result<serde_json::Value> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_llm_transformers.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
        .args(["--decode-tokens", &args.decode_tokens.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "the transformers benchmark failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("parsing the transformers result: {last}"))
}

fn write_llm_report(prefix: &Path, result: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json_path = prefix.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(result)?)?;
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
    let mut md = format!(
        "# LLM benchmark\n\nModel `{}`, batch 1, prompt {} tokens, decode {} tokens, median of {} runs, {} threads.\n\n| | prefill tokens/s | decode tokens/s |\n|---|---|---|\n",
        result["model"].as_str().unwrap_or(""),
        result["prompt_tokens"], result["decode_tokens"], result["repeats"], result["threads"]
    );
    for name in ["pal", "transformers"] {
        if let (Some(p), Some(d)) = (
            f(&result[name], "prefill_tokens_per_s"),
            f(&result[name], "decode_tokens_per_s"),
        ) {
            md.push_str(&format!("| {name} | {p:.1} | {d:.1} |\n"));
        }
    }
    if let (Some(pp), Some(pd), Some(tp), Some(td)) = (
        f(&result["pal"], "prefill_tokens_per_s"),
        f(&result["pal"], "decode_tokens_per_s"),
        f(&result["transformers"], "prefill_tokens_per_s"),
        f(&result["transformers"], "decode_tokens_per_s"),
    ) {
        md.push_str(&format!(
            "| pal / transformers | {:.2}x | {:.2}x |\n",
            pp / tp,
            pd / td
        ));
    }
    std::fs::write(prefix.with_extension("md"), md)?;
    Ok(())
}

/// Median seconds of `f` over `repeats` runs.
fn time_median(repeats: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn bench_audio(args: AudioBenchArgs) -> anyhow::Result<()> {
    use pal_audio::{KaldiFbank, WhisperMel, WindowType};
    use pal_models::encoder::{AudioEncoder, WhisperAudioEncoder};
    use pal_models::whisper::Whisper;

    let n = (args.seconds * 16000.0) as usize;
    // A deterministic, speech-like test signal (two glides and noise).
    let samples: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / 16000.0;
            0.3 * (2.0 * std::f32::consts::PI * (180.0 + 40.0 * t) * t).sin()
                + 0.1 * (2.0 * std::f32::consts::PI * 1200.0 * t).sin()
                + 0.02 * ((i as f32 * 12.9898).sin() * 43758.547).fract()
        })
        .collect();
    let folder = match &args.whisper {
        Some(p) => p.clone(),
        None => pal_models::assets::WHISPER_TINY_EN.dir(),
    };
    let whisper = Whisper::from_folder(
        &folder,
        false,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .with_context(|| format!("loading Whisper from {}", folder.display()))?;
    let mel = WhisperMel::new(whisper.config.num_mel_bins);
    let fbank = KaldiFbank::new(128, 16000, WindowType::Hanning);
    let mut encoder = WhisperAudioEncoder::new(
        whisper.encoder.clone(),
        whisper.config.num_mel_bins,
        "bench".into(),
    );
    let mut rows: Vec<(String, f64)> = vec![];
    let secs = args.seconds;
    rows.push((
        "whisper log-mel (real length)".into(),
        secs / time_median(args.repeats, || {
            mel.compute(&samples, false);
            Ok(())
        })?,
    ));
    rows.push((
        "kaldi fbank 128".into(),
        secs / time_median(args.repeats, || {
            fbank.compute(&samples);
            Ok(())
        })?,
    ));
    encoder.real_length = true;
    rows.push((
        "whisper encoder, real length (features included)".into(),
        secs / time_median(args.repeats, || {
            encoder.encode(&samples)?;
            Ok(())
        })?,
    ));
    encoder.real_length = false;
    rows.push((
        "whisper encoder, padded to 30 s (features included)".into(),
        secs / time_median(args.repeats, || {
            encoder.encode(&samples)?;
            Ok(())
        })?,
    ));
    let result = json!({
        "clip_seconds": secs,
        "repeats": args.repeats,
        "whisper": folder.file_name().map(|n| n.to_string_lossy().to_string()),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "audio_seconds_per_second": rows.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        args.out.with_extension("json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let mut md = format!(
        "# Audio front-end benchmark\n\n{secs} s clip, median of {} runs, {} threads, Whisper `{}`.\n\n| stage | seconds of audio per second |\n|---|---|\n",
        args.repeats, result["threads"], result["whisper"].as_str().unwrap_or("")
    );
    for (k, v) in &rows {
        md.push_str(&format!("| {k} | {v:.1} |\n"));
    }
    std::fs::write(args.out.with_extension("md"), md)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
