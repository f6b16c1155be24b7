//! `load_llm_held(.., WeightForm::Quantized)` reads a GGUF's quantized matrices as stored and
//! never builds their f32 form: the model it gives holds the same weights and computes the same
//! logits, bit for bit, as one loaded in f32 and then held quantized. SmolLM2 (a `llama` file,
//! whose q/k rows llama.cpp permuted) and Gemma 3 (k-quants, a 262k-row tied table).

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pal_models::llm::weight_form;
use pal_models::{load_llm, load_llm_held, Llama, WeightForm};

/// The logits of the last of `ids` after a prefill of the others.
fn next_logits(model: &Llama, ids: &[u32]) -> Tensor {
    let n = ids.len();
    let mut cache = model.new_cache();
    let head = Tensor::new(&ids[..n - 1], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&head, None, &mut cache).unwrap();
    model.decode_step(&ids[n - 1..], &mut [&mut cache]).unwrap()
}

fn same_model_either_way(path: &Path) {
    let (mut loaded_f32, _) = load_llm(path, DType::F32, &Device::Cpu).unwrap();
    let held_after = weight_form::apply(&mut loaded_f32, path, WeightForm::Quantized).unwrap();
    let (held_first, _, used) =
        load_llm_held(path, DType::F32, &Device::Cpu, WeightForm::Quantized).unwrap();
    assert_eq!(used.to_string(), held_after.to_string());
    assert!(held_first.embed_quantized.is_some());
    let vocab = held_first.config.vocab_size as u32;
    let ids: Vec<u32> = (0..24).map(|i| (i * 7919 + 13) % vocab).collect();
    let (a, b) = (
        next_logits(&loaded_f32, &ids),
        next_logits(&held_first, &ids),
    );
    let diff = common::max_diff(&a, &b);
    assert_eq!(diff, 0.0, "{}", path.display());
}

#[test]
fn smollm2_held_quantized_at_load_is_the_same_model() {
    if let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) {
        same_model_either_way(&path);
    }
}

#[test]
fn gemma3_held_quantized_at_load_is_the_same_model() {
    if let Some(path) = pal_assets::for_test(&pal_assets::GEMMA3_270M) {
        same_model_either_way(&path);
    }
}
