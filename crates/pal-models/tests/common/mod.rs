//! Helpers shared by pal-models' integration tests (each test file includes this module).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

/// A fixture folder under `tests/fixtures/` (tiny random models and their golden outputs).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A golden file pair `tests/fixtures/NAME-golden.{safetensors,json}` made by
/// `scripts/make_llm_fixtures.py`: the prompt's ids (u32), the last position's logits, the
/// tensor named `rows` (more positions' logits), and the JSON (prompt, tokenizer encodings).
pub fn golden(name: &str, rows: &str) -> (Tensor, Tensor, Tensor, serde_json::Value) {
    let path = |ext: &str| fixture(&format!("{name}-golden.{ext}"));
    let mut t =
        candle_core::safetensors::load(path("safetensors"), &candle_core::Device::Cpu).unwrap();
    let json = std::fs::read_to_string(path("json")).unwrap();
    (
        t.remove("input_ids").unwrap().to_dtype(DType::U32).unwrap(),
        t.remove("last_logits").unwrap(),
        t.remove(rows).unwrap(),
        serde_json::from_str(&json).unwrap(),
    )
}

/// The repository root (shipped configs, adapters).
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Largest absolute value of a tensor, in f64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Largest absolute difference of two tensors of the same shape, in f64.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// Asserts that `tokenizer` encodes each of a golden file's `encodings` (`{"text", "ids"}`, made
/// by transformers' tokenizer) to the same ids, and decodes the ids back to the text when
/// `round_trip` is set.
pub fn assert_encodings(
    tokenizer: &pal_models::Tokenizer,
    golden: &serde_json::Value,
    round_trip: bool,
) {
    for case in golden["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer.encode(text).unwrap(),
            expected,
            "encoding {text:?}"
        );
        if round_trip {
            assert_eq!(tokenizer.decode(&expected, false).unwrap(), text);
        }
    }
}
