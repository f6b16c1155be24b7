//! The modes sweep's plot: training throughput relative to PLITS and step memory against Na,
//! measured beside the cost model's predictions.

use std::path::Path;

use pal_models::audio_llm::Route;
use plotters::prelude::*;

use super::report::{Entry, Implementation, ModesReport, Task};

/// Throughput relative to PLITS (measured and predicted by the cost model) and step memory
/// (measured and predicted activations) against Na, for the frozen-backbone training step.
pub fn draw(report: &ModesReport, out: &Path) -> anyhow::Result<()> {
    let labels = pal_train::metrics::register_font();
    let entries: Vec<&Entry> = report
        .measurements
        .iter()
        .filter(|e| {
            e.task == Task::Train
                && e.implementation == Implementation::Pal
                && e.variant == "adapter"
        })
        .collect();
    let series = |route: Route, value: fn(&Entry) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = entries
            .iter()
            .filter(|e| e.mode == route)
            .filter_map(|e| Some((e.audio_tokens as f64, value(e)?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let step = |e: &Entry| e.step_seconds;
    let flops = |e: &Entry| e.predicted_train_flops;
    let memory = |e: &Entry| e.step_memory_bytes;
    let activations = |e: &Entry| e.predicted_activation_bytes;
    let plits_time = series(Route::Plits, step);
    let plits_flops = series(Route::Plits, flops);
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
        .map(|e| e.audio_tokens as f64)
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(out, (1000, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let colors = [(Route::Plits, RED), (Route::Lal, BLUE), (Route::Pal, GREEN)];
    // Left: training throughput relative to PLITS (measured solid, cost model dashed).
    let mut top = 1.0f64;
    for (mode, _) in colors {
        for (_, v) in relative(series(mode, step), &plits_time, true)
            .into_iter()
            .chain(relative(series(mode, flops), &plits_flops, true))
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
        let measured = relative(series(mode, step), &plits_time, true);
        let predicted = relative(series(mode, flops), &plits_flops, true);
        let drawn = chart.draw_series(LineSeries::new(measured.clone(), color.stroke_width(2)))?;
        if labels {
            drawn
                .label(format!("{mode:?}").to_lowercase())
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
        for (_, v) in mib(series(mode, memory))
            .into_iter()
            .chain(mib(series(mode, activations)))
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
        let measured = mib(series(mode, memory));
        chart.draw_series(LineSeries::new(measured.clone(), color.stroke_width(2)))?;
        chart.draw_series(measured.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart.draw_series(DashedLineSeries::new(
            mib(series(mode, activations)),
            6,
            4,
            color.into(),
        ))?;
    }
    root.present()?;
    Ok(())
}
