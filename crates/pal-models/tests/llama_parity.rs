//! Parity with transformers on tiny random Llama, Qwen2, Qwen3 and Gemma 3 models (fixtures made by
//! `scripts/make_llm_fixtures.py`), KV-cache consistency, and clear errors on bad model files.

mod common;

use common::{fixture, max_diff};

use candle_core::{DType, Device, Tensor};
use pal_models::{load_llm, Llama, LlamaConfig, ModelError};

fn load_tiny(name: &str) -> Llama {
    Llama::from_hf_folder(&fixture(name), DType::F32, &Device::Cpu).unwrap()
}

struct Golden {
    input_ids: Tensor,
    mask: Tensor,
    logits: Tensor,
}

fn golden(name: &str) -> Golden {
    let mut t =
        candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
            .unwrap();
    Golden {
        input_ids: t.remove("input_ids").unwrap().to_dtype(DType::U32).unwrap(),
        mask: t
            .remove("attention_mask")
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap(),
        logits: t.remove("logits").unwrap(),
    }
}

/// Largest |ours - reference| over the real (unpadded) positions.
fn max_diff_on_valid(ours: &Tensor, reference: &Tensor, mask: &Tensor) -> f32 {
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let diff = ((ours - reference).unwrap().abs().unwrap().broadcast_mul(&m)).unwrap();
    diff.max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn check_parity(name: &str) {
    let model = load_tiny(name);
    let g = golden(name);
    let mut cache = model.new_cache();
    let logits = model
        .forward(&g.input_ids, Some(&g.mask), &mut cache)
        .unwrap();
    let diff = max_diff_on_valid(&logits, &g.logits, &g.mask);
    assert!(diff < 1e-4, "{name}: max |logit diff| {diff} >= 1e-4");
}

#[test]
fn tiny_llama_with_llama3_rope_matches_transformers() {
    let model = load_tiny("tiny-llama");
    assert!(model.config.rope_scaling.is_some());
    assert!(!model.config.tie_word_embeddings);
    check_parity("tiny-llama");
}

#[test]
fn tiny_qwen2_with_qkv_bias_matches_transformers() {
    let model = load_tiny("tiny-qwen2");
    assert!(model.config.attention_bias && model.config.tie_word_embeddings);
    check_parity("tiny-qwen2");
}

/// Gemma 3 from the folder transformers writes: its norms stored as `w` of `1 + w`, sandwich
/// norms, GELU-tanh, embeddings scaled by `sqrt(d)`, and sliding-window layers (window 4) over
/// a batch of 7 positions.
#[test]
fn tiny_gemma3_from_its_hugging_face_folder_matches_transformers() {
    let model = load_tiny("tiny-gemma3");
    let c = &model.config;
    assert_eq!(c.model_type, "gemma3");
    assert!(c.sandwich_norms && c.qk_norm && c.tie_word_embeddings);
    assert_eq!(c.hidden_act, pal_models::llm::Activation::GeluTanh);
    assert_eq!(c.embedding_scale, Some(8.0));
    let window = c.sliding_window.as_ref().unwrap();
    assert_eq!((window.window, window.global_every), (4, 3));
    assert_eq!((c.rope_theta, window.rope_theta), (1e6, 1e4));
    check_parity("tiny-gemma3");
}

#[test]
fn tiny_qwen3_with_qk_norm_matches_transformers() {
    let model = load_tiny("tiny-qwen3");
    assert!(model.config.qk_norm);
    assert_eq!(model.config.head_dim, 32);
    check_parity("tiny-qwen3");
}

#[test]
fn incremental_decoding_with_kv_cache_matches_full_forward() {
    let model = load_tiny("tiny-llama");
    let g = golden("tiny-llama");
    let row = g.input_ids.narrow(0, 0, 1).unwrap();
    let mut cache = model.new_cache();
    let full = model.forward(&row, None, &mut cache).unwrap();
    let mut cache = model.new_cache();
    let mut steps = vec![model
        .forward(&row.narrow(1, 0, 3).unwrap(), None, &mut cache)
        .unwrap()];
    for i in 3..row.dims()[1] {
        steps.push(
            model
                .forward(&row.narrow(1, i, 1).unwrap(), None, &mut cache)
                .unwrap(),
        );
    }
    let stepped = Tensor::cat(&steps, 1).unwrap();
    let diff = max_diff(&full, &stepped);
    assert!(diff < 1e-4, "cached decoding differs by {diff}");
}

#[test]
fn left_padded_batch_matches_each_item_alone() {
    let model = load_tiny("tiny-qwen3");
    let a = Tensor::new(&[[3u32, 4, 5, 6, 7]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[0u32, 0, 9, 10, 11]], &Device::Cpu).unwrap();
    let valid = Tensor::new(&[[1u32, 1, 1, 1, 1], [0, 0, 1, 1, 1]], &Device::Cpu).unwrap();
    let batch = Tensor::cat(&[&a, &b], 0).unwrap();
    let mut cache = model.new_cache();
    let batched = model.forward(&batch, Some(&valid), &mut cache).unwrap();
    // One more decoding step for both rows, through the padded cache.
    let next = Tensor::new(&[[8u32], [12]], &Device::Cpu).unwrap();
    let batched_next = model.forward(&next, None, &mut cache).unwrap();

    let alone_b = Tensor::new(&[[9u32, 10, 11, 12]], &Device::Cpu).unwrap();
    let mut cache_b = model.new_cache();
    let logits_b = model.forward(&alone_b, None, &mut cache_b).unwrap();
    let diff = (batched.get(1).unwrap().narrow(0, 2, 3).unwrap()
        - logits_b.get(0).unwrap().narrow(0, 0, 3).unwrap())
    .unwrap()
    .abs()
    .unwrap()
    .max_all()
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!(diff < 1e-4, "left-padded prefill differs by {diff}");
    let diff = (batched_next.get(1).unwrap().get(0).unwrap()
        - logits_b.get(0).unwrap().get(3).unwrap())
    .unwrap()
    .abs()
    .unwrap()
    .max_all()
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!(diff < 1e-4, "decoding after left padding differs by {diff}");
}

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

#[test]
fn truncated_safetensors_is_a_clear_error_naming_the_file() {
    let tmp = copy_fixture("tiny-llama");
    let path = tmp.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    let err = load_llm(tmp.path(), DType::F32, &Device::Cpu)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Format { .. }), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn config_mismatch_names_the_tensor_and_shapes() {
    let tmp = copy_fixture("tiny-llama");
    let cfg_path = tmp.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 128");
    std::fs::write(&cfg_path, cfg).unwrap();
    let err = load_llm(tmp.path(), DType::F32, &Device::Cpu)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight"), "{msg}");
    assert!(
        msg.contains("[128, 64]") && msg.contains("[96, 64]"),
        "{msg}"
    );
}

#[test]
fn missing_files_are_named() {
    let tmp = copy_fixture("tiny-llama");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let msg = load_llm(tmp.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    let msg = load_llm(&tmp.path().join("nope.gguf"), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("nope.gguf") && msg.contains("no such file"),
        "{msg}"
    );
    let missing_cfg = tempfile::tempdir().unwrap();
    let msg = load_llm(missing_cfg.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn unsupported_model_type_is_refused() {
    let err = LlamaConfig::from_hf_json(r#"{"model_type": "gpt_neox", "vocab_size": 1, "hidden_size": 1,
        "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1, "rms_norm_eps": 1e-5}"#)
        .err()
        .unwrap();
    assert!(err.to_string().contains("gpt_neox"));
}

/// What pal cannot compute for a Gemma 3 config is refused by name: the image-text checkpoints,
/// logit soft-capping, bidirectional attention (EmbeddingGemma), another attention scale, and
/// layers in another pattern.
#[test]
fn gemma3_configs_pal_cannot_run_are_refused_by_name() {
    let text = std::fs::read_to_string(fixture("tiny-gemma3").join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let refused = |edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let mut c = config.clone();
        edit(&mut c);
        LlamaConfig::from_hf_json(&c.to_string())
            .expect_err("refused")
            .to_string()
    };
    let msg = refused(&|c| c["model_type"] = "gemma3".into());
    assert!(msg.contains("gemma3_text"), "{msg}");
    let msg = refused(&|c| c["final_logit_softcapping"] = 30.0.into());
    assert!(msg.contains("final_logit_softcapping"), "{msg}");
    let msg = refused(&|c| c["use_bidirectional_attention"] = true.into());
    assert!(msg.contains("use_bidirectional_attention"), "{msg}");
    let msg = refused(&|c| c["query_pre_attn_scalar"] = 64.into());
    assert!(msg.contains("query_pre_attn_scalar"), "{msg}");
    let msg = refused(&|c| {
        c["layer_types"] =
            serde_json::json!(["full_attention", "sliding_attention", "sliding_attention"])
    });
    assert!(msg.contains("layer_types"), "{msg}");
    // The folder's own config loads.
    assert!(LlamaConfig::from_hf_json(&text).is_ok());
}
