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
    /// LLM file or folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long, conflicts_with = "shapes")]
    llm: Option<PathBuf>,
    /// Instead of a real LLM, random weights with these shapes: `llama-3.2-1b`.
    #[arg(long)]
    shapes: Option<String>,
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
    /// What trains: `adapter` (frozen LLM) or `lora` (adapter + rank-8 LoRA on q/v projections).
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
    /// Internal: run one measurement (`train:MODE:NA:TRAINABLE` or `infer:MODE:NA:BATCH`) and
    /// print it as JSON.
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

/// `PREFIX.ext`: the prefix may contain dots (`modes-llama-3.2-1b`), which `with_extension`
/// would cut.
fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
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
    let json_path = with_suffix(prefix, "json");
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
    std::fs::write(with_suffix(prefix, "md"), md)?;
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
        with_suffix(&args.out, "json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let mut md = format!(
        "# Audio front-end benchmark\n\n{secs} s clip, median of {} runs, {} threads, Whisper `{}`.\n\n| stage | seconds of audio per second |\n|---|---|\n",
        args.repeats, result["threads"], result["whisper"].as_str().unwrap_or("")
    );
    for (k, v) in &rows {
        md.push_str(&format!("| {k} | {v:.1} |\n"));
    }
    std::fs::write(with_suffix(&args.out, "md"), md)?;
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

/// Llama-3.2-1B's `config.json` (shapes only; `pal bench modes --shapes llama-3.2-1b` uses random
/// weights, as the model itself is not fetchable here).
const LLAMA_32_1B_CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
 "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
 "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
 "original_max_position_embeddings": 8192}, "tie_word_embeddings": true}"#;

/// How reports name the `--shapes llama-3.2-1b` model.
const RANDOM_SHAPES_NAME: &str = "Llama-3.2-1B shapes, random weights";

/// The config of `--shapes`, when the benchmark runs on random weights.
fn random_shapes(args: &ModesBenchArgs) -> anyhow::Result<Option<pal_models::LlamaConfig>> {
    match args.shapes.as_deref() {
        Some("llama-3.2-1b") => Ok(Some(pal_models::LlamaConfig::from_hf_json(
            LLAMA_32_1B_CONFIG,
        )?)),
        Some(other) => anyhow::bail!("unknown --shapes '{other}' (llama-3.2-1b)"),
        None => Ok(None),
    }
}

/// The LLM of a modes benchmark and its name.
fn modes_llm(args: &ModesBenchArgs) -> anyhow::Result<(pal_models::Llama, String)> {
    match random_shapes(args)? {
        Some(config) => {
            let llm = pal_models::Llama::random(
                config,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?;
            Ok((llm, RANDOM_SHAPES_NAME.into()))
        }
        None => {
            let path = super::resolve_llm(args.llm.clone())?;
            let (llm, _) = super::load_llm(&path)?;
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            Ok((llm, name.unwrap_or_default()))
        }
    }
}

/// The audio-LLM of a modes benchmark: one encoder on `mode`'s route, LAL from `lal_start`.
fn modes_model(
    args: &ModesBenchArgs,
    mode: &str,
    params: &pal_nn::Params,
) -> anyhow::Result<pal_models::audio_llm::AudioLlm> {
    use pal_models::audio_llm::{Attachment, AudioLlm};
    use pal_models::connector::ConnectorConfig;
    let (llm, _) = modes_llm(args)?;
    let mut attachment = Attachment::new("audio", args.d_enc, parse_route(mode)?);
    attachment.lal.start = args.lal_start;
    attachment.summary = ConnectorConfig::Latent {
        queries: args.summary,
        layers: 1,
    };
    Ok(AudioLlm::new(llm, &[attachment], params)?)
}

/// `batch` examples of `na` random encoder frames and `text` token ids.
fn modes_examples(
    args: &ModesBenchArgs,
    vocab: usize,
    batch: usize,
    na: usize,
    trained: bool,
) -> anyhow::Result<Vec<pal_models::audio_llm::Example>> {
    use pal_models::audio_llm::{Example, Segment};
    (0..batch)
        .map(|i| {
            let frames = pal_nn::gradcheck::pseudo_random(na * args.d_enc, i as u64);
            let audio = Tensor::from_vec(frames, (na, args.d_enc), &candle_core::Device::Cpu)?
                .to_dtype(candle_core::DType::F32)?;
            let ids: Vec<u32> = (0..args.text_tokens)
                .map(|t| ((t * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect();
            Ok(Example {
                segments: vec![Segment::Audio, Segment::Text { ids, trained }],
                audio: vec![audio],
            })
        })
        .collect()
}

/// One measurement in this process: `train:MODE:NA:TRAINABLE` or `infer:MODE:NA:BATCH`.
fn modes_child(args: &ModesBenchArgs, spec: &str) -> anyhow::Result<()> {
    use pal_models::audio_llm::Padding;
    let parts: Vec<&str> = spec.split(':').collect();
    anyhow::ensure!(parts.len() == 4, "bad measurement '{spec}'");
    let (task, mode, na) = (parts[0], parts[1], parts[2].parse::<usize>()?);
    let params = pal_nn::Params::new(0, candle_core::DType::F32, &candle_core::Device::Cpu);
    let mut model = modes_model(args, mode, &params)?;
    let vocab = model.llm.config.vocab_size;
    let (_, rss_before) = super::memory_bytes();
    let mut result = match task {
        "train" => {
            if parts[3] == "lora" {
                let targets = ["q_proj".to_string(), "v_proj".to_string()];
                model.llm.attach_lora(&params, 8, 16.0, &targets, false)?;
            }
            let examples = modes_examples(args, vocab, args.batch, na, true)?;
            let (mut times, mut forwards) = (vec![], vec![]);
            for step in 0..=args.steps {
                let start = Instant::now();
                let mut batch = model.prepare(&examples, Padding::Right)?;
                let (loss, _) = model.loss(&mut batch)?;
                let forward = start.elapsed().as_secs_f64();
                drop(loss.backward()?);
                if step > 0 {
                    times.push(start.elapsed().as_secs_f64());
                    forwards.push(forward);
                }
            }
            json!({"step_seconds": median(times), "forward_seconds": median(forwards)})
        }
        "infer" => {
            let batch_size: usize = parts[3].parse()?;
            let examples = modes_examples(args, vocab, batch_size, na, false)?;
            let (mut prefills, mut decodes) = (vec![], vec![]);
            for run in 0..=args.steps {
                let start = Instant::now();
                let mut batch = model.prepare(&examples, Padding::Left)?.detach();
                let hidden = model.llm.forward_embeds(
                    &batch.embeds,
                    Some(&batch.valid),
                    &mut batch.cache,
                )?;
                let n = hidden.dims()[1];
                let mut next = model.llm.logits(&hidden.narrow(1, n - 1, 1)?)?.argmax(2)?;
                let prefill = start.elapsed().as_secs_f64();
                let start = Instant::now();
                for _ in 0..args.decode_tokens {
                    let logits = model.llm.forward(&next, None, &mut batch.cache)?;
                    next = logits.argmax(2)?;
                }
                if run > 0 {
                    prefills.push(prefill);
                    decodes.push(start.elapsed().as_secs_f64());
                }
            }
            let (prefill, decode) = (median(prefills), median(decodes));
            json!({
                "prefill_seconds": prefill,
                "decode_tokens_per_second": (batch_size * args.decode_tokens) as f64 / decode,
                "samples_per_second": batch_size as f64 / (prefill + decode),
            })
        }
        other => anyhow::bail!("unknown measurement '{other}'"),
    };
    let (peak, _) = super::memory_bytes();
    result["peak_rss_bytes"] = json!(peak);
    result["rss_before_bytes"] = json!(rss_before);
    println!("{result}");
    Ok(())
}

/// Runs `cmd` and parses the last line of its stdout as JSON.
fn json_child(mut cmd: Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("parsing {what}'s result: {last}"))
}

/// One row of the modes report: what was measured and the medians over rounds.
#[derive(Debug, Clone)]
struct ModesRow {
    task: String,
    implementation: &'static str,
    mode: String,
    na: usize,
    variant: String,
    runs: Vec<serde_json::Value>,
}

impl ModesRow {
    fn median(&self, key: &str) -> f64 {
        median(self.runs.iter().filter_map(|r| r[key].as_f64()).collect())
    }
}

fn bench_modes(args: ModesBenchArgs) -> anyhow::Result<()> {
    use pal_models::cost::{cost, CostMode, Shapes};
    let modes = ["plits", "lal", "pal"];
    random_shapes(&args)?; // an unknown --shapes fails here, before any child runs
    let exe = std::env::current_exe()?;
    let trainables: Vec<String> = args
        .trainable
        .iter()
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
    for t in &trainables {
        anyhow::ensure!(
            t == "adapter" || t == "lora",
            "--trainable takes adapter or lora, got '{t}'"
        );
    }
    let torch_shapes = match (&args.shapes, &args.llm) {
        (Some(s), _) => Some(s.clone()),
        (None, None) => Some("smollm2-135m".to_string()),
        (None, Some(_)) => None,
    };
    let mut rows: Vec<ModesRow> = vec![];
    let mut record = |row: ModesRow, result: serde_json::Value| match rows.iter_mut().find(|r| {
        r.task == row.task
            && r.implementation == row.implementation
            && r.mode == row.mode
            && r.na == row.na
            && r.variant == row.variant
    }) {
        Some(r) => r.runs.push(result),
        None => rows.push(ModesRow {
            runs: vec![result],
            ..row
        }),
    };
    let child = |spec: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "modes", "--child", spec])
            .args(["--text-tokens", &args.text_tokens.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(["--d-enc", &args.d_enc.to_string()])
            .args(["--lal-start", &args.lal_start.to_string()])
            .args(["--summary", &args.summary.to_string()])
            .args(["--steps", &args.steps.to_string()])
            .args(["--decode-tokens", &args.decode_tokens.to_string()]);
        if let Some(llm) = &args.llm {
            cmd.arg("--llm").arg(llm);
        }
        if let Some(shapes) = &args.shapes {
            cmd.args(["--shapes", shapes]);
        }
        json_child(cmd, spec)
    };
    for round in 0..args.rounds.max(1) {
        for &na in &args.audio_tokens {
            for trainable in &trainables {
                for mode in modes {
                    let spec = format!("train:{mode}:{na}:{trainable}");
                    let result = child(&spec)?;
                    eprintln!(
                        "round {round} {spec}: {:.3} s/step",
                        result["step_seconds"].as_f64().unwrap_or(f64::NAN)
                    );
                    record(
                        ModesRow {
                            task: "train".into(),
                            implementation: "pal",
                            mode: mode.into(),
                            na,
                            variant: trainable.clone(),
                            runs: vec![],
                        },
                        result,
                    );
                }
                if let (Some(python), Some(shapes), "adapter") =
                    (&args.compare_python, &torch_shapes, trainable.as_str())
                {
                    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../../scripts/bench_modes_torch.py");
                    for mode in ["plits", "lal"] {
                        let mut cmd = Command::new(python);
                        cmd.arg(&script)
                            .args(["--mode", mode, "--shapes", shapes])
                            .args(["--batch", &args.batch.to_string()])
                            .args(["--audio-tokens", &na.to_string()])
                            .args(["--text-tokens", &args.text_tokens.to_string()])
                            .args(["--d-enc", &args.d_enc.to_string()])
                            .args(["--lal-start", &args.lal_start.to_string()])
                            .args(["--steps", &args.steps.to_string()])
                            .args([
                                "--threads",
                                &std::thread::available_parallelism()
                                    .map(|n| n.get())
                                    .unwrap_or(1)
                                    .to_string(),
                            ]);
                        let result = json_child(cmd, &format!("torch {mode} Na {na}"))?;
                        eprintln!(
                            "round {round} torch {mode} Na {na}: {:.3} s/step",
                            result["step_seconds"].as_f64().unwrap_or(f64::NAN)
                        );
                        record(
                            ModesRow {
                                task: "train".into(),
                                implementation: "pytorch",
                                mode: mode.into(),
                                na,
                                variant: "adapter".into(),
                                runs: vec![],
                            },
                            result,
                        );
                    }
                }
            }
            for &b in &args.infer_batches {
                for mode in modes {
                    let spec = format!("infer:{mode}:{na}:{b}");
                    let result = child(&spec)?;
                    eprintln!(
                        "round {round} {spec}: {:.2} samples/s",
                        result["samples_per_second"].as_f64().unwrap_or(f64::NAN)
                    );
                    record(
                        ModesRow {
                            task: "infer".into(),
                            implementation: "pal",
                            mode: mode.into(),
                            na,
                            variant: b.to_string(),
                            runs: vec![],
                        },
                        result,
                    );
                }
            }
        }
    }

    // The report needs only the config: random weights (gigabytes at 1B shapes) are not built.
    let (config, model_name) = match random_shapes(&args)? {
        Some(config) => (config, RANDOM_SHAPES_NAME.to_string()),
        None => {
            let (llm, name) = modes_llm(&args)?;
            (llm.config, name)
        }
    };
    let layers = config.num_hidden_layers;
    let lal_layers = layers.saturating_sub(args.lal_start);
    let predicted = |mode: &str, na: usize| {
        let shapes = Shapes {
            batch: args.batch,
            audio_tokens: na,
            text_tokens: args.text_tokens,
            d_enc: args.d_enc,
        };
        match mode {
            "plits" => cost(&config, CostMode::Plits { stack: 1 }, shapes, 4),
            "lal" => cost(&config, CostMode::Lal { layers: lal_layers }, shapes, 4),
            _ => cost(
                &config,
                CostMode::Pal {
                    layers: lal_layers,
                    summary: args.summary,
                },
                shapes,
                4,
            ),
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let entries: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut e = json!({
                "task": r.task, "implementation": r.implementation, "mode": r.mode,
                "audio_tokens": r.na, "variant": r.variant, "rounds": r.runs.len(),
                "peak_rss_bytes": r.median("peak_rss_bytes"),
            });
            if r.task == "train" {
                let step = r.median("step_seconds");
                let c = predicted(&r.mode, r.na);
                e["step_seconds"] = json!(step);
                e["samples_per_second"] = json!(args.batch as f64 / step);
                e["predicted_train_flops"] = json!(c.train_flops());
                e["predicted_activation_bytes"] = json!(c.activation_bytes);
                if r.implementation == "pal" {
                    e["step_memory_bytes"] =
                        json!(r.median("peak_rss_bytes") - r.median("rss_before_bytes"));
                }
            } else {
                for k in [
                    "prefill_seconds",
                    "decode_tokens_per_second",
                    "samples_per_second",
                ] {
                    e[k] = json!(r.median(k));
                }
            }
            e
        })
        .collect();
    let find = |implementation: &str, mode: &str, na: usize, variant: &str| {
        entries.iter().find(|e| {
            e["task"] == "train"
                && e["implementation"] == implementation
                && e["mode"] == mode
                && e["audio_tokens"] == na
                && e["variant"] == variant
        })
    };
    let mut ratios = vec![];
    for &na in &args.audio_tokens {
        for variant in &trainables {
            if let (Some(p), Some(l)) = (
                find("pal", "plits", na, variant),
                find("pal", "lal", na, variant),
            ) {
                let f = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(f64::NAN);
                let mut ratio = json!({
                    "audio_tokens": na, "variant": variant,
                    "lal_throughput_over_plits": f(l, "samples_per_second") / f(p, "samples_per_second"),
                    "predicted_flop_ratio_plits_over_lal": f(p, "predicted_train_flops") / f(l, "predicted_train_flops"),
                    "lal_peak_memory_saving": 1.0 - f(l, "peak_rss_bytes") / f(p, "peak_rss_bytes"),
                    "lal_step_memory_saving": 1.0 - f(l, "step_memory_bytes") / f(p, "step_memory_bytes"),
                });
                if let Some(t) = find("pytorch", "lal", na, variant) {
                    ratio["pal_lal_speed_over_pytorch_lal"] =
                        json!(f(t, "step_seconds") / f(l, "step_seconds"));
                }
                if let Some(t) = find("pytorch", "plits", na, variant) {
                    ratio["pal_plits_speed_over_pytorch_plits"] =
                        json!(f(t, "step_seconds") / f(p, "step_seconds"));
                }
                ratios.push(ratio);
            }
        }
    }
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let result = json!({
        "command": format!("pal {command}"),
        "model": model_name, "batch": args.batch, "text_tokens": args.text_tokens, "d_enc": args.d_enc,
        "lal_layers": format!("{}..{}", args.lal_start, layers.saturating_sub(1)), "summary_tokens": args.summary,
        "rounds": args.rounds, "steps_per_process": args.steps, "decode_tokens": args.decode_tokens,
        "threads": threads, "measurements": entries, "lal_over_plits": ratios,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        with_suffix(&args.out, "json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    std::fs::write(with_suffix(&args.out, "md"), modes_markdown(&result))?;
    if args.audio_tokens.len() > 1 && trainables.iter().any(|t| t == "adapter") {
        modes_plot(&result, &with_suffix(&args.out, "png"))?;
    }
    println!("{}", modes_markdown(&result));
    Ok(())
}

fn modes_markdown(result: &serde_json::Value) -> String {
    let f = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(f64::NAN);
    let empty = vec![];
    let entries = result["measurements"].as_array().unwrap_or(&empty);
    let mut md = format!(
        "# PLITS, LAL and PAL side by side\n\n`{}`\n\nLLM: {}; batch {}, Nt {}, d_enc {}, LAL layers {}, PAL summary tokens {}; each measurement in its own process (peak memory is that process's), interleaved; median over {} rounds x {} steps; {} threads.\n",
        result["command"].as_str().unwrap_or(""), result["model"].as_str().unwrap_or(""), result["batch"], result["text_tokens"], result["d_enc"],
        result["lal_layers"].as_str().unwrap_or(""), result["summary_tokens"], result["rounds"], result["steps_per_process"], result["threads"]
    );
    let train: Vec<&serde_json::Value> = entries.iter().filter(|e| e["task"] == "train").collect();
    if !train.is_empty() {
        md.push_str("\n## Training step\n\n| implementation | trains | mode | Na | s/step | samples/s | peak RSS (MiB) | step memory (MiB) | predicted GFLOP | predicted activations (MiB) |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for e in train {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.3} | {:.2} | {:.0} | {} | {:.1} | {:.0} |\n",
                e["implementation"].as_str().unwrap_or(""),
                e["variant"].as_str().unwrap_or(""),
                e["mode"].as_str().unwrap_or(""),
                e["audio_tokens"],
                f(e, "step_seconds"),
                f(e, "samples_per_second"),
                f(e, "peak_rss_bytes") / 1048576.0,
                e["step_memory_bytes"]
                    .as_f64()
                    .map(|v| format!("{:.0}", v / 1048576.0))
                    .unwrap_or_else(|| "-".into()),
                f(e, "predicted_train_flops") / 1e9,
                f(e, "predicted_activation_bytes") / 1048576.0
            ));
        }
    }
    let ratios = result["lal_over_plits"].as_array().unwrap_or(&empty);
    if !ratios.is_empty() {
        md.push_str("\n## LAL against PLITS (and pal against PyTorch)\n\n| Na | trains | LAL throughput / PLITS | cost model PLITS FLOP / LAL FLOP | LAL peak memory saving | LAL step memory saving | pal LAL speed / PyTorch LAL | pal PLITS speed / PyTorch PLITS |\n|---|---|---|---|---|---|---|---|\n");
        for r in ratios {
            let opt = |k: &str| {
                r[k].as_f64()
                    .map(|v| format!("{v:.2}x"))
                    .unwrap_or_else(|| "-".into())
            };
            md.push_str(&format!(
                "| {} | {} | {:.2}x | {:.2}x | {:.0}% | {:.0}% | {} | {} |\n",
                r["audio_tokens"],
                r["variant"].as_str().unwrap_or(""),
                f(r, "lal_throughput_over_plits"),
                f(r, "predicted_flop_ratio_plits_over_lal"),
                100.0 * f(r, "lal_peak_memory_saving"),
                100.0 * f(r, "lal_step_memory_saving"),
                opt("pal_lal_speed_over_pytorch_lal"),
                opt("pal_plits_speed_over_pytorch_plits")
            ));
        }
    }
    let infer: Vec<&serde_json::Value> = entries.iter().filter(|e| e["task"] == "infer").collect();
    if !infer.is_empty() {
        md.push_str(&format!("\n## Inference (greedy, {} decoded tokens)\n\n| mode | Na | batch | prefill (s) | decode tokens/s | samples/s | peak RSS (MiB) |\n|---|---|---|---|---|---|---|\n", result["decode_tokens"]));
        for e in infer {
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.1} | {:.2} | {:.0} |\n",
                e["mode"].as_str().unwrap_or(""),
                e["audio_tokens"],
                e["variant"].as_str().unwrap_or(""),
                f(e, "prefill_seconds"),
                f(e, "decode_tokens_per_second"),
                f(e, "samples_per_second"),
                f(e, "peak_rss_bytes") / 1048576.0
            ));
        }
    }
    md
}

/// Throughput relative to PLITS (measured and predicted by the cost model) and step memory
/// (measured and predicted activations) against Na, for the frozen-backbone training step.
fn modes_plot(result: &serde_json::Value, out: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let labels = pal_train::metrics::register_font();
    let empty = vec![];
    let entries: Vec<&serde_json::Value> = result["measurements"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|e| {
            e["task"] == "train" && e["implementation"] == "pal" && e["variant"] == "adapter"
        })
        .collect();
    let series = |mode: &str, key: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = entries
            .iter()
            .filter(|e| e["mode"] == mode)
            .filter_map(|e| Some((e["audio_tokens"].as_f64()?, e[key].as_f64()?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let plits_time = series("plits", "step_seconds");
    let plits_flops = series("plits", "predicted_train_flops");
    let relative =
        |values: Vec<(f64, f64)>, base: &[(f64, f64)], invert: bool| -> Vec<(f64, f64)> {
            values
                .iter()
                .filter_map(|&(na, v)| {
                    let b = base.iter().find(|p| p.0 == na)?.1;
                    Some((na, if invert { b / v } else { v / b }))
                })
                .collect()
        };
    let max_na = entries
        .iter()
        .filter_map(|e| e["audio_tokens"].as_f64())
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(out, (1000, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let colors = [("plits", RED), ("lal", BLUE), ("pal", GREEN)];
    // Left: training throughput relative to PLITS (measured solid, cost model dashed).
    let mut top = 1.0f64;
    for (mode, _) in colors {
        for (_, v) in relative(series(mode, "step_seconds"), &plits_time, true)
            .into_iter()
            .chain(relative(
                series(mode, "predicted_train_flops"),
                &plits_flops,
                true,
            ))
        {
            top = top.max(v);
        }
    }
    let mut builder = ChartBuilder::on(&left);
    builder
        .margin(15)
        .x_label_area_size(if labels { 35 } else { 0 })
        .y_label_area_size(if labels { 45 } else { 0 });
    if labels {
        builder.caption(
            "training throughput / PLITS (dashed: cost model)",
            ("sans-serif", 16),
        );
    }
    let mut chart = builder.build_cartesian_2d(0f64..max_na * 1.05, 0f64..top * 1.15)?;
    let mut mesh = chart.configure_mesh();
    if !labels {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.x_desc("Na (audio tokens)").draw()?;
    for (mode, color) in colors {
        let measured = relative(series(mode, "step_seconds"), &plits_time, true);
        let predicted = relative(series(mode, "predicted_train_flops"), &plits_flops, true);
        let drawn = chart.draw_series(LineSeries::new(measured.clone(), color.stroke_width(2)))?;
        if labels {
            drawn
                .label(mode)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart.draw_series(measured.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart.draw_series(DashedLineSeries::new(predicted, 6, 4, color.into()))?;
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
    }
    // Right: step memory (measured solid) and predicted activations (dashed), MiB.
    let mib = |v: Vec<(f64, f64)>| {
        v.into_iter()
            .map(|(x, y)| (x, y / 1048576.0))
            .collect::<Vec<_>>()
    };
    let mut top = 1.0f64;
    for (mode, _) in colors {
        for (_, v) in mib(series(mode, "step_memory_bytes"))
            .into_iter()
            .chain(mib(series(mode, "predicted_activation_bytes")))
        {
            top = top.max(v);
        }
    }
    let mut builder = ChartBuilder::on(&right);
    builder
        .margin(15)
        .x_label_area_size(if labels { 35 } else { 0 })
        .y_label_area_size(if labels { 55 } else { 0 });
    if labels {
        builder.caption(
            "step memory, MiB (dashed: predicted activations)",
            ("sans-serif", 16),
        );
    }
    let mut chart = builder.build_cartesian_2d(0f64..max_na * 1.05, 0f64..top * 1.1)?;
    let mut mesh = chart.configure_mesh();
    if !labels {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.x_desc("Na (audio tokens)").draw()?;
    for (mode, color) in colors {
        let measured = mib(series(mode, "step_memory_bytes"));
        chart.draw_series(LineSeries::new(measured.clone(), color.stroke_width(2)))?;
        chart.draw_series(measured.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart.draw_series(DashedLineSeries::new(
            mib(series(mode, "predicted_activation_bytes")),
            6,
            4,
            color.into(),
        ))?;
    }
    root.present()?;
    Ok(())
}
