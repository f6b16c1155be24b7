//! The picture of a probe: per split (panels two to a line), each row's accuracy (mean over seeds) with its 95%
//! interval as a horizontal bar, rows top to bottom as in the table.

use std::path::Path;

use plotters::prelude::*;

use crate::probe_table::Row;

/// Draws `rows` into a PNG at `out` (one panel per split).
pub fn plot(rows: &[Row], out: &Path) -> anyhow::Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let splits: Vec<String> = first.accuracy.keys().cloned().collect();
    let labels = pal_train::metrics::register_font();
    // Panels two to a line when there are several splits.
    let columns = splits.len().min(2);
    let lines = splits.len().div_ceil(columns);
    let height = 60 + 28 * rows.len() as u32;
    let size = (1000 * columns as u32, height * lines as u32);
    let root = BitMapBackend::new(out, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((lines, columns));
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.row, format!("{:?}", r.mode).to_uppercase()))
        .collect();
    for (panel, split) in panels.iter().zip(&splits) {
        let n = rows.len() as i32;
        let mut builder = ChartBuilder::on(panel);
        builder
            .margin(10)
            .x_label_area_size(if labels { 30 } else { 0 })
            .y_label_area_size(if labels { 330 } else { 0 });
        if labels {
            builder.caption(
                format!("{split}: accuracy, mean over seeds and 95% interval"),
                ("sans-serif", 18),
            );
        }
        let mut chart = builder
            .build_cartesian_2d(0.0f64..100.0, -1..n)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Row 0 at the top.
        let name_of = |y: &i32| {
            names
                .get((n - 1 - *y) as usize)
                .cloned()
                .unwrap_or_default()
        };
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.y_labels(rows.len() + 2)
                .y_label_formatter(&name_of)
                .x_desc("accuracy (%)");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let a = r.accuracy[split];
                let y = n - 1 - i as i32;
                let low = (100.0 * (a.mean - a.half_width)).max(0.0);
                let high = (100.0 * (a.mean + a.half_width)).min(100.0);
                ErrorBar::new_horizontal(y, low, 100.0 * a.mean, high, BLUE.filled(), 10)
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))
}
