//! `pal bench llm`: prefill and decode tokens/s of an LLM at batch 1 (greedy), optionally next to
//! transformers on the same model and shapes (`scripts/bench_llm_transformers.py`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::Tensor;
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
    /// A Python with torch + transformers, to run the reference in the same run.
    pub compare_python: Option<PathBuf>,
}

/// Throughput of one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Prompt tokens per second (one forward over the prompt).
    pub prefill_tokens_per_s: f64,
    /// Decoded tokens per second (one token per step, KV cache).
    pub decode_tokens_per_s: f64,
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
    /// pal's figures.
    pub pal: Throughput,
    /// transformers' figures, when compared.
    pub transformers: Option<Throughput>,
}

impl LlmBench {
    /// Runs the benchmark.
    pub fn run(&self) -> anyhow::Result<LlmReport> {
        let path = crate::llm_or_default(self.llm.as_deref())?;
        let (model, _tokenizer) = crate::load_llm(&path)?;
        let vocab = model.config.vocab_size as u32;
        let prompt: Vec<u32> = (0..self.prompt_tokens as u32)
            .map(|i| (i * 7919 + 13) % vocab)
            .collect();
        let ids = Tensor::from_vec(prompt, (1, self.prompt_tokens), model.device())?;
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for _ in 0..self.repeats.max(1) {
            let mut cache = model.new_cache();
            let start = Instant::now();
            let hidden = model.forward_embeds(&model.embed(&ids)?, None, &mut cache)?;
            let logits = model.logits(&hidden.narrow(1, self.prompt_tokens - 1, 1)?)?;
            let mut next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
            prefill.push(self.prompt_tokens as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            for _ in 0..self.decode_tokens {
                let step = Tensor::new(&[[next]], model.device())?;
                let logits = model.forward(&step, None, &mut cache)?;
                next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
            }
            decode.push(self.decode_tokens as f64 / start.elapsed().as_secs_f64());
        }
        let transformers = match &self.compare_python {
            Some(python) => Some(self.run_transformers(python, &path)?),
            None => None,
        };
        Ok(LlmReport {
            model: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            repeats: self.repeats,
            threads: crate::threads(),
            pal: Throughput {
                prefill_tokens_per_s: median(prefill),
                decode_tokens_per_s: median(decode),
            },
            transformers,
        })
    }

    fn run_transformers(&self, python: &Path, model: &Path) -> anyhow::Result<Throughput> {
        let mut cmd = Command::new(python);
        cmd.arg(script("bench_llm_transformers.py"))
            .arg("--model")
            .arg(model)
            .args(["--prompt-tokens", &self.prompt_tokens.to_string()])
            .args(["--decode-tokens", &self.decode_tokens.to_string()])
            .args(["--repeats", &self.repeats.to_string()]);
        json_child(cmd, "the transformers benchmark")
    }
}

impl LlmReport {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# LLM benchmark\n\nModel `{}`, batch 1, prompt {} tokens, decode {} tokens, median of {} runs, {} threads.\n\n| | prefill tokens/s | decode tokens/s |\n|---|---|---|\n",
            self.model, self.prompt_tokens, self.decode_tokens, self.repeats, self.threads
        );
        let mut row = |name: &str, t: &Throughput| {
            md.push_str(&format!(
                "| {name} | {:.1} | {:.1} |\n",
                t.prefill_tokens_per_s, t.decode_tokens_per_s
            ))
        };
        row("pal", &self.pal);
        if let Some(t) = &self.transformers {
            row("transformers", t);
            md.push_str(&format!(
                "| pal / transformers | {:.2}x | {:.2}x |\n",
                self.pal.prefill_tokens_per_s / t.prefill_tokens_per_s,
                self.pal.decode_tokens_per_s / t.decode_tokens_per_s
            ));
        }
        md
    }
}
