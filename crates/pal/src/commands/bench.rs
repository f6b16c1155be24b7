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
    /// Training step (forward + backward, frozen backbone) of PLITS, LAL and PAL side by side,
    /// each in its own process (for peak memory), interleaved, next to the cost model.
    Modes(ModesBenchArgs),
}

/// Arguments of `pal bench modes`.
#[derive(Args, Clone)]
pub struct ModesBenchArgs {
    /// LLM (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    llm: Option<PathBuf>,
    /// Encoder tokens per clip.
    #[arg(long, default_value_t = 256)]
    audio_tokens: usize,
    /// Text tokens per example (all trained).
    #[arg(long, default_value_t = 64)]
    text_tokens: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Encoder width (384 = Whisper tiny).
    #[arg(long, default_value_t = 384)]
    d_enc: usize,
    /// Rounds; each round runs every mode once, in its own process.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed steps per process (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Output prefix: writes PREFIX.json and PREFIX.md.
    #[arg(long, default_value = "docs/bench/modes")]
    out: PathBuf,
    /// Internal: run one mode and print its measurements as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
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
        BenchCommand::Modes(args) => match args.child.clone() {
            Some(mode) => modes_child(&args, &mode),
            None => bench_modes(args),
        },
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

fn parse_route(mode: &str) -> anyhow::Result<pal_models::audio_llm::Route> {
    use pal_models::audio_llm::Route;
    Ok(match mode {
        "plits" => Route::Plits,
        "lal" => Route::Lal,
        "pal" => Route::Pal,
        other => anyhow::bail!("unknown mode {other}"),
    })
}

/// Peak and current resident memory of this process, in bytes (Linux `/proc`).
fn memory_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn modes_child(args: &ModesBenchArgs, mode: &str) -> anyhow::Result<()> {
    use pal_models::audio_llm::{Attachment, AudioLlm, Example, Padding, Segment};
    let route = parse_route(mode)?;
    let path = super::resolve_llm(args.llm.clone())?;
    let (llm, _) = super::load_llm(&path)?;
    let params = pal_nn::Params::new(0, candle_core::DType::F32, &candle_core::Device::Cpu);
    let model = AudioLlm::new(llm, &[Attachment::new("audio", args.d_enc, route)], &params)?;
    let vocab = model.llm.config.vocab_size;
    let examples: Vec<Example> = (0..args.batch)
        .map(|i| {
            let frames = pal_nn::gradcheck::pseudo_random(args.audio_tokens * args.d_enc, i as u64);
            let audio = Tensor::from_vec(
                frames,
                (args.audio_tokens, args.d_enc),
                &candle_core::Device::Cpu,
            )?
            .to_dtype(candle_core::DType::F32)?;
            let ids: Vec<u32> = (0..args.text_tokens)
                .map(|t| ((t * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect();
            Ok(Example {
                segments: vec![Segment::Audio, Segment::Text { ids, trained: true }],
                audio: vec![audio],
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let (_, rss_before) = memory_bytes();
    let mut times = vec![];
    for step in 0..=args.steps {
        let start = Instant::now();
        let mut batch = model.prepare(&examples, Padding::Right)?;
        let (loss, _) = model.loss(&mut batch)?;
        let grads = loss.backward()?;
        drop(grads);
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let (peak, _) = memory_bytes();
    println!(
        "{}",
        json!({"mode": mode, "step_seconds": median(times), "peak_rss_bytes": peak, "rss_before_steps_bytes": rss_before})
    );
    Ok(())
}

fn bench_modes(args: ModesBenchArgs) -> anyhow::Result<()> {
    use pal_models::cost::{cost, CostMode, Shapes};
    let modes = ["plits", "lal", "pal"];
    let exe = std::env::current_exe()?;
    let mut results: std::collections::BTreeMap<&str, Vec<serde_json::Value>> = Default::default();
    for round in 0..args.rounds.max(1) {
        for mode in modes {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "modes", "--child", mode])
                .args(["--audio-tokens", &args.audio_tokens.to_string()])
                .args(["--text-tokens", &args.text_tokens.to_string()])
                .args(["--batch", &args.batch.to_string()])
                .args(["--d-enc", &args.d_enc.to_string()])
                .args(["--steps", &args.steps.to_string()]);
            if let Some(llm) = &args.llm {
                cmd.arg("--llm").arg(llm);
            }
            let out = cmd.output()?;
            anyhow::ensure!(
                out.status.success(),
                "{mode} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(line.trim())?;
            eprintln!(
                "round {round} {mode}: {:.3} s/step",
                v["step_seconds"].as_f64().unwrap_or(0.0)
            );
            results.entry(mode).or_default().push(v);
        }
    }
    let path = super::resolve_llm(args.llm.clone())?;
    let (llm, _) = super::load_llm(&path)?;
    let shapes = Shapes {
        batch: args.batch,
        audio_tokens: args.audio_tokens,
        text_tokens: args.text_tokens,
        d_enc: args.d_enc,
    };
    let layers = llm.config.num_hidden_layers;
    let predicted = |mode: &str| match mode {
        "plits" => cost(&llm.config, CostMode::Plits { stack: 1 }, shapes, 4),
        "lal" => cost(&llm.config, CostMode::Lal { layers }, shapes, 4),
        _ => cost(
            &llm.config,
            CostMode::Pal {
                layers,
                summary: 32,
            },
            shapes,
            4,
        ),
    };
    let summary: Vec<serde_json::Value> = modes
        .iter()
        .map(|m| {
            let runs = &results[m];
            let step = median(runs.iter().filter_map(|r| r["step_seconds"].as_f64()).collect());
            let peak = median(runs.iter().filter_map(|r| r["peak_rss_bytes"].as_f64()).collect());
            let base = median(runs.iter().filter_map(|r| r["rss_before_steps_bytes"].as_f64()).collect());
            let c = predicted(m);
            json!({
                "mode": m, "step_seconds": step, "samples_per_second": args.batch as f64 / step,
                "peak_rss_bytes": peak, "step_memory_bytes": peak - base,
                "predicted_train_flops": c.train_flops(), "predicted_activation_bytes": c.activation_bytes,
            })
        })
        .collect();
    let get = |m: &str, k: &str| {
        summary
            .iter()
            .find(|s| s["mode"] == m)
            .and_then(|s| s[k].as_f64())
            .unwrap_or(f64::NAN)
    };
    let result = json!({
        "model": path.file_name().map(|n| n.to_string_lossy().to_string()),
        "shapes": shapes, "rounds": args.rounds, "steps_per_process": args.steps,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "modes": summary,
        "lal_over_plits": {
            "measured_time_ratio": get("lal", "step_seconds") / get("plits", "step_seconds"),
            "predicted_flop_ratio": get("lal", "predicted_train_flops") / get("plits", "predicted_train_flops"),
            "throughput_ratio": get("lal", "samples_per_second") / get("plits", "samples_per_second"),
            "step_memory_ratio": get("lal", "step_memory_bytes") / get("plits", "step_memory_bytes"),
        },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        args.out.with_extension("json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let mut md = format!(
        "# Training step by mode\n\n`{}`, frozen backbone, adapter trained; batch {}, Na {}, Nt {}, d_enc {}; median over {} rounds x {} steps, each mode in its own process, interleaved; {} threads.\n\n| mode | s/step | samples/s | peak RSS (MiB) | step memory (MiB) | predicted GFLOP | predicted activations (MiB) |\n|---|---|---|---|---|---|---|\n",
        result["model"].as_str().unwrap_or(""), args.batch, args.audio_tokens, args.text_tokens, args.d_enc, args.rounds, args.steps, result["threads"]
    );
    for s in &result["modes"].as_array().cloned().unwrap_or_default() {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {} | {:.3} | {:.2} | {:.0} | {:.0} | {:.1} | {:.0} |\n",
            s["mode"].as_str().unwrap_or(""),
            f("step_seconds"),
            f("samples_per_second"),
            f("peak_rss_bytes") / 1048576.0,
            f("step_memory_bytes") / 1048576.0,
            f("predicted_train_flops") / 1e9,
            f("predicted_activation_bytes") / 1048576.0
        ));
    }
    let r = &result["lal_over_plits"];
    md.push_str(&format!(
        "\nLAL / PLITS: measured time ratio {:.3}, cost-model FLOP ratio {:.3}; throughput x{:.2}; step memory ratio {:.2}.\n",
        r["measured_time_ratio"].as_f64().unwrap_or(f64::NAN), r["predicted_flop_ratio"].as_f64().unwrap_or(f64::NAN),
        r["throughput_ratio"].as_f64().unwrap_or(f64::NAN), r["step_memory_ratio"].as_f64().unwrap_or(f64::NAN)
    ));
    std::fs::write(args.out.with_extension("md"), md)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
