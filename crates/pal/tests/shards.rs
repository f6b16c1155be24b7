//! Feature shards end to end with the real SmolLM2-135M + Whisper tiny.en: `pal encode` killed
//! with SIGKILL and run again writes the same shards as an uninterrupted run; training from
//! shards gives the losses of training from the manifest; a damaged shard, a shard set of
//! another encoder and a missing index are refused with the file named; an external encoder's
//! shards (written by scripts/write_shards.py) train and evaluate.

mod common;

use common::{failure, models_present, ok, pal, python, repo, tone_manifest, tone_model};
use std::path::{Path, PathBuf};
use std::process::Output;

/// `n` tones and their manifest (`train.jsonl`), and the model config (`model.toml`).
fn setup(dir: &Path, n: usize) {
    tone_manifest(dir, n, None);
    tone_model(&dir.join("model.toml"), "lal");
}

/// A curriculum reading `data` (`manifests = ...` or `shards = ...`) into `run`.
fn curriculum(dir: &Path, name: &str, data: &str, run: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"model = "model.toml"
output = "{run}"
seed = 5
[[stages]]
name = "projectors"
{data}
steps = 4
lr = 1e-3
batch_size = 2
warmup_steps = 1
"#
        ),
    )
    .unwrap();
    path
}

fn run(args: &[&str], dir: &Path) -> Output {
    pal().args(args).current_dir(dir).output().unwrap()
}

fn losses(run: &Path) -> Vec<f64> {
    pal_train::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.loss)
        .collect()
}

fn index(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap()
}

#[test]
fn training_from_shards_gives_the_manifest_losses_and_bad_shards_are_refused() {
    if !models_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 8);
    // f32 shards hold exactly what the manifest path encodes (same batches, same bits).
    ok(&run(
        &[
            "encode",
            "--model",
            "model.toml",
            "--manifest",
            "train.jsonl",
            "--out",
            "feats",
            "--dtype",
            "f32",
            "--shard-mb",
            "0.05",
            "--quiet",
        ],
        dir,
    ));
    let shards = index(&dir.join("feats"))["shards"]
        .as_array()
        .unwrap()
        .len();
    assert!(shards >= 2, "{shards} shards");
    let from_manifest = curriculum(
        dir,
        "a.toml",
        r#"manifests = [{ path = "train.jsonl" }]"#,
        "run-a",
    );
    let from_shards = curriculum(dir, "b.toml", r#"shards = [{ path = "feats" }]"#, "run-b");
    ok(&run(
        &[
            "train",
            "--quiet",
            "--config",
            from_manifest.to_str().unwrap(),
        ],
        dir,
    ));
    ok(&run(
        &[
            "train",
            "--quiet",
            "--config",
            from_shards.to_str().unwrap(),
        ],
        dir,
    ));
    let (a, b) = (losses(&dir.join("run-a")), losses(&dir.join("run-b")));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "losses from the manifest and from its shards");

    // A flipped byte in a shard's data: refused, naming the shard, never used.
    let shard = dir.join("feats/shard-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() - 100;
    bytes[middle] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let err = failure(&run(
        &[
            "train",
            "--quiet",
            "--config",
            from_shards.to_str().unwrap(),
        ],
        dir,
    ));
    assert!(
        err.contains("shard-00001.safetensors") && err.contains("checksum"),
        "{err}"
    );
    // Truncated: refused before any training, naming the shard and both sizes.
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let err = failure(&run(
        &["eval", "--model", "run-b", "--shards", "feats"],
        dir,
    ));
    assert!(
        err.contains("shard-00001.safetensors") && err.contains("bytes"),
        "{err}"
    );
    // No index / a malformed index.
    std::fs::remove_file(dir.join("feats/index.json")).unwrap();
    let err = failure(&run(
        &["eval", "--model", "run-b", "--shards", "feats"],
        dir,
    ));
    assert!(
        err.contains("index.json") && err.contains("no shard index"),
        "{err}"
    );
    std::fs::write(dir.join("feats/index.json"), "{\"format\": ").unwrap();
    let err = failure(&run(
        &["eval", "--model", "run-b", "--shards", "feats"],
        dir,
    ));
    assert!(
        err.contains("index.json") && err.contains("malformed"),
        "{err}"
    );
}

#[test]
fn killed_encode_resumes_to_the_same_shards() {
    if !models_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 240);
    let encode = |out: &str| -> Vec<String> {
        vec![
            "encode".into(),
            "--model".into(),
            "model.toml".into(),
            "--manifest".into(),
            "train.jsonl".into(),
            "--out".into(),
            out.into(),
            "--shard-mb".into(),
            "0.02".into(),
            "--quiet".into(),
        ]
    };
    ok(&pal()
        .args(encode("straight"))
        .current_dir(dir)
        .output()
        .unwrap());
    let straight = index(&dir.join("straight"));
    assert!(straight["complete"].as_bool().unwrap());
    assert_eq!(straight["records"], 240);

    // SIGKILL once a few shards are listed, then run the same command again.
    let mut child = pal()
        .args(encode("killed"))
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let listed = |dir: &Path| -> usize {
        std::fs::read_to_string(dir.join("index.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| v["shards"].as_array().map_or(0, |a| a.len()))
            .unwrap_or(0)
    };
    while listed(&dir.join("killed")) < 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "pal encode ended before it was killed"
        );
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let interrupted = index(&dir.join("killed"));
    assert!(
        !interrupted["complete"].as_bool().unwrap(),
        "killed after finishing"
    );
    let out = pal()
        .args(encode("killed"))
        .current_dir(dir)
        .output()
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"));
    let resumed = index(&dir.join("killed"));
    assert_eq!(
        resumed["shards"], straight["shards"],
        "same files, sizes and checksums"
    );
    assert_eq!(resumed["records"], 240);

    // The same folder with other settings is refused rather than mixed.
    let mut other = encode("killed");
    other.extend(["--dtype".into(), "f32".into()]);
    let err = failure(&pal().args(other).current_dir(dir).output().unwrap());
    assert!(err.contains("another job"), "{err}");
}

#[test]
fn external_encoder_shards_train_and_evaluate_and_mismatches_are_refused() {
    if !models_present() {
        return;
    }
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 4);
    let script = repo().join("scripts/write_shards.py");
    for (out, records) in [("ext-train", "48"), ("ext-test", "10")] {
        let status = std::process::Command::new(&python)
            .arg(&script)
            .args([
                "--records",
                records,
                "--random-features",
                "48",
                "--tokens",
                "12",
            ])
            .args([
                "--encoder-id",
                "random-48",
                "--name",
                "ext",
                "--shard-mb",
                "0.02",
            ])
            .args(["--out", out])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::write(
        dir.join("external.toml"),
        r#"[llm]
path = "asset:smollm2-135m-instruct"
[[encoders]]
name = "ext"
kind = "shards"
path = "ext-train"
route = "pal"
"#,
    )
    .unwrap();
    let config = curriculum(
        dir,
        "ext.toml",
        r#"shards = [{ path = "ext-train" }]"#,
        "run-ext",
    );
    ok(&run(
        &[
            "train",
            "--quiet",
            "--config",
            config.to_str().unwrap(),
            "--model",
            "external.toml",
        ],
        dir,
    ));
    assert_eq!(losses(&dir.join("run-ext")).len(), 4);
    let out = run(
        &[
            "eval",
            "--model",
            "run-ext",
            "--shards",
            "ext-test",
            "--max-tokens",
            "3",
            "--json",
            "ext.jsonl",
        ],
        dir,
    );
    ok(&out);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ext.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["total"], 10);
    // New audio cannot go through an external encoder: said, not attempted.
    let err = failure(&run(
        &["eval", "--model", "run-ext", "--manifest", "train.jsonl"],
        dir,
    ));
    assert!(
        err.contains("external") && err.contains("random-48"),
        "{err}"
    );
    // The Whisper model refuses the external set, naming both encoders.
    let whisper = curriculum(
        dir,
        "w.toml",
        r#"shards = [{ path = "ext-train" }]"#,
        "run-w",
    );
    let err = failure(&run(
        &["train", "--quiet", "--config", whisper.to_str().unwrap()],
        dir,
    ));
    assert!(
        err.contains("ext-train")
            && err.contains("random-48")
            && err.contains("whisper:whisper-tiny.en"),
        "{err}"
    );
}

#[test]
fn undecodable_clip_is_named_or_skipped_and_counted() {
    if !models_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 5);
    // Line 3's clip becomes a WAV header with garbage after it.
    let clip = dir.join("clips/tone2.wav");
    let mut bytes = std::fs::read(&clip).unwrap();
    bytes.truncate(60);
    bytes.extend([0x7f; 7]);
    std::fs::write(&clip, bytes).unwrap();
    let args = [
        "encode",
        "--model",
        "model.toml",
        "--manifest",
        "train.jsonl",
        "--quiet",
    ];
    let err = failure(&run(&[&args[..], &["--out", "a"]].concat(), dir));
    assert!(
        err.contains("train.jsonl:3") && err.contains("tone2.wav"),
        "{err}"
    );
    let out = run(&[&args[..], &["--out", "b", "--skip-bad"]].concat(), dir);
    ok(&out);
    let written = index(&dir.join("b"));
    assert_eq!(written["records"], 4);
    let failures = written["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert!(failures[0]["origin"]
        .as_str()
        .unwrap()
        .ends_with("train.jsonl:3"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failures"));
    // An example about two clips: shards hold one clip per example, so it is refused by line.
    let pair = r#"{"audio": ["clips/tone0.wav", "clips/tone1.wav"], "messages": [{"role": "user", "content": "<|pal_audio|> <|pal_audio|> Which is higher?"}, {"role": "assistant", "content": "the first"}]}"#;
    std::fs::write(dir.join("pairs.jsonl"), pair).unwrap();
    let err = failure(&run(
        &[
            "encode",
            "--model",
            "model.toml",
            "--manifest",
            "pairs.jsonl",
            "--quiet",
            "--out",
            "c",
        ],
        dir,
    ));
    assert!(
        err.contains("pairs.jsonl:1") && err.contains("one clip per example"),
        "{err}"
    );
}

#[test]
fn training_from_shards_resumes_at_the_exact_record() {
    if !models_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 12);
    ok(&run(
        &[
            "encode",
            "--model",
            "model.toml",
            "--manifest",
            "train.jsonl",
            "--out",
            "feats",
            "--shard-mb",
            "0.02",
            "--quiet",
        ],
        dir,
    ));
    // Several shards, groups of about 3 records: the order crosses groups and epochs.
    let config = |name: &str, run_dir: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                r#"model = "model.toml"
output = "{run_dir}"
seed = 5
checkpoint_every = 2
[[stages]]
name = "projectors"
shards = [{{ path = "feats" }}]
shuffle_buffer = 3
steps = 10
lr = 1e-3
batch_size = 2
"#
            ),
        )
        .unwrap();
        path
    };
    let straight = config("s.toml", "run-s");
    ok(&run(
        &["train", "--quiet", "--config", straight.to_str().unwrap()],
        dir,
    ));
    let killed = config("k.toml", "run-k");
    let mut child = pal()
        .args(["train", "--quiet", "--config"])
        .arg(&killed)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = dir.join("run-k/checkpoints/step-00000004");
    while !checkpoint.join("state.json").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5)); // polling, not synchronisation
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ok(&run(
        &[
            "train",
            "--quiet",
            "--resume",
            "--config",
            killed.to_str().unwrap(),
        ],
        dir,
    ));
    let (a, b) = (losses(&dir.join("run-s")), losses(&dir.join("run-k")));
    assert_eq!(a.len(), 10);
    assert_eq!(
        b.len(),
        10,
        "the log is cut back to the checkpoint, then continued"
    );
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "step {}: {x} vs {y}",
            step + 1
        );
    }
}
