//! Helpers shared by the `pal` binary's end-to-end tests (each test file includes this module).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `pal` binary built for these tests.
pub fn pal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pal"))
}

/// Whether both base models are fetched (skips the test when not, unless models are required).
pub fn models_present() -> bool {
    pal_assets::for_test(&pal_assets::SMOLLM2_135M).is_some()
        && pal_assets::for_test(&pal_assets::WHISPER_TINY_EN).is_some()
}

/// The test venv's Python (`openai`, `numpy`, `safetensors`; `scripts/test.sh` makes it), or
/// None to skip (an error when models are required).
pub fn python() -> Option<String> {
    match std::env::var("PAL_TEST_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("PAL_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("PAL_TEST_PYTHON must name the test venv's Python (scripts/test.sh makes one)")
        }
        Err(_) => None,
    }
}

/// `n` 16 kHz tones in `dir/clips` (even ones high, 880 Hz; odd ones low, 330 Hz; 0.3 to 0.5 s
/// and two loudness levels) and `dir/train.jsonl` asking "Is the tone high or low?" about each,
/// with `extra_line` inserted as line 3 when given.
pub fn tone_manifest(dir: &Path, n: usize, extra_line: Option<&str>) {
    std::fs::create_dir_all(dir.join("clips")).unwrap();
    let mut lines = vec![];
    for i in 0..n {
        let (hz, answer) = if i % 2 == 0 {
            (880.0, "high")
        } else {
            (330.0, "low")
        };
        let seconds = 0.3 + 0.05 * (i % 5) as f32;
        let amplitude = 0.3 + 0.05 * (i % 3) as f32;
        let samples: Vec<f32> = (0..(16000.0 * seconds) as usize)
            .map(|t| amplitude * (2.0 * std::f32::consts::PI * hz * t as f32 / 16000.0).sin())
            .collect();
        let name = format!("clips/tone{i}.wav");
        pal_audio::write_wav(&dir.join(&name), &samples, 16000).unwrap();
        lines.push(format!(
            r#"{{"audio": "{name}", "messages": [{{"role": "user", "content": "Is the tone high or low?"}}, {{"role": "assistant", "content": "{answer}"}}]}}"#
        ));
    }
    if let Some(extra) = extra_line {
        lines.insert(2, extra.to_string());
    }
    std::fs::write(dir.join("train.jsonl"), lines.join("\n")).unwrap();
}

/// A model config for SmolLM2-135M with Whisper tiny.en through `route` (LAL from layer 20),
/// written to `path`.
pub fn tone_model(path: &Path, route: &str) {
    std::fs::write(
        path,
        format!(
            r#"seed = 1
[llm]
path = "asset:smollm2-135m-instruct"
[[encoders]]
name = "whisper"
kind = "whisper"
path = "asset:whisper-tiny.en"
route = "{route}"
lal = {{ start = 20 }}
"#
        ),
    )
    .unwrap();
}

/// Asserts that a command succeeded, showing its output otherwise.
pub fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that a command failed; returns its stderr (where the error is).
pub fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).to_string()
}
