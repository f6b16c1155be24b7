//! `pal bench audio`: feature extraction and Whisper encoder throughput, in seconds of audio per
//! second, on a deterministic speech-like signal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use pal_audio::{KaldiFbank, WhisperMel, WindowType};
use pal_models::encoders::whisper::{Whisper, WhisperAudioEncoder};
use pal_models::encoders::AudioEncoder;
use serde::Serialize;

use crate::report::time_median;

/// What to measure.
pub struct AudioBench {
    /// Whisper folder; `None`: the fetched Whisper tiny.en.
    pub whisper: Option<PathBuf>,
    /// Clip length in seconds.
    pub seconds: f64,
    /// Runs per measurement; the median is reported.
    pub repeats: usize,
}

/// The report (`PREFIX.json`).
#[derive(Debug, Serialize)]
pub struct AudioReport {
    /// The CPU: model name and the flags that decide pal's kernels.
    pub cpu: String,
    /// Clip length.
    pub clip_seconds: f64,
    /// Runs per measurement.
    pub repeats: usize,
    /// Whisper folder name.
    pub whisper: Option<String>,
    /// Threads.
    pub threads: usize,
    /// Seconds of audio processed per second, by stage.
    pub audio_seconds_per_second: BTreeMap<String, f64>,
    /// The stages in the order measured (the markdown's row order).
    #[serde(skip)]
    pub stages: Vec<String>,
}

impl AudioBench {
    /// Runs the benchmark.
    pub fn run(&self) -> anyhow::Result<AudioReport> {
        let n = (self.seconds * 16000.0) as usize;
        // A deterministic, speech-like test signal (two glides and noise).
        let samples: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / 16000.0;
                0.3 * (2.0 * std::f32::consts::PI * (180.0 + 40.0 * t) * t).sin()
                    + 0.1 * (2.0 * std::f32::consts::PI * 1200.0 * t).sin()
                    + 0.02 * ((i as f32 * 12.9898).sin() * 43758.547).fract()
            })
            .collect();
        let folder = match &self.whisper {
            Some(p) => p.clone(),
            None => pal_assets::WHISPER_TINY_EN.dir(),
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
        let secs = self.seconds;
        let mut rows: Vec<(String, f64)> = vec![];
        rows.push((
            "whisper log-mel (real length)".into(),
            secs / time_median(self.repeats, || {
                mel.compute(&samples, false);
                Ok(())
            })?,
        ));
        rows.push((
            "kaldi fbank 128".into(),
            secs / time_median(self.repeats, || {
                fbank.compute(&samples);
                Ok(())
            })?,
        ));
        for (real_length, name) in [
            (true, "whisper encoder, real length (features included)"),
            (false, "whisper encoder, padded to 30 s (features included)"),
        ] {
            encoder.real_length = real_length;
            rows.push((
                name.into(),
                secs / time_median(self.repeats, || {
                    encoder.encode(&samples)?;
                    Ok(())
                })?,
            ));
        }
        Ok(AudioReport {
            cpu: crate::report::cpu_description(),
            clip_seconds: secs,
            repeats: self.repeats,
            whisper: folder.file_name().map(|n| n.to_string_lossy().to_string()),
            threads: crate::threads(),
            stages: rows.iter().map(|(k, _)| k.clone()).collect(),
            audio_seconds_per_second: rows.into_iter().collect(),
        })
    }
}

impl AudioReport {
    /// The report as markdown, `command` the command line that made it.
    pub fn markdown(&self, command: &str) -> String {
        let mut md = format!(
            "# Audio front-end benchmark\n\n`{}`\n\nCPU: {}. {} s clip, median of {} runs, {} threads, Whisper `{}`.\n\n| stage | seconds of audio per second |\n|---|---|\n",
            command,
            self.cpu,
            self.clip_seconds,
            self.repeats,
            self.threads,
            self.whisper.as_deref().unwrap_or("")
        );
        for k in &self.stages {
            let v = self.audio_seconds_per_second[k];
            md.push_str(&format!("| {k} | {v:.1} |\n"));
        }
        md
    }
}
