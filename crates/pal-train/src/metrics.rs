//! The metrics log (JSONL, one line per optimizer step) and its plot (loss and learning rate
//! against step, PNG), rewritten at every checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// Global step (1-based).
    pub step: u64,
    /// Stage name.
    pub stage: String,
    /// Mean loss over the step's trained tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Examples per second over this step.
    pub samples_per_s: f64,
    /// Trained tokens in the step.
    pub tokens: usize,
    /// Seconds of the whole step.
    #[serde(default)]
    pub step_s: f64,
    /// Seconds of the step spent summing gradients across ranks (0 in one process).
    #[serde(default)]
    pub allreduce_s: f64,
}

/// Appends metrics lines to `metrics.jsonl` in the run folder.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log of a run folder. On resume, lines after `keep_until` (steps that were redone)
    /// are dropped so the log has each step once.
    pub fn open(run: &Path, keep_until: u64) -> Result<Self, TrainError> {
        let path = run.join("metrics.jsonl");
        if path.exists() {
            let kept: Vec<String> = read(&path)?
                .into_iter()
                .filter(|m| m.step <= keep_until)
                .map(|m| serde_json::to_string(&m).expect("serialises"))
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(&path, text).map_err(|e| TrainError::Io(path.clone(), e))?;
        }
        Ok(Self { path })
    }

    /// Appends one line.
    pub fn append(&self, m: &StepMetrics) -> Result<(), TrainError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::Io(self.path.clone(), e))?;
        writeln!(f, "{}", serde_json::to_string(m).expect("serialises"))
            .map_err(|e| TrainError::Io(self.path.clone(), e))
    }

    /// Path of the log.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// All lines of a metrics log.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io(path.to_path_buf(), e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Config(path.to_path_buf(), format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Registers a system font for plot labels; false when none is found (plots then have no text).
pub fn register_font() -> bool {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws loss (top) and learning rate (bottom) against step into a PNG.
pub fn plot(metrics: &[StepMetrics], out: &Path) -> Result<(), TrainError> {
    if metrics.is_empty() {
        return Ok(());
    }
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let labels = *FONT.get_or_init(register_font);
    let err = |e: String| TrainError::Io(out.to_path_buf(), std::io::Error::other(e));
    let root = BitMapBackend::new(out, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (top, bottom) = root.split_vertically(400);
    let last = metrics.last().map(|m| m.step).unwrap_or(1).max(1);
    let series = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                  name: &str,
                  values: Vec<(u64, f64)>,
                  color: RGBColor|
     -> Result<(), TrainError> {
        let max = values
            .iter()
            .map(|v| v.1)
            .fold(f64::MIN, f64::max)
            .max(1e-12);
        let min = values.iter().map(|v| v.1).fold(f64::MAX, f64::min).min(0.0);
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(10)
            .x_label_area_size(if labels { 30 } else { 0 })
            .y_label_area_size(if labels { 60 } else { 0 });
        if labels {
            builder.caption(name, ("sans-serif", 18));
        }
        let mut chart = builder
            .build_cartesian_2d(0u64..last, min..max * 1.05)
            .map_err(|e| err(e.to_string()))?;
        let mut mesh = chart.configure_mesh();
        if !labels {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.x_desc("step").draw().map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(values, &color))
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    };
    series(
        &top,
        "training loss",
        metrics.iter().map(|m| (m.step, m.loss)).collect(),
        RED,
    )?;
    series(
        &bottom,
        "learning rate",
        metrics.iter().map(|m| (m.step, m.lr)).collect(),
        BLUE,
    )?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Peak and current resident memory of this process, in bytes (Linux `/proc`; zeros elsewhere).
pub fn memory_bytes() -> (u64, u64) {
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
