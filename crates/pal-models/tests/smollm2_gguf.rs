//! The real SmolLM2-135M-Instruct GGUF (fetched by `pal fetch`): logits and tokenizer match
//! transformers on the same dequantized weights (golden values from scripts/make_llm_fixtures.py),
//! and a truncated GGUF is a clear error.

mod common;

use candle_core::{DType, Device, Tensor};
use pal_models::load_llm;

fn golden() -> (Tensor, Tensor, Tensor, serde_json::Value) {
    common::golden("smollm2", "head_logits")
}

#[test]
fn smollm2_gguf_logits_and_tokenizer_match_transformers() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let (model, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config.num_hidden_layers, 30);
    assert!(model.config.tie_word_embeddings);
    let (ids, last, head, json) = golden();

    // Tokenizer built from GGUF metadata encodes like transformers' tokenizer.
    common::assert_encodings(&tokenizer, &json, false);
    let prompt = json["prompt"].as_str().unwrap();
    assert_eq!(
        tokenizer.encode(prompt).unwrap(),
        ids.to_vec1::<u32>().unwrap()
    );
    assert_eq!(
        tokenizer
            .decode(&ids.to_vec1::<u32>().unwrap(), false)
            .unwrap(),
        prompt
    );
    assert!(tokenizer
        .stop_token_ids
        .contains(&tokenizer.token_id("<|im_end|>").unwrap()));

    let n = ids.dims()[0];
    let mut cache = model.new_cache();
    let logits = model
        .forward(&ids.unsqueeze(0).unwrap(), None, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let max_diff = |a: Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let d_last = max_diff(logits.get(n - 1).unwrap(), &last);
    let d_head = max_diff(logits.narrow(1, 0, 256).unwrap(), &head);
    assert!(d_last < 1e-3, "last-position logits differ by {d_last}");
    assert!(d_head < 1e-3, "logits differ by {d_head}");
}

#[test]
fn truncated_gguf_names_the_file_and_tensor() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 1_000_000]).unwrap();
    let msg = load_llm(&cut, DType::F32, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("tensor '"),
        "{msg}"
    );
    // A file cut inside the header is refused as not a valid GGUF.
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    let msg = load_llm(&cut, DType::F32, &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("cut.gguf"), "{msg}");
    // The original is untouched.
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        bytes.len()
    );
}
