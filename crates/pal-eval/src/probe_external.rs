//! A probe of encoders that pal does not run (a Python callable, a HEAR module: the Python
//! package's `pal.probe`): their outputs for every clip the suite reads go into shard sets, and
//! a suite derived from the user's runs the same grid on them ([`crate::probe::run`]), its
//! cells beside the suite's own in the same results folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::probe::Suite;

/// Every manifest the suite reads, absolute, each once: its curriculum stages' `manifests`,
/// then its splits' `manifest`s.
pub fn suite_manifests(suite_path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let suite = Suite::load(suite_path)?;
    let base = suite_path.parent().unwrap_or(Path::new("."));
    let curriculum_path = absolute(&base.join(&suite.curriculum));
    let curriculum = read_toml(&curriculum_path)?;
    let curriculum_base = curriculum_path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = vec![];
    let mut add = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for stage in stages(&curriculum) {
        for mix in stage
            .get("manifests")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(p) = mix.get("path").and_then(|p| p.as_str()) {
                add(absolute(&curriculum_base.join(p)));
            }
        }
    }
    for split in &suite.splits {
        if let Some(m) = &split.manifest {
            add(absolute(&base.join(m)));
        }
    }
    Ok(out)
}

/// Writes a suite (and its curriculum) into `dir` that probes the external encoder `name`
/// from `sets` (each manifest of [`suite_manifests`] to its shard set): the user's suite with
/// that one encoder (`kind = "shards"`), every stage reading shards instead of manifests,
/// every split scored on shards, no sweeps, results in the same folder. Returns its path.
pub fn external_suite(
    suite_path: &Path,
    name: &str,
    sets: &BTreeMap<PathBuf, PathBuf>,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let base = suite_path.parent().unwrap_or(Path::new("."));
    let suite_toml = read_toml(suite_path)?;
    let suite = Suite::load(suite_path)?;
    let curriculum_path = absolute(&base.join(&suite.curriculum));
    let mut curriculum = read_toml(&curriculum_path)?;
    let curriculum_base = curriculum_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let set_of = |manifest: &Path| -> anyhow::Result<String> {
        let key = absolute(manifest);
        sets.get(&key)
            .map(|s| absolute(s).display().to_string())
            .ok_or_else(|| anyhow::anyhow!("no shard set of '{name}' for {}", key.display()))
    };
    let mut first_set = None;
    if let Some(stages) = curriculum.get_mut("stages").and_then(|s| s.as_array_mut()) {
        for stage in stages.iter_mut().filter_map(|s| s.as_table_mut()) {
            let mixes = stage.remove("manifests");
            let mut shards: Vec<toml::Value> = stage
                .remove("shards")
                .and_then(|s| s.as_array().cloned())
                .unwrap_or_default();
            for mix in mixes
                .and_then(|m| m.as_array().cloned())
                .unwrap_or_default()
            {
                let mut mix = mix.as_table().cloned().unwrap_or_default();
                let path = mix.get("path").and_then(|p| p.as_str()).unwrap_or_default();
                let set = set_of(&curriculum_base.join(path))?;
                first_set.get_or_insert(set.clone());
                mix.insert("path".into(), toml::Value::String(set));
                shards.push(toml::Value::Table(mix));
            }
            stage.insert("shards".into(), toml::Value::Array(shards));
        }
    }
    // Paths the curriculum names besides its data are replaced by the probe's cells.
    for key in ["model", "output"] {
        if let Some(t) = curriculum.as_table_mut() {
            t.insert(key.into(), toml::Value::String(format!("unused-{key}")));
        }
    }
    std::fs::create_dir_all(dir)?;
    let derived_curriculum = dir.join("curriculum.toml");
    std::fs::write(&derived_curriculum, toml::to_string(&curriculum)?)?;
    let mut derived = suite_toml.as_table().cloned().unwrap_or_default();
    derived.remove("sweeps");
    derived.insert(
        "output".into(),
        toml::Value::String(absolute(&base.join(&suite.output)).display().to_string()),
    );
    derived.insert(
        "curriculum".into(),
        toml::Value::String(derived_curriculum.display().to_string()),
    );
    let mut splits = vec![];
    for split in &suite.splits {
        let mut table = toml::Table::new();
        table.insert("name".into(), toml::Value::String(split.name.clone()));
        let shards = match (&split.manifest, &split.shards) {
            (Some(m), _) => set_of(&base.join(m))?,
            (None, Some(s)) => absolute(&base.join(s)).display().to_string(),
            (None, None) => unreachable!("checked at load"),
        };
        table.insert("shards".into(), toml::Value::String(shards));
        table.insert(
            "score".into(),
            toml::Value::String(
                match split.score {
                    crate::probe::Scoring::Correct => "correct",
                    crate::probe::Scoring::WordAccuracy => "word-accuracy",
                }
                .into(),
            ),
        );
        splits.push(toml::Value::Table(table));
    }
    derived.insert("splits".into(), toml::Value::Array(splits));
    let set = first_set.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no stage trains from a manifest",
            curriculum_path.display()
        )
    })?;
    let mut encoder = toml::Table::new();
    encoder.insert("name".into(), toml::Value::String(name.into()));
    encoder.insert("kind".into(), toml::Value::String("shards".into()));
    encoder.insert("path".into(), toml::Value::String(set));
    derived.insert(
        "encoders".into(),
        toml::Value::Array(vec![toml::Value::Table(encoder)]),
    );
    let path = dir.join("suite.toml");
    std::fs::write(&path, toml::to_string(&toml::Value::Table(derived))?)?;
    Ok(path)
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn stages(curriculum: &toml::Value) -> Vec<toml::Table> {
    curriculum
        .get("stages")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_table().cloned())
        .collect()
}

fn absolute(path: &Path) -> PathBuf {
    let joined = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // `a/./b` and `a/x/../b` as `a/b`, so that one manifest named two ways is one key.
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
