//! No test or validation clip is ever trained on: the instruction set and the out-of-distribution
//! check set are built from the shared data, and the clips (by content) and espeak-ng sentences
//! of every split are intersected, task by task, for every training config in `configs/`, and
//! against the check set.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use pal_data::instruct::{build_instruction_set, InstructOptions};
use pal_data::ood::build_ood_set;
use pal_data::shared::SPLITS;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A clip's content, so that a copy under another name is still the same clip.
fn content(path: &Path, cache: &mut BTreeMap<PathBuf, u64>) -> u64 {
    *cache.entry(path.to_path_buf()).or_insert_with(|| {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    })
}

/// Each line's audio path and answer.
fn manifest(path: &Path) -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let answer = v["messages"][1]["content"].as_str().unwrap().to_string();
            (PathBuf::from(v["audio"].as_str().unwrap()), answer)
        })
        .collect()
}

/// The sentences of a passage ("A. B." is "A." and "B.").
fn sentences(text: &str) -> Vec<String> {
    text.split_inclusive('.')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The tasks a training config trains on: `.../TASK/train.jsonl` in its manifests.
fn trained_tasks(config: &str) -> BTreeSet<String> {
    config
        .split('"')
        .filter_map(|s| s.strip_suffix("/train.jsonl"))
        .map(|s| s.rsplit('/').next().unwrap().to_string())
        .collect()
}

fn configs(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            configs(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("[[stages]]") {
                found.push((path, text));
            }
        }
    }
}

#[test]
fn no_held_out_clip_or_sentence_is_trained_on() {
    let root = repo().join("../shared/data");
    if !root.is_dir() {
        assert!(
            std::env::var_os("PAL_REQUIRE_MODELS").is_none(),
            "the shared data folder {} is missing",
            root.display()
        );
        eprintln!("skipped: no shared data folder at {}", root.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let instruct = tmp.path().join("instruct");
    build_instruction_set(&InstructOptions {
        root: Some(root.clone()),
        out: instruct.clone(),
        seed: 0,
        espeak: pal_data::instruct::espeak_available(),
        generated_per_task: 24,
    })
    .unwrap();
    let ood = tmp.path().join("ood");
    build_ood_set(&root, &ood, 0).unwrap();

    // Clips and answers by task and split.
    let mut cache = BTreeMap::new();
    let mut clips: BTreeMap<(String, &str), BTreeSet<u64>> = BTreeMap::new();
    let mut answers: BTreeMap<(String, &str), BTreeSet<String>> = BTreeMap::new();
    let mut tasks = BTreeSet::new();
    for entry in std::fs::read_dir(&instruct).unwrap() {
        let task = entry.unwrap().file_name().to_string_lossy().to_string();
        if task == "audio" {
            continue;
        }
        for split in SPLITS {
            let lines = manifest(&instruct.join(format!("{task}/{split}.jsonl")));
            for (audio, answer) in lines {
                let key = (task.clone(), split);
                clips
                    .entry(key.clone())
                    .or_default()
                    .insert(content(&audio, &mut cache));
                answers.entry(key).or_default().insert(answer);
            }
        }
        tasks.insert(task);
    }
    // The wider-vocabulary tasks are built wherever their tools are.
    let mut expected = vec!["unknown"];
    if pal_data::vocabulary::fluidsynth_soundfont().is_some() {
        expected.push("instruments");
    }
    if pal_data::instruct::espeak_available() {
        expected.push("languages");
    }
    for task in expected {
        assert!(tasks.contains(task), "no {task} task among {tasks:?}");
    }
    let of = |map: &BTreeMap<(String, &str), BTreeSet<u64>>, task: &str, split: &str| {
        map.get(&(task.to_string(), split))
            .cloned()
            .unwrap_or_default()
    };
    // Every task has all three splits, pairwise disjoint.
    for task in &tasks {
        for split in SPLITS {
            assert!(
                !of(&clips, task, split).is_empty(),
                "{task}/{split} is empty"
            );
        }
        for (a, b) in [
            ("train", "validation"),
            ("train", "test"),
            ("validation", "test"),
        ] {
            let shared = of(&clips, task, a)
                .intersection(&of(&clips, task, b))
                .count();
            assert_eq!(shared, 0, "{task}: {shared} clips in both {a} and {b}");
        }
    }
    // espeak-ng sentences: no test or validation sentence is ever trained on.
    let said = |split: &str| -> BTreeSet<String> {
        answers
            .get(&("espeak".to_string(), split))
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    };
    if tasks.contains("espeak") {
        for (a, b) in [
            ("train", "validation"),
            ("train", "test"),
            ("validation", "test"),
        ] {
            let both: Vec<_> = said(a).intersection(&said(b)).cloned().collect();
            assert!(both.is_empty(), "sentences in both {a} and {b}: {both:?}");
        }
    }

    // The check set and its validation twin: their real sources and sentences are in no
    // training split of any task, and the two share no source, clip or sentence.
    let trained: BTreeSet<u64> = tasks.iter().flat_map(|t| of(&clips, t, "train")).collect();
    let train_sentences = said("train");
    let mut parts = vec![];
    for part in ["test", "validation"] {
        let sources = std::fs::read_to_string(ood.join(format!("{part}-sources.txt"))).unwrap();
        assert!(sources.lines().count() >= 3, "{part}: {sources}");
        for source in sources.lines() {
            let hash = content(Path::new(source), &mut cache);
            assert!(
                !trained.contains(&hash),
                "the check set's {part} part uses {source}, a training clip"
            );
        }
        let lines = manifest(&ood.join(format!("{part}.jsonl")));
        assert!(lines.len() >= 60, "{part}: {} questions", lines.len());
        let mut clips_here = BTreeSet::new();
        for (audio, answer) in lines {
            clips_here.insert(content(&audio, &mut cache));
            for sentence in sentences(&answer) {
                assert!(
                    !train_sentences.contains(&sentence),
                    "the check set's {part} part says '{sentence}', a training sentence"
                );
            }
        }
        let sources: BTreeSet<String> = sources.lines().map(str::to_string).collect();
        parts.push((sources, clips_here));
    }
    let (test, validation) = (&parts[0], &parts[1]);
    let shared: Vec<_> = test.0.intersection(&validation.0).collect();
    assert!(shared.is_empty(), "sources in both check sets: {shared:?}");
    assert_eq!(
        test.1.intersection(&validation.1).count(),
        0,
        "a clip in both check sets"
    );
    // What is said in the clips (the espeak passages, the transcripts) is never in both.
    let transcripts = |part: &str| -> BTreeSet<String> {
        let text = std::fs::read_to_string(ood.join(format!("{part}.jsonl"))).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["messages"][0]["content"] == pal_data::shared::SPEECH_QUESTION)
            .flat_map(|v| sentences(v["messages"][1]["content"].as_str().unwrap()))
            .filter(|s| s != "nothing is said")
            .collect()
    };
    let both: Vec<_> = transcripts("test")
        .intersection(&transcripts("validation"))
        .cloned()
        .collect();
    assert!(both.is_empty(), "said in both check sets: {both:?}");

    // Every training config in configs/: what it trains on holds no clip of the held-out splits
    // of the tasks it trains on.
    let mut found = vec![];
    configs(&repo().join("configs"), &mut found);
    assert!(found.len() >= 5, "training configs found: {}", found.len());
    for (path, text) in &found {
        let its = trained_tasks(text);
        let train: BTreeSet<u64> = its.iter().flat_map(|t| of(&clips, t, "train")).collect();
        for split in ["validation", "test"] {
            let held: BTreeSet<u64> = its.iter().flat_map(|t| of(&clips, t, split)).collect();
            let leaked = train.intersection(&held).count();
            assert_eq!(
                leaked,
                0,
                "{}: {leaked} {split} clips are trained on",
                path.display()
            );
        }
    }
}
