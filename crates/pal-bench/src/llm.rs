//! `pal bench llm`: prefill and decode tokens/s of an LLM (greedy) at several batch sizes, for
//! each weight form pal can hold the frozen weights in, and optionally next to transformers
//! (`scripts/bench_llm_transformers.py`) and llama.cpp (`scripts/bench_llm_llamacpp.py`, through
//! llama-cpp-python) on the same model, shapes, token ids and threads, in the same run. Every
//! measurement runs in its own process, so that each reports its own peak memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use pal_models::WeightForm;
use serde::{Deserialize, Serialize};

use crate::report::{json_child, median, script};

/// What to measure.
pub struct LlmBench {
    /// LLM folder or .gguf; `None`: the fetched SmolLM2-135M-Instruct.
    pub llm: Option<PathBuf>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Decoded tokens per run.
    pub decode_tokens: usize,
    /// Runs per measurement; the median is reported.
    pub repeats: usize,
    /// Batch sizes (sequences decoded together).
    pub batches: Vec<usize>,
    /// pal's weight forms to measure.
    pub forms: Vec<WeightForm>,
    /// A Python with torch + transformers, to run that reference in the same run.
    pub transformers_python: Option<PathBuf>,
    /// A Python with llama-cpp-python, to run llama.cpp on the same GGUF in the same run.
    pub llama_cpp_python: Option<PathBuf>,
}

/// One measurement a child process makes: one engine (and weight form) at every batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmChildJob {
    /// The LLM.
    pub llm: PathBuf,
    /// pal's weight form.
    pub form: String,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Decoded tokens per run.
    pub decode_tokens: usize,
    /// Runs per measurement.
    pub repeats: usize,
    /// Batch sizes.
    pub batches: Vec<usize>,
}

/// Throughput of one engine at one batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Batch size.
    pub batch: usize,
    /// Prompt tokens per second over the batch (one forward over every prompt).
    pub prefill_tokens_per_s: f64,
    /// Decoded tokens per second over the batch (one token per sequence per step, KV cache).
    pub decode_tokens_per_s: f64,
}

/// What a child process prints: one engine at every batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineResult {
    /// Engine and weight form, as reported (`pal auto`, `llama.cpp`, ...).
    #[serde(default)]
    pub engine: String,
    /// The weights it multiplies with, in words.
    #[serde(default)]
    pub weights: String,
    /// One entry per batch size.
    pub throughput: Vec<Throughput>,
    /// Peak resident memory of the process (for pal: while loading, when every weight is
    /// dequantized once).
    pub peak_rss_bytes: f64,
    /// Resident memory after the measurement: what the weights in their form take to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<f64>,
    /// What the engine says about the CPU features it was built for and uses (llama.cpp's
    /// `llama_print_system_info()`, and whether its repack/AMX buffers ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_info: Option<String>,
}

/// The report (`PREFIX.json`).
#[derive(Debug, Serialize)]
pub struct LlmReport {
    /// Model file or folder name.
    pub model: String,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Decoded tokens per run.
    pub decode_tokens: usize,
    /// Runs per measurement.
    pub repeats: usize,
    /// Threads.
    pub threads: usize,
    /// The command that made the report.
    pub command: String,
    /// Every engine measured.
    pub engines: Vec<EngineResult>,
}

impl LlmBench {
    /// Runs every measurement, each in a child started by `launch` (which must run [`run_child`]
    /// on the job and print its result).
    pub fn run(
        &self,
        launch: &dyn Fn(&LlmChildJob) -> Command,
        command: String,
    ) -> anyhow::Result<LlmReport> {
        let path = crate::llm_or_default(self.llm.as_deref())?;
        let job = |form: &WeightForm| LlmChildJob {
            llm: path.clone(),
            form: form.to_string(),
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            repeats: self.repeats,
            batches: self.batches.clone(),
        };
        let mut engines = vec![];
        for form in &self.forms {
            let job = job(form);
            let mut result: EngineResult = json_child(launch(&job), &format!("pal ({form})"))?;
            result.engine = format!("pal {form}");
            engines.push(result);
        }
        let batches = self
            .batches
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let reference = |python: &Path, name: &str| -> anyhow::Result<EngineResult> {
            let mut cmd = Command::new(python);
            cmd.arg(script(name))
                .arg("--model")
                .arg(&path)
                .args(["--prompt-tokens", &self.prompt_tokens.to_string()])
                .args(["--decode-tokens", &self.decode_tokens.to_string()])
                .args(["--repeats", &self.repeats.to_string()])
                .args(["--batches", &batches])
                .args(["--threads", &crate::threads().to_string()]);
            json_child(cmd, name)
        };
        if let Some(python) = &self.transformers_python {
            engines.push(reference(python, "bench_llm_transformers.py")?);
        }
        if let Some(python) = &self.llama_cpp_python {
            engines.push(reference(python, "bench_llm_llamacpp.py")?);
        }
        Ok(LlmReport {
            model: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            repeats: self.repeats,
            threads: crate::threads(),
            command,
            engines,
        })
    }
}

/// The prompt of sequence `s`: token ids every engine uses alike.
pub fn prompt_ids(s: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7919 + 13 + s * 104_729) % vocab) as u32)
        .collect()
}

/// One measurement in this process: pal in the job's weight form at every batch size.
pub fn run_child(job: &LlmChildJob) -> anyhow::Result<EngineResult> {
    let form: WeightForm = job.form.parse().map_err(anyhow::Error::msg)?;
    let (model, _tokenizer, used) =
        pal_models::load_llm_held(&job.llm, DType::F32, &Device::Cpu, form)
            .with_context(|| format!("loading {}", job.llm.display()))?;
    let vocab = model.config.vocab_size;
    let mut throughput = vec![];
    for &b in &job.batches {
        let prompts: Vec<u32> = (0..b)
            .flat_map(|s| prompt_ids(s, job.prompt_tokens, vocab))
            .collect();
        let ids = Tensor::from_vec(prompts, (b, job.prompt_tokens), model.device())?;
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        // One warm-up run, then the measured ones.
        for run in 0..=job.repeats.max(1) {
            let mut cache = model.new_cache();
            let start = Instant::now();
            let hidden = model.forward_embeds(&model.embed(&ids)?, None, &mut cache)?;
            let last = hidden.narrow(1, job.prompt_tokens - 1, 1)?;
            let mut next = model.logits(&last)?.squeeze(1)?.argmax(1)?;
            let prefill_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            for _ in 0..job.decode_tokens {
                let logits = model.forward(&next.unsqueeze(1)?, None, &mut cache)?;
                next = logits.squeeze(1)?.argmax(1)?;
            }
            next.to_vec1::<u32>()?;
            if run > 0 {
                prefill.push((b * job.prompt_tokens) as f64 / prefill_s);
                decode.push((b * job.decode_tokens) as f64 / start.elapsed().as_secs_f64());
            }
        }
        throughput.push(Throughput {
            batch: b,
            prefill_tokens_per_s: median(prefill),
            decode_tokens_per_s: median(decode),
        });
    }
    let (peak, resident) = pal_train::metrics::memory_bytes();
    Ok(EngineResult {
        engine: format!("pal {form}"),
        weights: used.to_string(),
        throughput,
        peak_rss_bytes: peak as f64,
        resident_bytes: Some(resident as f64),
        system_info: None,
    })
}

impl LlmReport {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# LLM benchmark\n\nModel `{}`, prompt {} tokens, {} decoded tokens per sequence, \
             median of {} runs (after one warm-up), {} threads, greedy; batch `b` decodes `b` \
             sequences together (tokens/s count every sequence). Each engine runs in its own \
             process. CPU: {}.\n\n```sh\n{}\n```\n\n\
             | engine | weights | batch | prefill tokens/s | decode tokens/s | peak memory | \
             resident after |\n|---|---|---|---|---|---|---|\n",
            self.model,
            self.prompt_tokens,
            self.decode_tokens,
            self.repeats,
            self.threads,
            crate::report::cpu_description(),
            self.command
        );
        for e in &self.engines {
            for t in &e.throughput {
                let resident = e
                    .resident_bytes
                    .map(|b| format!("{:.0} MB", b / 1e6))
                    .unwrap_or_else(|| "-".into());
                md.push_str(&format!(
                    "| {} | {} | {} | {:.1} | {:.1} | {:.0} MB | {resident} |\n",
                    e.engine,
                    e.weights,
                    t.batch,
                    t.prefill_tokens_per_s,
                    t.decode_tokens_per_s,
                    e.peak_rss_bytes / 1e6
                ));
            }
        }
        let find = |engine: &str, batch: usize| {
            self.engines
                .iter()
                .find(|e| e.engine == engine)
                .and_then(|e| e.throughput.iter().find(|t| t.batch == batch))
        };
        let mut ratios = String::new();
        for pal in self.engines.iter().filter(|e| e.engine.starts_with("pal")) {
            for other in ["llama.cpp", "transformers"] {
                if let (Some(p), Some(o)) = (find(&pal.engine, 1), find(other, 1)) {
                    ratios.push_str(&format!(
                        "- {} / {other} at batch 1: prefill {:.2}x, decode {:.2}x\n",
                        pal.engine,
                        p.prefill_tokens_per_s / o.prefill_tokens_per_s,
                        p.decode_tokens_per_s / o.decode_tokens_per_s
                    ));
                }
            }
        }
        // How each engine's decoding scales with the batch on this machine (llama.cpp and
        // transformers too, as a yardstick for pal's).
        for engine in &self.engines {
            let batches: Vec<usize> = engine.throughput.iter().map(|t| t.batch).collect();
            if let (Some(&lo), Some(&hi)) = (batches.iter().min(), batches.iter().max()) {
                if let (Some(a), Some(b)) = (find(&engine.engine, lo), find(&engine.engine, hi)) {
                    if hi > lo {
                        ratios.push_str(&format!(
                            "- {}: batch-{hi} decode / batch-{lo} decode: {:.2}x\n",
                            engine.engine,
                            b.decode_tokens_per_s / a.decode_tokens_per_s
                        ));
                    }
                }
            }
        }
        if !ratios.is_empty() {
            md.push('\n');
            md.push_str(&ratios);
        }
        for e in &self.engines {
            if let Some(info) = &e.system_info {
                md.push_str(&format!("\n{}: {info}\n", e.engine));
            }
        }
        md
    }
}
