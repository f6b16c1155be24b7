//! `pal probe --suite SUITE.toml`: LLMs x encoders x integration modes x seeds (and sweeps of
//! the encoder layer and the LAL start layer), each cell trained with the suite's curriculum and
//! evaluated on every held-out split in its own folder, then aggregated ([`crate::probe_table`]):
//! per split the mean over seeds with a 95% interval, a paired comparison of each mode against
//! PLITS on the same items and seeds, and each cell's training cost. A cell is done when its `cell.json` exists, so a killed
//! probe continues with the cells that are not.
//!
//! ```toml
//! output = "../../runs/probe"        # relative to this file
//! curriculum = "curriculum.toml"      # its stages train every cell (model and output are replaced)
//! llm = "asset:smollm2-135m-instruct"
//! seeds = [0, 1, 2]                   # adapter initialisation and batch order
//! modes = ["plits", "lal", "pal"]
//! lal_start = 15                      # first LAL layer of lal and pal cells
//!
//! # or, instead of llm and lal_start, several LLMs (rows become "LLM + encoder"):
//! # [[llms]]
//! # name = "SmolLM2-135M"
//! # path = "asset:smollm2-135m-instruct"
//! # lal_start = 15
//!
//! [[splits]]
//! name = "fsdd"
//! manifest = "../../data/fsdd/test.jsonl"   # or: shards = "features/fsdd-test"
//!
//! [[encoders]]
//! name = "whisper-tiny.en"
//! kind = "whisper"                    # whisper | ast | shards (an external encoder's shard set)
//! path = "asset:whisper-tiny.en"
//!
//! [sweeps]                            # optional, LAL cells of one encoder (and the first LLM)
//! encoder = "whisper-tiny.en"
//! layers = [{ index = 2 }, { index = 3 }]
//! lal_starts = [0, 8, 22]
//! seeds = [0, 1]                      # optional: fewer seeds for the sweep cells
//! ```
//!
//! The cells share one encoder-output cache (`OUTPUT/cache`), so each clip is encoded once per
//! encoder variant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pal_models::audio_llm::config::{
    default_summary, ConnectorConfig, EncoderKind, EncoderSpec, LalConfig, LlmSpec, ModelConfig,
    Route,
};
use pal_models::encoders::{LayerSelection, WindowPolicy};
use serde::{Deserialize, Serialize};

use crate::metrics::word_error_rate;

/// The suite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Results folder (cells, `probe.json`, `probe.md`).
    pub output: PathBuf,
    /// Curriculum whose stages train every cell.
    pub curriculum: PathBuf,
    /// The LLM (a suite of one LLM; see `llms`).
    #[serde(default)]
    pub llm: Option<String>,
    /// Several LLMs, each with its own LAL start: every encoder and mode is probed on each.
    #[serde(default)]
    pub llms: Vec<ProbeLlm>,
    /// Seeds: each cell is trained once per seed.
    pub seeds: Vec<u64>,
    /// Integration modes.
    pub modes: Vec<Route>,
    /// First LAL layer of `lal` and `pal` cells (with `llm`).
    #[serde(default)]
    pub lal_start: usize,
    /// Held-out splits.
    pub splits: Vec<Split>,
    /// Encoders (none: a suite whose encoders are all given from Python, `pal.probe`).
    #[serde(default)]
    pub encoders: Vec<ProbeEncoder>,
    /// Sweeps of one encoder's layer and of the LAL start (LAL cells).
    #[serde(default)]
    pub sweeps: Option<Sweeps>,
}

/// An LLM of a suite of several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLlm {
    /// Name (the first part of its rows: `NAME + ENCODER`).
    pub name: String,
    /// `.gguf` file, Hugging Face folder, or `asset:NAME`.
    pub path: String,
    /// First LAL layer of its `lal` and `pal` cells (about half its depth, as `lal_start` in a
    /// suite of one).
    pub lal_start: usize,
    /// The encoders (by name) it is probed with; default: every encoder of the suite.
    #[serde(default)]
    pub encoders: Option<Vec<String>>,
}

/// A held-out split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Name (a column of the results).
    pub name: String,
    /// A JSONL manifest...
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// ...or a shard set (needed for external encoders).
    #[serde(default)]
    pub shards: Option<PathBuf>,
    /// How an answer is scored.
    #[serde(default)]
    pub score: Scoring,
}

/// How a split's answers are scored, per item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// 1 when `pal eval` judges the answer correct, else 0 (closed answers: labels, digits).
    #[default]
    Correct,
    /// `max(0, 1 - WER)` of the answer against the reference: graded credit for transcripts,
    /// where an exact sentence is too coarse a measure after a short training.
    WordAccuracy,
}

impl Scoring {
    /// The score of one `pal eval --json` item (`correct`, `reference`, `answer`).
    pub fn of(self, item: &serde_json::Value) -> f64 {
        match self {
            Self::Correct => (item["correct"].as_bool() == Some(true)) as u8 as f64,
            Self::WordAccuracy => {
                let text = |k: &str| item[k].as_str().unwrap_or_default();
                (1.0 - word_error_rate(&[(text("reference"), text("answer"))])).max(0.0)
            }
        }
    }
}

/// An encoder of the grid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeEncoder {
    /// Name (a row of the results).
    pub name: String,
    /// Family.
    pub kind: EncoderKind,
    /// Folder, `asset:NAME`, or shard set.
    pub path: String,
    /// Hidden state.
    #[serde(default)]
    pub layer: LayerSelection,
}

/// Sweeps, each value a row of LAL cells.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweeps {
    /// The encoder swept.
    pub encoder: String,
    /// Encoder hidden states.
    #[serde(default)]
    pub layers: Vec<LayerSelection>,
    /// LAL start layers.
    #[serde(default)]
    pub lal_starts: Vec<usize>,
    /// Seeds of the sweep cells (default: the suite's).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
}

/// One trained-and-evaluated model of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Row: LLM (in a suite of several), encoder and variant (`whisper-tiny.en`,
    /// `whisper-tiny.en layer 2`, `Gemma3-270M + whisper-tiny.en`, ...).
    pub row: String,
    /// The LLM's name in a suite of several (empty in a suite of one).
    #[serde(default)]
    pub llm: String,
    /// Mode.
    pub mode: Route,
    /// Seed.
    pub seed: u64,
    /// Encoder hidden state.
    pub layer: LayerSelection,
    /// First LAL layer.
    pub lal_start: usize,
    /// The encoder.
    pub encoder: String,
}

impl Cell {
    /// Folder name under the output folder.
    pub fn folder(&self) -> String {
        let clean: String = self
            .row
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{clean}/{:?}/seed-{}", self.mode, self.seed).to_lowercase()
    }
}

/// What a finished cell recorded (`cell.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    /// The cell.
    pub cell: Cell,
    /// Per split: each item's score ([`Scoring`]: 1 or 0, or word accuracy), in split order.
    pub scores: BTreeMap<String, Vec<f64>>,
    /// Training wall time, seconds.
    pub train_s: f64,
    /// Median optimizer step, seconds.
    pub step_s: f64,
    /// Peak RSS of training, MiB.
    pub peak_rss_mib: f64,
    /// [`Suite::digest`] when the cell ran: a cell is reused only under the same training and
    /// splits.
    #[serde(default)]
    pub suite_digest: String,
}

impl Suite {
    /// SHA-256 of what a cell's result depends on besides the cell itself: the curriculum file
    /// and every split's name and manifest (or shard index). Editing any of them makes `pal
    /// probe` run the cells again instead of reusing results of another experiment.
    pub fn digest(&self, base: &Path) -> anyhow::Result<String> {
        use sha2::{Digest, Sha256};
        let read = |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
        let mut hash = Sha256::new();
        hash.update(read(&base.join(&self.curriculum))?);
        for split in &self.splits {
            hash.update(split.name.as_bytes());
            let file = match (&split.manifest, &split.shards) {
                (Some(m), _) => base.join(m),
                (None, Some(sh)) => base.join(sh).join("index.json"),
                (None, None) => unreachable!("checked at load"),
            };
            hash.update(read(&file)?);
        }
        Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Reads a suite; errors name the file and field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let suite: Suite = pal_models::formats::config_toml::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if suite.llm.is_some() != suite.llms.is_empty() {
            anyhow::bail!(
                "{}: give the LLM as llm = \"...\" (one) or as [[llms]] tables (several), not both or neither",
                path.display()
            );
        }
        if !suite.llms.is_empty() && suite.lal_start != 0 {
            anyhow::bail!(
                "{}: lal_start goes in each [[llms]] table when the suite has several LLMs",
                path.display()
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for llm in &suite.llms {
            if llm.name.is_empty() || !names.insert(llm.name.to_lowercase()) {
                anyhow::bail!(
                    "{}: [[llms]] name '{}' is empty or used twice (names are compared ignoring case: they name the cells' folders)",
                    path.display(),
                    llm.name
                );
            }
            for name in llm.encoders.iter().flatten() {
                if !suite.encoders.iter().any(|e| &e.name == name) {
                    anyhow::bail!(
                        "{}: [[llms]] '{}' names encoder '{name}', which the suite does not have",
                        path.display(),
                        llm.name
                    );
                }
            }
        }
        if suite.seeds.is_empty() || suite.modes.is_empty() || suite.splits.is_empty() {
            anyhow::bail!(
                "{}: seeds, modes and splits must not be empty",
                path.display()
            );
        }
        for s in &suite.splits {
            if s.manifest.is_some() == s.shards.is_some() {
                anyhow::bail!(
                    "{}: split '{}': give one of manifest or shards",
                    path.display(),
                    s.name
                );
            }
        }
        Ok(suite)
    }

    /// The suite's LLMs: its `[[llms]]`, or its one `llm` (named "": rows name the encoder only).
    pub fn llm_list(&self) -> Vec<ProbeLlm> {
        match &self.llm {
            Some(path) => vec![ProbeLlm {
                name: String::new(),
                path: path.clone(),
                lal_start: self.lal_start,
                encoders: None,
            }],
            None => self.llms.clone(),
        }
    }

    /// Every cell: the grid (per LLM), then the sweeps (on the first LLM).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = vec![];
        let mut push = |llm: &ProbeLlm,
                        row: String,
                        e: &ProbeEncoder,
                        mode,
                        layer,
                        lal_start,
                        seeds: &[u64]| {
            let row = match llm.name.as_str() {
                "" => row,
                name => format!("{name} + {row}"),
            };
            for &seed in seeds {
                cells.push(Cell {
                    row: row.clone(),
                    llm: llm.name.clone(),
                    mode,
                    seed,
                    layer,
                    lal_start,
                    encoder: e.name.clone(),
                });
            }
        };
        let llms = self.llm_list();
        for llm in &llms {
            let probed = |e: &&ProbeEncoder| {
                llm.encoders
                    .as_ref()
                    .is_none_or(|names| names.contains(&e.name))
            };
            for e in self.encoders.iter().filter(probed) {
                for &mode in &self.modes {
                    let row = e.name.clone();
                    push(llm, row, e, mode, e.layer, llm.lal_start, &self.seeds);
                }
            }
        }
        if let (Some(s), Some(llm)) = (&self.sweeps, llms.first()) {
            if let Some(e) = self.encoders.iter().find(|e| e.name == s.encoder) {
                let seeds = s.seeds.clone().unwrap_or_else(|| self.seeds.clone());
                for &layer in &s.layers {
                    let row = format!("{} {}", e.name, layer_name(layer));
                    push(llm, row, e, Route::Lal, layer, llm.lal_start, &seeds);
                }
                for &start in &s.lal_starts {
                    let row = format!("{} LAL from {start}", e.name);
                    push(llm, row, e, Route::Lal, e.layer, start, &seeds);
                }
            }
        }
        cells
    }
}

/// A hidden-state choice as a row label: `last layer`, `layer 2`, `mean of layers 2-4`.
fn layer_name(layer: LayerSelection) -> String {
    match layer {
        LayerSelection::Last => "last layer".into(),
        LayerSelection::Index(i) => format!("layer {i}"),
        LayerSelection::Mean(a, b) => format!("mean of layers {a}-{b}"),
    }
}

/// The encoder cache every cell of a probe shares: `OUTPUT/cache` (cell folders are
/// `OUTPUT/ROW/MODE/seed-N`).
fn out_cache(cell_dir: &Path) -> PathBuf {
    cell_dir
        .ancestors()
        .nth(3)
        .unwrap_or(cell_dir)
        .join("cache")
        .join("encoders")
}

/// Runs every cell not done yet, calling `progress(done, total, cell)` before each; `pal(args)`
/// makes the command that runs `pal` with those arguments. Returns the results folder and every
/// cell's result.
pub fn run(
    suite_path: &Path,
    pal: &dyn Fn(&[String]) -> Command,
    mut progress: impl FnMut(usize, usize, &Cell),
) -> anyhow::Result<(PathBuf, Vec<CellResult>)> {
    let suite = Suite::load(suite_path)?;
    let base = suite_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let out = base.join(&suite.output);
    let cells = suite.cells();
    if cells.is_empty() {
        anyhow::bail!(
            "{}: the suite has no encoders to probe: name some under [[encoders]] (or give your own from Python: pal.probe(suite, encoders={{...}}))",
            suite_path.display()
        );
    }
    let digest = suite.digest(&base)?;
    let mut results = vec![];
    for (i, cell) in cells.iter().enumerate() {
        progress(i, cells.len(), cell);
        let dir = out.join(cell.folder());
        let record = dir.join("cell.json");
        if let Ok(text) = std::fs::read_to_string(&record) {
            if let Ok(done) = serde_json::from_str::<CellResult>(&text) {
                if done.cell == *cell && done.suite_digest == digest {
                    results.push(done);
                    continue;
                }
            }
        }
        // A cell interrupted before its record is run again from scratch.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        results.push(run_cell(&suite, &base, cell, &digest, &dir, pal)?);
    }
    progress(
        cells.len(),
        cells.len(),
        cells.last().expect("a suite has cells"),
    );
    Ok((out, results))
}

/// Trains and evaluates one cell in `dir` and records it (`cell.json`, with the suite's
/// `digest`).
fn run_cell(
    suite: &Suite,
    base: &Path,
    cell: &Cell,
    digest: &str,
    dir: &Path,
    pal: &dyn Fn(&[String]) -> Command,
) -> anyhow::Result<CellResult> {
    let encoder = suite
        .encoders
        .iter()
        .find(|e| e.name == cell.encoder)
        .expect("cells come from the suite");
    let model = ModelConfig {
        seed: cell.seed,
        frozen_ffn: false,
        max_clips: 1,
        max_audio_seconds: None,
        max_audio_mib: None,
        llm: LlmSpec {
            path: suite
                .llm_list()
                .into_iter()
                .find(|l| l.name == cell.llm)
                .expect("cells come from the suite")
                .path,
        },
        encoders: vec![EncoderSpec {
            name: "encoder".into(),
            kind: encoder.kind,
            path: encoder.path.clone(),
            layer: cell.layer,
            real_length: true,
            max_windows: WindowPolicy::default().max_windows,
            pool: 1,
            route: cell.mode,
            connector: ConnectorConfig::default(),
            summary: default_summary(),
            lal: LalConfig {
                start: cell.lal_start,
                ..LalConfig::default()
            },
        }],
    };
    model
        .with_absolute_paths(base)
        .save(&dir.join("model.toml"))?;
    let run = dir.join("run");
    let s = |p: &Path| p.display().to_string();
    let check = |mut cmd: Command, what: &str| -> anyhow::Result<()> {
        let out = cmd.output()?;
        if !out.status.success() {
            anyhow::bail!(
                "{what} of cell {} failed:\n{}",
                cell.folder(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    check(
        pal(&[
            "train".into(),
            "--quiet".into(),
            "--config".into(),
            s(&base.join(&suite.curriculum)),
            "--model".into(),
            s(&dir.join("model.toml")),
            "--output".into(),
            s(&run),
            "--seed".into(),
            cell.seed.to_string(),
            "--encoder-cache".into(),
            s(&out_cache(dir)),
        ]),
        "training",
    )?;
    let mut scores = BTreeMap::new();
    for split in &suite.splits {
        let json = dir.join(format!("eval-{}.jsonl", split.name));
        let (flag, path) = match (&split.manifest, &split.shards) {
            (Some(m), _) => ("--manifest", base.join(m)),
            (None, Some(sh)) => ("--shards", base.join(sh)),
            (None, None) => unreachable!("checked at load"),
        };
        check(
            pal(&[
                "eval".into(),
                "--model".into(),
                s(&run),
                flag.into(),
                s(&path),
                "--json".into(),
                s(&json),
            ]),
            "evaluation",
        )?;
        let items: Vec<f64> = std::fs::read_to_string(&json)?
            .lines()
            .map(|l| Ok(split.score.of(&serde_json::from_str(l)?)))
            .collect::<anyhow::Result<_>>()?;
        scores.insert(split.name.clone(), items);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train_summary.json"))?)?;
    let mut steps: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| m["step_s"].as_f64())
        .collect();
    steps.sort_by(f64::total_cmp);
    let result = CellResult {
        cell: cell.clone(),
        scores,
        train_s: summary["seconds"].as_f64().unwrap_or(f64::NAN),
        step_s: steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN),
        peak_rss_mib: summary["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
        suite_digest: digest.to_string(),
    };
    let tmp = dir.join("cell.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&result)?)?;
    std::fs::rename(&tmp, dir.join("cell.json"))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_accuracy_gives_graded_credit_and_correct_gives_one_or_zero() {
        let item = serde_json::json!({
            "reference": "The red car stays behind the market.",
            "answer": "the red car stays by the market",
            "correct": false,
        });
        // One substitution in seven words.
        assert!((Scoring::WordAccuracy.of(&item) - 6.0 / 7.0).abs() < 1e-12);
        assert_eq!(Scoring::Correct.of(&item), 0.0);
        let babble =
            serde_json::json!({ "reference": "a b", "answer": "x y z w v", "correct": false });
        assert_eq!(Scoring::WordAccuracy.of(&babble), 0.0, "never below 0");
        assert_eq!(
            Scoring::Correct.of(&serde_json::json!({ "correct": true })),
            1.0
        );
    }

    fn suite(dir: &Path, llm_part: &str) -> anyhow::Result<Suite> {
        let path = dir.join("suite.toml");
        let text = format!(
            "output = \"out\"\ncurriculum = \"c.toml\"\nseeds = [0, 1]\nmodes = [\"plits\", \"lal\"]\n{llm_part}\n[[splits]]\nname = \"digits\"\nmanifest = \"t.jsonl\"\n[[encoders]]\nname = \"tiny\"\nkind = \"whisper\"\npath = \"asset:whisper-tiny.en\"\n"
        );
        std::fs::write(&path, text)?;
        Suite::load(&path)
    }

    #[test]
    fn a_suite_of_several_llms_probes_each_with_its_own_lal_start() {
        let dir = tempfile::tempdir().unwrap();
        let one = suite(
            dir.path(),
            "llm = \"asset:smollm2-135m-instruct\"\nlal_start = 15",
        )
        .unwrap();
        let cells = one.cells();
        assert_eq!(cells.len(), 4);
        assert!(cells
            .iter()
            .all(|c| c.row == "tiny" && c.llm.is_empty() && c.lal_start == 15));

        let two = suite(
            dir.path(),
            "[[llms]]\nname = \"SmolLM2\"\npath = \"asset:smollm2-135m-instruct\"\nlal_start = 15\n[[llms]]\nname = \"Gemma3\"\npath = \"asset:gemma3-270m\"\nlal_start = 9",
        )
        .unwrap();
        let cells = two.cells();
        assert_eq!(cells.len(), 8);
        let gemma: Vec<&Cell> = cells.iter().filter(|c| c.llm == "Gemma3").collect();
        assert_eq!(gemma.len(), 4);
        assert!(gemma
            .iter()
            .all(|c| c.row == "Gemma3 + tiny" && c.lal_start == 9));
        // Each LLM's cells have folders of their own, under the shared encoder cache.
        let folders: std::collections::BTreeSet<String> =
            cells.iter().map(|c| c.folder()).collect();
        assert_eq!(folders.len(), 8);
        assert!(
            gemma[0].folder().starts_with("gemma3___tiny/"),
            "{}",
            gemma[0].folder()
        );

        let both = suite(
            dir.path(),
            "llm = \"asset:smollm2-135m-instruct\"\n[[llms]]\nname = \"G\"\npath = \"x.gguf\"\nlal_start = 9",
        );
        let message = both
            .expect_err("llm and llms together are refused")
            .to_string();
        assert!(
            message.contains("suite.toml") && message.contains("[[llms]]"),
            "{message}"
        );
        let twice = suite(
            dir.path(),
            "[[llms]]\nname = \"G\"\npath = \"a.gguf\"\nlal_start = 9\n[[llms]]\nname = \"g\"\npath = \"b.gguf\"\nlal_start = 9",
        );
        let message = twice.expect_err("one name twice is refused").to_string();
        assert!(message.contains("used twice"), "{message}");
        // An LLM probed with some of the encoders only.
        let some = suite(
            dir.path(),
            "[[llms]]\nname = \"S\"\npath = \"a.gguf\"\nlal_start = 15\n[[llms]]\nname = \"G\"\npath = \"b.gguf\"\nlal_start = 9\nencoders = [\"tiny\"]",
        )
        .unwrap();
        assert_eq!(some.cells().len(), 8);
        let unknown = suite(
            dir.path(),
            "[[llms]]\nname = \"G\"\npath = \"b.gguf\"\nlal_start = 9\nencoders = [\"base\"]",
        );
        let message = unknown
            .expect_err("an unknown encoder is refused")
            .to_string();
        assert!(message.contains("'base'"), "{message}");
    }
}
