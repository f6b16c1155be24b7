//! A probe's table: finished cells aggregated into rows (per split the mean over seeds with its
//! interval, each mode against PLITS seed by seed, Holm-corrected over the table's comparisons)
//! and the markdown page of them.

use std::collections::BTreeMap;

use pal_models::audio_llm::config::Route;
use serde::Serialize;

use crate::probe::CellResult;
use crate::stats::{holm, seed_paired, MeanCi, SeedPaired};

/// One row of the results: an encoder variant in one mode, over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Encoder variant.
    pub row: String,
    /// Mode.
    pub mode: Route,
    /// Seeds aggregated.
    pub seeds: Vec<u64>,
    /// Per split: accuracy mean over seeds with its 95% interval.
    pub accuracy: BTreeMap<String, MeanCi>,
    /// Per split: this mode against PLITS of the same encoder variant trained on the same
    /// seeds and scored on the same items, seed by seed (absent for PLITS and when PLITS was
    /// not run on the same seeds).
    pub against_plits: BTreeMap<String, SeedPaired>,
    /// The mean of the splits' accuracies (each split counts once), over seeds with its 95%
    /// interval: the headline.
    pub mean_accuracy: MeanCi,
    /// Against PLITS on the mean of the splits, seed by seed (absent as for `against_plits`).
    pub against_plits_mean: Option<SeedPaired>,
    /// Mean training time, seconds.
    pub train_s: f64,
    /// Mean of the cells' median step, seconds.
    pub step_s: f64,
    /// Largest peak RSS, MiB.
    pub peak_rss_mib: f64,
}

/// Aggregates finished cells into rows, in the order cells were listed.
pub fn aggregate(results: &[CellResult]) -> Vec<Row> {
    let mut keys: Vec<(String, Route)> = vec![];
    for r in results {
        let key = (r.cell.row.clone(), r.cell.mode);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let cells_of = |row: &str, mode: Route| -> Vec<&CellResult> {
        let mut v: Vec<&CellResult> = results
            .iter()
            .filter(|r| r.cell.row == row && r.cell.mode == mode)
            .collect();
        v.sort_by_key(|r| r.cell.seed);
        v
    };
    let mut rows: Vec<Row> = keys
        .iter()
        .map(|(row, mode)| {
            let cells = cells_of(row, *mode);
            let plits = cells_of(row, Route::Plits);
            let same_seeds = *mode != Route::Plits
                && plits.len() == cells.len()
                && plits
                    .iter()
                    .zip(&cells)
                    .all(|(p, c)| p.cell.seed == c.cell.seed);
            let splits: Vec<String> = cells[0].scores.keys().cloned().collect();
            // A cell's score on a split: the mean over its items.
            let score = |c: &CellResult, split: &str| {
                let v = &c.scores[split];
                v.iter().sum::<f64>() / v.len().max(1) as f64
            };
            let mean_of_splits = |c: &CellResult| {
                splits.iter().map(|s| score(c, s)).sum::<f64>() / splits.len() as f64
            };
            let mut accuracy = BTreeMap::new();
            let mut against_plits = BTreeMap::new();
            for split in &splits {
                let accs: Vec<f64> = cells.iter().map(|c| score(c, split)).collect();
                accuracy.insert(split.clone(), MeanCi::of(&accs));
                let same_items = same_seeds
                    && plits.iter().zip(&cells).all(|(p, c)| {
                        p.scores.get(split).map(Vec::len) == Some(c.scores[split].len())
                    });
                if same_items {
                    let base: Vec<f64> = plits.iter().map(|c| score(c, split)).collect();
                    against_plits.insert(split.clone(), seed_paired(&accs, &base));
                }
            }
            let means: Vec<f64> = cells.iter().map(|c| mean_of_splits(c)).collect();
            let against_plits_mean =
                (same_seeds && against_plits.len() == splits.len()).then(|| {
                    let base: Vec<f64> = plits.iter().map(|c| mean_of_splits(c)).collect();
                    seed_paired(&means, &base)
                });
            let mean = |f: &dyn Fn(&CellResult) -> f64| -> f64 {
                cells.iter().map(|c| f(c)).sum::<f64>() / cells.len() as f64
            };
            Row {
                row: row.clone(),
                mode: *mode,
                seeds: cells.iter().map(|c| c.cell.seed).collect(),
                accuracy,
                against_plits,
                mean_accuracy: MeanCi::of(&means),
                against_plits_mean,
                train_s: mean(&|c| c.train_s),
                step_s: mean(&|c| c.step_s),
                peak_rss_mib: cells.iter().map(|c| c.peak_rss_mib).fold(0.0, f64::max),
            }
        })
        .collect();
    // Every comparison of the grid is one of a family: Holm's correction decides which stay.
    let p_values: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.against_plits.values().chain(&r.against_plits_mean))
        .map(|p| p.p_value)
        .collect();
    let mut significant = holm(&p_values, 0.05).into_iter();
    for r in &mut rows {
        for p in r
            .against_plits
            .values_mut()
            .chain(r.against_plits_mean.as_mut())
        {
            p.real = significant.next().expect("one decision per comparison");
        }
    }
    rows
}

/// Comparisons a grid of `rows` makes (each split and the mean of splits, per row against
/// PLITS): what Holm's correction counts.
pub fn comparisons(rows: &[Row]) -> usize {
    rows.iter()
        .map(|r| r.against_plits.len() + r.against_plits_mean.is_some() as usize)
        .sum()
}

/// The rows as markdown: accuracy per split, the paired comparisons against PLITS, and each
/// row's training cost, one table each (so a suite of many splits stays readable).
pub fn markdown(rows: &[Row]) -> String {
    let splits: Vec<String> = rows
        .first()
        .map(|r| r.accuracy.keys().cloned().collect())
        .unwrap_or_default();
    let name = |r: &Row| format!("| {} | {} |", r.row, format!("{:?}", r.mode).to_uppercase());
    let header = |columns: Vec<String>| {
        format!(
            "| {} |\n|{}\n",
            columns.join(" | "),
            "---|".repeat(columns.len())
        )
    };
    let with = |first: &[&str], last: &[String]| -> Vec<String> {
        first
            .iter()
            .map(|c| c.to_string())
            .chain(last.iter().cloned())
            .collect()
    };
    let percent = |a: MeanCi| format!(" {} |", a.percent(0.0, 1.0));
    let versus = |p: Option<&SeedPaired>| match p {
        Some(p) => {
            let d = p.difference;
            let spread = match d.n {
                0 | 1 => "".to_string(),
                _ if d.half_width == 0.0 => " (no spread)".to_string(),
                _ => {
                    let (lo, hi) = d.bounds(-1.0, 1.0);
                    format!(" [{:+.1}, {:+.1}]", 100.0 * lo, 100.0 * hi)
                }
            };
            format!(
                " {:+.1}{spread}, {}/{} seeds ahead, p {:.2} ({}) |",
                100.0 * d.mean,
                p.a_better,
                d.n,
                p.p_value,
                if p.real { "real" } else { "undecided" }
            )
        }
        None => " - |".into(),
    };
    let mut columns = splits.clone();
    columns.push("mean of splits".into());
    let mut md = String::from("### Accuracy\n\n");
    md.push_str(&header(with(&["model", "mode", "seeds"], &columns)));
    for r in rows {
        md.push_str(&format!("{} {} |", name(r), r.seeds.len()));
        for s in &splits {
            md.push_str(&percent(r.accuracy[s]));
        }
        md.push_str(&percent(r.mean_accuracy));
        md.push('\n');
    }
    let mut columns = splits.clone();
    columns.push("mean of splits".into());
    md.push_str(&format!(
        "\n### Against PLITS (paired by seed: same LLM, encoder variant, seeds and items; {} comparisons, Holm)\n\n",
        comparisons(rows)
    ));
    md.push_str(&header(with(&["model", "mode"], &columns)));
    for r in rows.iter().filter(|r| !r.against_plits.is_empty()) {
        md.push_str(&name(r));
        for s in &splits {
            md.push_str(&versus(r.against_plits.get(s)));
        }
        md.push_str(&versus(r.against_plits_mean.as_ref()));
        md.push('\n');
    }
    md.push_str("\n### Training cost (this machine)\n\n");
    md.push_str(&header(with(
        &["model", "mode", "train time", "median step", "peak RSS"],
        &[],
    )));
    for r in rows {
        md.push_str(&format!(
            "{} {:.0} s | {:.3} s | {:.0} MiB |\n",
            name(r),
            r.train_s,
            r.step_s,
            r.peak_rss_mib
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Cell;
    use pal_models::encoders::LayerSelection;

    fn result(mode: Route, seed: u64, digits: &[bool], sounds: &[bool]) -> CellResult {
        let scores = |v: &[bool]| v.iter().map(|&x| x as u8 as f64).collect::<Vec<f64>>();
        CellResult {
            cell: Cell {
                row: "enc".into(),
                mode,
                seed,
                layer: LayerSelection::default(),
                lal_start: 15,
                encoder: "enc".into(),
                llm: String::new(),
            },
            scores: BTreeMap::from([
                ("digits".to_string(), scores(digits)),
                ("sounds".to_string(), scores(sounds)),
            ]),
            train_s: 10.0 + seed as f64,
            step_s: 0.5,
            peak_rss_mib: 100.0 * (1 + seed) as f64,
            suite_digest: String::new(),
        }
    }

    #[test]
    fn rows_average_splits_per_seed_and_pool_items_against_plits() {
        let (t, f) = (true, false);
        let results = [
            result(Route::Plits, 0, &[t, t, f, f], &[f, f]),
            result(Route::Plits, 1, &[t, t, t, f], &[t, f]),
            result(Route::Lal, 0, &[t, t, t, f], &[t, f]),
            result(Route::Lal, 1, &[t, t, t, t], &[t, t]),
        ];
        let rows = aggregate(&results);
        assert_eq!(rows.len(), 2);
        let lal = &rows[1];
        // Per seed: (3/4 + 1/2) / 2 = 0.625 and (1 + 1) / 2 = 1; their mean is 0.8125, and the
        // t interval of two values is 12.706 * |1 - 0.625| / 2.
        assert!((lal.mean_accuracy.mean - 0.8125).abs() < 1e-12);
        assert!((lal.mean_accuracy.half_width - 12.706 * 0.375 / 2.0).abs() < 1e-3);
        // Against PLITS seed by seed: the mean of splits is 0.625 - 0.25 and 1 - 0.625, the same
        // 0.375 on both seeds (no spread: certain), one number per seed however many items.
        let mean = lal
            .against_plits_mean
            .as_ref()
            .expect("PLITS ran on the same seeds");
        assert_eq!(mean.difference.n, 2);
        assert_eq!((mean.a_better, mean.b_better), (2, 0));
        assert!((mean.difference.mean - 0.375).abs() < 1e-12);
        assert!(mean.real && mean.p_value == 0.0);
        assert!(rows[0].against_plits_mean.is_none());
        assert_eq!(comparisons(&rows), 3);
        assert_eq!(rows[1].peak_rss_mib, 200.0);
        let md = markdown(&rows);
        assert!(md.contains("| model | mode | seeds | digits | sounds | mean of splits |"));
        assert!(
            md.contains("| enc | LAL | 2 | 87.5% [0.0, 100.0] |"),
            "{md}"
        );
        assert!(
            md.contains("| enc | LAL | +25.0 (no spread), 2/2 seeds ahead, p 0.00 (real) |"),
            "{md}"
        );
        assert!(md.contains("3 comparisons, Holm"), "{md}");
    }

    #[test]
    fn a_lucky_seed_is_not_a_real_difference() {
        // The case: PLITS at 0 on every seed, LAL right on 0, 1 and 5 of 20 items.
        let (t, f) = (true, false);
        let items = |right: usize| -> Vec<bool> { (0..20).map(|i| i < right).collect() };
        let results = [
            result(Route::Plits, 0, &[f; 20], &[f, f]),
            result(Route::Plits, 1, &[f; 20], &[f, f]),
            result(Route::Plits, 2, &[f; 20], &[f, f]),
            result(Route::Lal, 0, &items(0), &[f, f]),
            result(Route::Lal, 1, &items(1), &[t, f]),
            result(Route::Lal, 2, &items(5), &[f, f]),
        ];
        let rows = aggregate(&results);
        let digits = &rows[1].against_plits["digits"];
        // Pooled over 60 item-seed pairs this would be 6 wins and no loss: "real". Over 3
        // seeds it is 0, 0.05 and 0.25, and the interval crosses 0.
        assert!(!digits.real && digits.p_value > 0.05, "{digits:?}");
        assert!(digits.difference.half_width > digits.difference.mean);
    }
}
