//! `pal bench long-audio`: one question about recordings of 30 s to an hour, per model config
//! (LAL, pooled LAL, PAL, PLITS), each length and model in a process of its own: peak memory,
//! the encoding (the recording decoded and encoded window by window as it is read, as `pal ask`
//! does), the first answer token and the decoding rate, beside the cost model's prediction of
//! the prefill and of the audio's keys and values. A model that cannot take a length (PLITS past
//! the LLM's context) says why in its row.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use pal_infer::ask::{ask_encoded, encode_file};
use pal_infer::GenerationParams;
use pal_models::audio_llm::build::load_run_for_inference;
use pal_models::audio_llm::config::ConnectorConfig;
use pal_models::audio_llm::{ModelConfig, Route};
use pal_models::WeightForm;
use pal_nn::{ComputeDevice, ComputeDtype};
use serde::{Deserialize, Serialize};

use crate::cost::{cost, CostMode, Shapes};

/// One measurement, made in a child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LongAudioJob {
    /// The run folder (an untrained run of the config: the cost does not depend on weights).
    pub run: PathBuf,
    /// The recording (16 kHz WAV).
    pub wav: PathBuf,
    /// The question.
    pub question: String,
    /// Tokens decoded (greedy).
    pub max_tokens: usize,
}

/// What a child measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LongAudioResult {
    /// Seconds from the start to the last window encoded (decoding the file included).
    pub encode_s: f64,
    /// Seconds from the start to the first answer token.
    pub first_token_s: f64,
    /// Tokens per second after the first.
    pub decode_tokens_per_s: f64,
    /// Tokens generated.
    pub tokens: usize,
    /// Encoder outputs (audio rows) of the clip.
    pub audio_rows: usize,
    /// Positions the prompt takes (audio in the sequence included).
    pub prompt_positions: usize,
    /// Peak resident memory of the process (VmHWM), MB.
    pub peak_rss_mb: f64,
    /// Bytes the clip's keys and values and encoder outputs take, MB.
    pub clip_mb: f64,
    /// The cost model: GFLOPs of the prefill (the audio's path and the prompt).
    pub predicted_prefill_gflops: f64,
    /// The cost model: MB of the audio's keys and values (bf16 where the CPU has a bf16 kernel,
    /// as pal holds them there; f32 elsewhere) and encoder outputs.
    pub predicted_clip_mb: f64,
}

/// Measures `job` (in the calling process).
pub fn run_child(job: &LongAudioJob) -> anyhow::Result<LongAudioResult> {
    let built = load_run_for_inference(
        &job.run,
        WeightForm::Auto,
        ComputeDevice::Cpu,
        ComputeDtype::Auto,
    )?;
    let start = Instant::now();
    let (audio, lal) = encode_file(&built, &job.wav)?;
    let encode_s = start.elapsed().as_secs_f64();
    let audio_rows = audio.first().map_or(0, |a| a.dims()[0]);
    let clip_mb = (lal.bytes() + audio.iter().map(|a| a.elem_count() * 4).sum::<usize>()) as f64
        / (1 << 20) as f64;
    let segments = pal_infer::ask::question_segments(&built, &job.question, 1)?;
    let example = pal_models::audio_llm::Example::one_clip(segments, audio.clone());
    let prompt_positions = built.model.prompt_positions(&example)?;
    let params = GenerationParams {
        max_tokens: job.max_tokens,
        ..GenerationParams::default()
    };
    let config = ModelConfig::load(&job.run.join("model.toml"))?;
    let key_bytes = if built.model.llm.bf16_prefix { 2 } else { 4 };
    let text = prompt_positions.saturating_sub(in_sequence_rows(&built, &audio));
    let (predicted_prefill_gflops, predicted_clip_mb) = prediction(
        &config,
        &built.model.llm.config,
        audio_rows,
        text,
        key_bytes,
    );
    let mut first = None;
    let answer = ask_encoded(&built, audio, &lal, &job.question, &params, |_| {
        first.get_or_insert_with(Instant::now);
    })?;
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let tokens = answer.tokens.len();
    Ok(LongAudioResult {
        encode_s,
        first_token_s: (first - start).as_secs_f64(),
        decode_tokens_per_s: tokens.saturating_sub(1) as f64
            / (end - first).as_secs_f64().max(1e-9),
        tokens,
        audio_rows,
        prompt_positions,
        peak_rss_mb: peak_rss_mb(),
        clip_mb,
        predicted_prefill_gflops,
        predicted_clip_mb,
    })
}

/// Rows the clip's in-sequence tokens (PLITS, PAL's summary) take.
fn in_sequence_rows(
    built: &pal_models::audio_llm::BuiltModel,
    audio: &[candle_core::Tensor],
) -> usize {
    built
        .model
        .encoders
        .iter()
        .zip(audio)
        .filter_map(|(e, a)| e.in_sequence.as_ref().map(|c| c.output_len(a.dims()[0])))
        .sum()
}

/// The process's peak resident memory (`VmHWM` in `/proc/self/status`), MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct LongAudioRow {
    /// The model's label.
    pub model: String,
    /// Minutes of audio.
    pub minutes: f64,
    /// The measurement, or why there is none.
    pub result: Result<LongAudioResult, String>,
}

/// The report (`PREFIX.json`).
#[derive(Debug, Clone, Serialize)]
pub struct LongAudioReport {
    /// How it was run.
    pub command: String,
    /// The CPU.
    pub cpu: String,
    /// Each model's label and config file's text.
    pub models: Vec<(String, String)>,
    /// One row per model and length.
    pub rows: Vec<LongAudioRow>,
}

/// What to measure.
pub struct LongAudioBench {
    /// Each model's label and config file (run untrained).
    pub models: Vec<(String, PathBuf)>,
    /// Lengths, in minutes.
    pub minutes: Vec<f64>,
    /// Speech clips (16 kHz WAV) the recordings repeat.
    pub clips: Vec<PathBuf>,
    /// The question.
    pub question: String,
    /// Tokens decoded.
    pub max_tokens: usize,
}

impl LongAudioBench {
    /// Measures every model at every length, each in a child started by `launch` (which must
    /// run [`run_child`] and print its result as the last line).
    pub fn run(
        &self,
        launch: &dyn Fn(&LongAudioJob) -> std::process::Command,
        command: String,
    ) -> anyhow::Result<LongAudioReport> {
        let scratch = tempfile::tempdir()?;
        let mut runs = vec![];
        let mut models = vec![];
        for (label, path) in &self.models {
            let config = ModelConfig::load(path)?;
            let base = path.parent().unwrap_or(Path::new("."));
            let dir = scratch.path().join(label);
            pal_models::audio_llm::write_untrained_run(&config, base, &dir)?;
            runs.push((label.clone(), dir));
            models.push((label.clone(), std::fs::read_to_string(path)?));
        }
        let mut rows = vec![];
        for &minutes in &self.minutes {
            let wav = scratch.path().join("speech.wav");
            write_speech(&self.clips, minutes * 60.0, &wav)?;
            for (label, run) in &runs {
                let job = LongAudioJob {
                    run: run.clone(),
                    wav: wav.clone(),
                    question: self.question.clone(),
                    max_tokens: self.max_tokens,
                };
                let result = crate::report::json_child::<LongAudioResult>(launch(&job), label)
                    .map_err(|e| refusal(&e.to_string()));
                eprintln!("{label}, {minutes} min: {result:?}");
                rows.push(LongAudioRow {
                    model: label.clone(),
                    minutes,
                    result,
                });
            }
        }
        Ok(LongAudioReport {
            command,
            cpu: crate::report::cpu_description(),
            models,
            rows,
        })
    }
}

/// The error a child ended with (its last `Error:` and causes), in one line.
fn refusal(stderr: &str) -> String {
    let from = stderr.rfind("Error:").map_or(0, |i| i + "Error:".len());
    let to = stderr[from..]
        .find("Stack backtrace")
        .map_or(stderr.len(), |i| from + i);
    stderr[from..to]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(400)
        .collect()
}

/// The cost model's prefill GFLOPs and clip MB for `config` at `rows` audio rows and `text`
/// prompt tokens.
pub fn prediction(
    config: &ModelConfig,
    llm: &pal_models::LlamaConfig,
    rows: usize,
    text: usize,
    key_bytes: usize,
) -> (f64, f64) {
    let spec = &config.encoders[0];
    let d_enc = 384;
    let lal_layers = llm.num_hidden_layers.saturating_sub(spec.lal.start);
    let tokens = |c: &ConnectorConfig| match c {
        ConnectorConfig::Mlp { stack } => *stack,
        ConnectorConfig::Latent { queries, .. } => *queries,
    };
    let mode = match spec.route {
        Route::Plits => CostMode::Plits {
            stack: tokens(&spec.connector),
        },
        Route::Lal => CostMode::Lal { layers: lal_layers },
        Route::Pal => CostMode::Pal {
            layers: lal_layers,
            summary: tokens(&spec.summary),
        },
    };
    let shapes = Shapes {
        batch: 1,
        audio_tokens: rows,
        text_tokens: text,
        d_enc,
    };
    let flops = cost(llm, mode, shapes, 4).forward_flops;
    let kv = match spec.route {
        Route::Plits => 0.0,
        _ => (rows * lal_layers * 2 * llm.num_key_value_heads * llm.head_dim * key_bytes) as f64,
    };
    let outputs = (rows * d_enc * 4) as f64;
    (flops / 1e9, (kv + outputs) / (1 << 20) as f64)
}

/// Writes `seconds` of speech (the `clips`, 16 kHz mono WAV, one after another, repeated) to
/// `path` as a 16 kHz 16-bit WAV.
pub fn write_speech(clips: &[PathBuf], seconds: f64, path: &Path) -> anyhow::Result<()> {
    let mut speech = vec![];
    for clip in clips {
        let audio = pal_audio::load_audio(clip)?.to_16k(&clip.display().to_string())?;
        speech.extend(audio.samples);
    }
    anyhow::ensure!(!speech.is_empty(), "no speech to repeat");
    let total = (seconds * 16000.0) as usize;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    use std::io::Write;
    let data_bytes = (total * 2) as u32;
    file.write_all(b"RIFF")?;
    file.write_all(&(36 + data_bytes).to_le_bytes())?;
    file.write_all(b"WAVEfmt ")?;
    file.write_all(&16u32.to_le_bytes())?;
    file.write_all(&1u16.to_le_bytes())?;
    file.write_all(&1u16.to_le_bytes())?;
    file.write_all(&16000u32.to_le_bytes())?;
    file.write_all(&32000u32.to_le_bytes())?;
    file.write_all(&2u16.to_le_bytes())?;
    file.write_all(&16u16.to_le_bytes())?;
    file.write_all(b"data")?;
    file.write_all(&data_bytes.to_le_bytes())?;
    for i in 0..total {
        let s = (speech[i % speech.len()].clamp(-1.0, 1.0) * 32767.0) as i16;
        file.write_all(&s.to_le_bytes())?;
    }
    Ok(())
}

/// The report as markdown, showing the plot file `plot` (beside it).
pub fn markdown(report: &LongAudioReport, plot: &str) -> String {
    let (rows, command, cpu) = (&report.rows, &report.command, &report.cpu);
    let mut md = format!(
        "# Long recordings: one question about 30 s to an hour of audio\n\n`{command}`\n\nCPU: {cpu}. \
         Each length and model in a process of its own: the recording (speech, repeated) \
         decoded and encoded window by window as it is read (`pal ask`'s path), then the \
         question and a greedy answer. *First token* counts from the start (the file's decoding \
         and every window's encoding included). *Peak memory* is the process's (model \
         included). *Predicted*: the cost model's prefill FLOPs, and the audio's keys, values \
         and encoder outputs in bytes. Untrained adapters (`pal init`): the costs do not depend \
         on the weights.\n\n\
         | model | audio | encode (s) | first token (s) | decode (tokens/s) | peak memory (MB) | clip (MB) | predicted clip (MB) | predicted prefill (GFLOP) | audio rows | prompt positions |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let minutes = if r.minutes < 1.0 {
            format!("{:.0} s", r.minutes * 60.0)
        } else {
            format!("{:.0} min", r.minutes)
        };
        match &r.result {
            Ok(m) => md.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {} |\n",
                r.model,
                minutes,
                m.encode_s,
                m.first_token_s,
                m.decode_tokens_per_s,
                m.peak_rss_mb,
                m.clip_mb,
                m.predicted_clip_mb,
                m.predicted_prefill_gflops,
                m.audio_rows,
                m.prompt_positions,
            )),
            Err(e) => md.push_str(&format!(
                "| {} | {} | refused: {} | | | | | | | | |\n",
                r.model,
                minutes,
                e.replace('|', "/"),
            )),
        }
    }
    md.push_str(&format!(
        "\n![first token and peak memory against length]({plot})\n"
    ));
    md.push_str("\nThe models (their `model.toml`):\n");
    for (label, toml) in &report.models {
        md.push_str(&format!("\n**{label}**\n\n```toml\n{}\n```\n", toml.trim()));
    }
    md
}

/// The plot: first token (from the start) and peak memory against the recording's length, one
/// line per model (refused lengths left out).
pub fn draw(report: &LongAudioReport, out: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let labels = pal_train::metrics::register_font();
    let mut models: Vec<&str> = vec![];
    for r in &report.rows {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    let series = |model: &str, value: fn(&LongAudioResult) -> f64| -> Vec<(f64, f64)> {
        report
            .rows
            .iter()
            .filter(|r| r.model == model)
            .filter_map(|r| Some((r.minutes, value(r.result.as_ref().ok()?))))
            .collect()
    };
    let colors = [BLUE, CYAN, GREEN, RED, MAGENTA, BLACK];
    let max_minutes = report.rows.iter().map(|r| r.minutes).fold(1.0, f64::max);
    let root = BitMapBackend::new(out, (1000, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    type Value = fn(&LongAudioResult) -> f64;
    let panels: [(_, &str, Value); 2] = [
        (left, "first token (s) against minutes of audio", |m| {
            m.first_token_s
        }),
        (right, "peak memory (MB) against minutes of audio", |m| {
            m.peak_rss_mb
        }),
    ];
    for (area, caption, value) in panels {
        let top = models
            .iter()
            .flat_map(|m| series(m, value))
            .map(|p| p.1)
            .fold(1.0, f64::max);
        let mut builder = ChartBuilder::on(&area);
        builder
            .margin(15)
            .x_label_area_size(if labels { 35 } else { 0 })
            .y_label_area_size(if labels { 55 } else { 0 });
        if labels {
            builder.caption(caption, ("sans-serif", 16));
        }
        let mut chart = builder.build_cartesian_2d(0f64..max_minutes * 1.05, 0f64..top * 1.1)?;
        let mut mesh = chart.configure_mesh();
        if !labels {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.x_desc("minutes").draw()?;
        for (model, color) in models.iter().zip(colors.iter().cycle()) {
            let points = series(model, value);
            let drawn =
                chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
            if labels {
                let color = *color;
                drawn
                    .label(*model)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if labels {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE)
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
