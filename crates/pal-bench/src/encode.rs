//! `pal bench encode`: clips per second of encoding a manifest's clips with a model's frozen
//! encoders, one clip at a time (decode, then encode, as pal did before feature shards) against
//! the batched, parallel path of `pal encode` (decoding threads, length-sorted padded batches),
//! in one run, alternating, on the same threads; and how far the two paths' outputs are apart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use pal_data::encoding::{decode_clip, encode_in_order, EncodeOptions};
use pal_models::audio_llm::{build_encoders, ModelConfig};
use pal_models::encoders::{encode_clip, AudioEncoder};
use serde::Serialize;

use crate::report::median;

/// What to measure.
pub struct EncodeBench {
    /// Model config whose encoders run.
    pub model: PathBuf,
    /// Manifest of the clips.
    pub manifest: PathBuf,
    /// Passes of each path (alternating); the median is reported.
    pub repeats: usize,
    /// Batched path settings.
    pub options: EncodeOptions,
}

/// The report (`PREFIX.json`).
#[derive(Debug, Serialize)]
pub struct EncodeReport {
    /// The CPU: model name and the flags that decide pal's kernels.
    pub cpu: String,
    /// The manifest.
    pub manifest: String,
    /// Clips encoded per pass.
    pub clips: usize,
    /// Seconds of audio per pass.
    pub audio_seconds: f64,
    /// The encoders' ids.
    pub encoders: Vec<String>,
    /// Compute threads.
    pub threads: usize,
    /// Decoding threads of the batched path.
    pub decode_threads: usize,
    /// Most clips per batch.
    pub batch_clips: usize,
    /// Passes per path.
    pub repeats: usize,
    /// Clips per second, one at a time (median).
    pub one_at_a_time_clips_per_s: f64,
    /// Clips per second, batched and parallel (median).
    pub batched_clips_per_s: f64,
    /// `batched / one at a time`.
    pub speedup: f64,
    /// Largest absolute difference between the two paths' outputs, over all clips.
    pub max_abs_difference: f64,
    /// Largest absolute output value (for scale).
    pub max_abs_value: f64,
}

impl EncodeBench {
    /// Runs the benchmark.
    pub fn run(&self) -> anyhow::Result<EncodeReport> {
        let config = ModelConfig::load(&self.model)?;
        let base = self.model.parent().unwrap_or(std::path::Path::new("."));
        let encoders = build_encoders(&config, base, DType::F32, &Device::Cpu)
            .with_context(|| format!("loading the encoders of {}", self.model.display()))?;
        let records = pal_data::load_manifest(&self.manifest, false)?.records;
        let files: Vec<PathBuf> = records.iter().flat_map(|r| r.clips.clone()).collect();
        let mut single_times = vec![];
        let mut batched_times = vec![];
        let mut single_out: Vec<Vec<Tensor>> = vec![];
        let mut batched_out: Vec<Vec<Tensor>> = vec![];
        let mut audio_seconds = 0.0;
        for _ in 0..self.repeats.max(1) {
            let start = Instant::now();
            single_out.clear();
            audio_seconds = 0.0;
            for f in &files {
                let samples = decode_clip(f).map_err(anyhow::Error::msg)?;
                audio_seconds += samples.len() as f64 / 16000.0;
                single_out.push(encode_clip(&encoders, &samples)?);
            }
            single_times.push(start.elapsed().as_secs_f64());

            let start = Instant::now();
            batched_out.clear();
            encode_in_order(&files, 0, &encoders, &self.options, |_, outcome| {
                batched_out.push(outcome.map_err(anyhow::Error::msg)?.audio);
                Ok::<(), anyhow::Error>(())
            })?;
            batched_times.push(start.elapsed().as_secs_f64());
        }
        let (mut max_diff, mut max_value) = (0f64, 0f64);
        for (a, b) in single_out.iter().zip(&batched_out) {
            for (x, y) in a.iter().zip(b) {
                let d = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let v = x.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                max_diff = max_diff.max(d as f64);
                max_value = max_value.max(v as f64);
            }
        }
        let n = files.len() as f64;
        let single = n / median(single_times);
        let batched = n / median(batched_times);
        Ok(EncodeReport {
            cpu: crate::report::cpu_description(),
            manifest: self.manifest.display().to_string(),
            clips: files.len(),
            audio_seconds,
            encoders: encoders.iter().map(|e| e.id()).collect(),
            threads: crate::threads(),
            decode_threads: self.options.decode_threads,
            batch_clips: self.options.batch_clips,
            repeats: self.repeats.max(1),
            one_at_a_time_clips_per_s: single,
            batched_clips_per_s: batched,
            speedup: batched / single,
            max_abs_difference: max_diff,
            max_abs_value: max_value,
        })
    }
}

impl EncodeReport {
    /// The report as markdown.
    pub fn markdown(&self, command: &str) -> String {
        format!(
            "# Encoding throughput: one clip at a time against `pal encode`'s batched path\n\n\
             `{command}`\n\n\
             CPU: {}. {} clips ({:.1} min of audio) from `{}`, encoders `{}`, {} compute threads; the batched path \
             decodes on {} extra threads and encodes length-sorted batches of up to {} clips. \
             Both paths in one run, alternating, median of {} passes each.\n\n\
             | path | clips/s |\n|---|---|\n\
             | one clip at a time (decode, then encode) | {:.1} |\n\
             | batched and parallel (`pal encode`, training, evaluation) | {:.1} |\n\
             | speed-up | {:.2}x |\n\n\
             The two paths' outputs differ by at most {:.2e} (largest output magnitude {:.1}): the \
             padding is masked, the rest is f32 rounding of differently-shaped products.\n",
            self.cpu,
            self.clips,
            self.audio_seconds / 60.0,
            self.manifest,
            self.encoders.join(", "),
            self.threads,
            self.decode_threads,
            self.batch_clips,
            self.repeats,
            self.one_at_a_time_clips_per_s,
            self.batched_clips_per_s,
            self.speedup,
            self.max_abs_difference,
            self.max_abs_value
        )
    }
}
