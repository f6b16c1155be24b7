//! `pal train` end to end with the real SmolLM2-135M + Whisper tiny.en on generated tones:
//! a run killed with SIGKILL resumes to the same losses as an uninterrupted run; a truncated
//! checkpoint is reported and the previous one stays intact; bad manifest lines are named. And
//! the tiny job a GPU machine trains (no fetched model) trains here, twice to the same adapter.

mod common;

use common::{models_present, ok, pal, python, repo, tone_manifest, tone_model};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A run folder layout: clips, manifest, model config, curriculum. Returns the curriculum path.
fn setup(dir: &Path, extra_line: Option<&str>) -> PathBuf {
    tone_manifest(dir, 6, extra_line);
    tone_model(&dir.join("model.toml"), "lal");
    std::fs::write(
        dir.join("curriculum.toml"),
        r#"model = "model.toml"
output = "run"
seed = 5
checkpoint_every = 2
[[stages]]
name = "projectors"
manifests = [{ path = "train.jsonl" }]
steps = 8
lr = 1e-3
batch_size = 2
warmup_steps = 2
"#,
    )
    .unwrap();
    dir.join("curriculum.toml")
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    pal_train::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| (m.step, m.loss))
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_losses() {
    if !models_present() {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let config_a = setup(a.path(), None);
    let out = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&config_a)
        .output()
        .unwrap();
    ok(&out);
    let straight = losses(&a.path().join("run"));
    assert_eq!(
        straight.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert!(
        a.path().join("run/loss.png").exists() && a.path().join("run/adapter.safetensors").exists()
    );
    assert!(
        a.path().join("run/model.toml").exists() && a.path().join("run/curriculum.toml").exists()
    );

    // Kill a second run with SIGKILL after its second checkpoint (step 4), then resume it.
    let b = tempfile::tempdir().unwrap();
    let config_b = setup(b.path(), None);
    let mut child = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&config_b)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = b.path().join("run/checkpoints/latest");
    let start = Instant::now();
    loop {
        let step = std::fs::read_to_string(&latest).ok().and_then(|s| {
            s.trim()
                .strip_prefix("step-")
                .and_then(|n| n.parse::<u64>().ok())
        });
        if step.is_some_and(|s| s >= 4) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = losses(&b.path().join("run")).len();
    assert!(killed_at < 8, "the run finished before it could be killed");
    let out = pal()
        .args(["train", "--quiet", "--resume", "--config"])
        .arg(&config_b)
        .output()
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    let resumed = losses(&b.path().join("run"));
    assert_eq!(resumed.len(), 8, "{resumed:?}");
    for ((s1, l1), (s2, l2)) in straight.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0),
            "step {s1}: {l1} vs {l2}"
        );
    }

    // A truncated checkpoint file: a clear error, and the previous checkpoint is intact.
    let checkpoints = a.path().join("run/checkpoints");
    let newest = checkpoints.join(
        std::fs::read_to_string(checkpoints.join("latest"))
            .unwrap()
            .trim(),
    );
    let adapter = newest.join("adapter.safetensors");
    let len = std::fs::metadata(&adapter).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&adapter)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let out = pal()
        .args(["train", "--quiet", "--resume", "--config"])
        .arg(&config_a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("adapter.safetensors") && err.contains("damaged"),
        "{err}"
    );
    let previous = checkpoints.join("step-00000006");
    assert!(candle_core::safetensors::load(
        previous.join("adapter.safetensors"),
        &candle_core::Device::Cpu
    )
    .is_ok());
    assert!(
        previous.join("optimizer.safetensors").exists() && previous.join("state.json").exists()
    );
}

#[test]
fn bad_manifest_lines_are_named_or_skipped_with_a_count() {
    if !models_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = r#"{"audio": "clips/missing.wav", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#;
    let config = setup(dir.path(), Some(missing));
    let out = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("train.jsonl:3") && err.contains("missing.wav"),
        "{err}"
    );
    // An undecodable clip is named with its manifest line too.
    let config = setup(dir.path(), None);
    std::fs::write(dir.path().join("clips/tone1.wav"), b"not audio at all").unwrap();
    let out = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("train.jsonl:2") && err.contains("tone1.wav"),
        "{err}"
    );
    let out = pal()
        .args(["train", "--quiet", "--skip-bad", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 bad examples were skipped"), "{err}");
}

#[test]
fn lora_and_full_stages_train_what_they_say() {
    if !models_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), None);
    let model = std::fs::read_to_string(dir.path().join("model.toml")).unwrap();
    std::fs::write(
        dir.path().join("model.toml"),
        format!("frozen_ffn = true\n{model}"),
    )
    .unwrap();
    let stages = r#"model = "model.toml"
output = "run"
seed = 5
checkpoint_every = 10
[[stages]]
name = "projectors"
manifests = [{ path = "train.jsonl" }]
steps = 2
lr = 1e-3
batch_size = 2
[[stages]]
name = "lora"
manifests = [{ path = "train.jsonl" }]
steps = 2
lr = 1e-3
batch_size = 2
trainable = { lora = { rank = 4, alpha = 8.0, targets = ["q_proj", "v_proj"] } }
[[stages]]
name = "full"
manifests = [{ path = "train.jsonl" }]
steps = 1
lr = 1e-5
batch_size = 2
trainable = "full"
"#;
    std::fs::write(&config, stages).unwrap();
    let out = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    ok(&out);
    let run = dir.path().join("run");
    let metrics = pal_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let stage_names: Vec<&str> = metrics.iter().map(|m| m.stage.as_str()).collect();
    assert_eq!(
        stage_names,
        ["projectors", "projectors", "lora", "lora", "full"]
    );
    assert!(metrics.iter().all(|m| m.loss.is_finite()));
    let saved =
        candle_core::safetensors::load(run.join("adapter.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(saved.contains_key("whisper.lal.layers.20.proj.weight"));
    // LoRA trained: B moved away from its zero start.
    let b = &saved["llm.layers.0.q_proj.lora_b"];
    assert!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // Full stage: attention weights trained, FFN weights never (frozen_ffn).
    assert!(saved.contains_key("llm.model.layers.0.self_attn.q_proj.weight"));
    assert!(
        !saved.keys().any(|k| k.contains(".mlp.")),
        "an FFN weight was trained"
    );
    let (base, _) = pal_models::load_llm(
        &pal_assets::SMOLLM2_135M.main_file(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tuned = &saved["llm.model.layers.0.self_attn.q_proj.weight"];
    let diff = (tuned - &base.layers[0].q_proj.weight)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0, "the full stage did not change q_proj");

    // LoRA on an FFN weight contradicts frozen_ffn: refused with a clear message.
    std::fs::write(
        &config,
        stages.replace(r#"["q_proj", "v_proj"]"#, r#"["gate_proj"]"#),
    )
    .unwrap();
    let out = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gate_proj") && err.contains("frozen_ffn"),
        "{err}"
    );
}

/// `--dtype bf16`: the frozen backbone and encoder in bf16, the adapter and LoRA trained and
/// saved in f32, the first loss within 2% of the f32 run's; a stage that trains the whole LLM
/// is refused, naming `--dtype f32`.
#[test]
fn bf16_backbone_trains_f32_adapters_and_refuses_full_training() {
    if !models_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), None);
    let stages = |last: &str| {
        format!(
            r#"model = "model.toml"
output = "run"
seed = 5
checkpoint_every = 10
[[stages]]
name = "projectors"
manifests = [{{ path = "train.jsonl" }}]
steps = 2
lr = 1e-3
batch_size = 2
[[stages]]
name = "second"
manifests = [{{ path = "train.jsonl" }}]
steps = 1
lr = 1e-3
batch_size = 2
trainable = {last}
"#
        )
    };
    let train = |dtype: &str, output: &str| {
        pal()
            .args([
                "train", "--quiet", "--dtype", dtype, "--output", output, "--config",
            ])
            .arg(&config)
            .output()
            .unwrap()
    };
    std::fs::write(
        &config,
        stages(r#"{ lora = { rank = 4, alpha = 8.0, targets = ["q_proj", "v_proj"] } }"#),
    )
    .unwrap();
    let (half, full) = (dir.path().join("bf16"), dir.path().join("f32"));
    ok(&train("bf16", half.to_str().unwrap()));
    ok(&train("f32", full.to_str().unwrap()));
    let saved =
        candle_core::safetensors::load(half.join("adapter.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(saved.keys().any(|k| k.contains("lora_b")));
    for (name, t) in &saved {
        assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
    }
    let (first_half, first_full) = (losses(&half)[0].1, losses(&full)[0].1);
    assert!(losses(&half).iter().all(|(_, l)| l.is_finite()));
    assert!(
        (first_half - first_full).abs() < 0.02 * first_full,
        "first loss {first_half} (bf16) vs {first_full} (f32)"
    );

    std::fs::write(&config, stages(r#""full""#)).unwrap();
    let refused = train("bf16", dir.path().join("refused").to_str().unwrap());
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--dtype f32"), "{stderr}");
}

/// `scripts/tiny_train_fixture.py` (what `scripts/gpu_check.sh` trains on a GPU, where no model
/// can be fetched) makes a job `pal train` runs, for LAL and PLITS; two runs give the same
/// adapter, as `scripts/compare_adapters.py` (the GPU check's comparison) measures it.
#[test]
fn the_tiny_gpu_check_job_trains_and_repeats_exactly() {
    let Some(python) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fixture = tmp.path().join("fixture");
    ok(&std::process::Command::new(&python)
        .arg(repo().join("scripts/tiny_train_fixture.py"))
        .arg(&fixture)
        .output()
        .unwrap());
    let mut pairs = vec![];
    for route in ["lal", "plits"] {
        let runs = ["a", "b"].map(|r| tmp.path().join(format!("{route}-{r}")));
        for run in &runs {
            ok(&pal()
                .args(["train", "--quiet", "--device", "cpu", "--config"])
                .arg(format!("train-{route}.toml"))
                .arg("--output")
                .arg(run)
                .current_dir(&fixture)
                .output()
                .unwrap());
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(run.join("train_summary.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(summary["steps"], 10, "{route}");
            assert!(summary["final_loss"].as_f64().unwrap().is_finite());
        }
        pairs.push(format!(
            "{route}={}:{}",
            runs[0].join("adapter.safetensors").display(),
            runs[1].join("adapter.safetensors").display()
        ));
    }
    let out = std::process::Command::new(&python)
        .arg(repo().join("scripts/compare_adapters.py"))
        .args(&pairs)
        .output()
        .unwrap();
    ok(&out);
    let differences: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for route in ["lal", "plits"] {
        assert_eq!(differences[route], 0.0, "{route}: {differences}");
    }
}

/// `dir/pairs.jsonl`: pairs of the tones of [`tone_manifest`], each clip at its marker, asked
/// which one is higher.
fn tone_pairs(dir: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (a, b) = (i, i + 1); // even tones are high, odd ones low
            let answer = if a % 2 == 0 { "the first" } else { "the second" };
            format!(
                r#"{{"audio": ["clips/tone{a}.wav", "clips/tone{b}.wav"], "messages": [{{"role": "user", "content": "First: <|pal_audio|>\nSecond: <|pal_audio|>\nWhich tone is higher?"}}, {{"role": "assistant", "content": "{answer}"}}]}}"#
            )
        })
        .collect();
    std::fs::write(dir.join("pairs.jsonl"), lines.join("\n")).unwrap();
}

/// That `out` failed naming `pairs.jsonl`'s first example, its two clips and `max_clips`.
fn names_the_first_two_clip_example(out: &std::process::Output) {
    let err = common::failure(out);
    assert!(
        err.contains("pairs.jsonl:1") && err.contains("2 clips") && err.contains("max_clips"),
        "{err}"
    );
}

#[test]
fn examples_about_two_clips_train_and_evaluate_and_too_many_are_named() {
    if !models_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let curriculum = setup(dir.path(), None);
    tone_pairs(dir.path(), 5);
    let text = std::fs::read_to_string(&curriculum)
        .unwrap()
        .replace("train.jsonl", "pairs.jsonl")
        .replace("steps = 8", "steps = 3");
    std::fs::write(&curriculum, text).unwrap();
    // The model takes one clip: the first example about two is named, before any encoding.
    let out = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&curriculum)
        .output()
        .unwrap();
    names_the_first_two_clip_example(&out);
    // With max_clips = 2 the pairs train, and evaluate with both clips heard.
    let model = std::fs::read_to_string(dir.path().join("model.toml")).unwrap();
    std::fs::write(
        dir.path().join("model.toml"),
        format!("max_clips = 2\n{model}"),
    )
    .unwrap();
    ok(&pal()
        .args(["train", "--quiet", "--config"])
        .arg(&curriculum)
        .output()
        .unwrap());
    let run = dir.path().join("run");
    assert_eq!(losses(&run).len(), 3);
    let json = dir.path().join("eval.jsonl");
    ok(&pal()
        .args(["eval", "--max-tokens", "4", "--model"])
        .arg(&run)
        .arg("--manifest")
        .arg(dir.path().join("pairs.jsonl"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap());
    let items: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|i| i["question"]
        .as_str()
        .unwrap()
        .contains("Which tone is higher?")));
    // The same run told to take one clip: `pal eval` names the first example about two.
    let config = std::fs::read_to_string(run.join("model.toml")).unwrap();
    std::fs::write(
        run.join("model.toml"),
        config.replace("max_clips = 2", "max_clips = 1"),
    )
    .unwrap();
    let out = pal()
        .args(["eval", "--model"])
        .arg(&run)
        .arg("--manifest")
        .arg(dir.path().join("pairs.jsonl"))
        .output()
        .unwrap();
    names_the_first_two_clip_example(&out);
}

#[test]
fn time_answers_are_judged_by_the_time_they_name() {
    if !models_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let curriculum = setup(dir.path(), None);
    let text = std::fs::read_to_string(&curriculum)
        .unwrap()
        .replace("steps = 8", "steps = 2");
    std::fs::write(&curriculum, text).unwrap();
    ok(&pal()
        .args(["train", "--quiet", "--config"])
        .arg(&curriculum)
        .output()
        .unwrap());
    // Every reference names a time, as `pal data long`'s first-heard task answers.
    let lines: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"audio": "clips/tone{i}.wav", "messages": [{{"role": "user", "content": "When is the tone first heard?"}}, {{"role": "assistant", "content": "at {} seconds"}}]}}"#,
                10 * i
            )
        })
        .collect();
    std::fs::write(dir.path().join("times.jsonl"), lines.join("\n")).unwrap();
    let json = dir.path().join("times-eval.jsonl");
    let out = pal()
        .args(["eval", "--max-tokens", "6", "--model"])
        .arg(dir.path().join("run"))
        .arg("--manifest")
        .arg(dir.path().join("times.jsonl"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("judged right by time within 2 s"));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(json.with_extension("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["judged_by"], "time within 2 s");
    for line in std::fs::read_to_string(&json).unwrap().lines() {
        let item: serde_json::Value = serde_json::from_str(line).unwrap();
        let (answer, reference) = (
            item["answer"].as_str().unwrap(),
            item["reference"].as_str().unwrap(),
        );
        assert_eq!(
            item["correct"].as_bool().unwrap(),
            pal_eval::metrics::time_answer_correct(answer, reference),
            "{answer} / {reference}"
        );
    }
}
