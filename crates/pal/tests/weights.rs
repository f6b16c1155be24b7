//! `--weights`: the shipped adapter gives the same greedy answers on the bundled demo clips
//! whether the frozen LLM's weights are dequantized to f32, kept as the GGUF file's quantized
//! blocks for decoding (`auto`), or held only quantized.

mod common;

use common::{models_present, pal, repo};

/// The answer lines and the score line `pal demo` prints.
fn demo_answers(weights: &str) -> Vec<String> {
    let out = pal()
        .current_dir(repo())
        .args(["demo", "--weights", weights])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pal demo --weights {weights}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("A:") || l.contains("answers right"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_weight_form_gives_the_same_greedy_answers() {
    if !models_present() {
        return;
    }
    let f32_answers = demo_answers("f32");
    assert_eq!(
        f32_answers.last().map(String::as_str),
        Some("4/4 answers right")
    );
    for form in ["auto", "quantized"] {
        assert_eq!(demo_answers(form), f32_answers, "--weights {form}");
    }
}

#[test]
fn an_unknown_weight_form_is_refused_by_name() {
    let out = pal().args(["demo", "--weights", "int3"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("int3") && stderr.contains("quantized"),
        "{stderr}"
    );
}
