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
