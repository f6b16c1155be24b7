//! Generation with the real SmolLM2-135M-Instruct (fetched by `pal fetch`).

use std::path::Path;

use candle_core::{DType, Device};
use pal_infer::{generate, ChatTemplate, FinishReason, GenerationParams, Message};
use pal_models::{load_llm, Llama, Tokenizer};

fn load() -> Option<(Llama, Tokenizer)> {
    let path = pal_assets::for_test(&pal_assets::SMOLLM2_135M)?;
    Some(load_llm(&path, DType::F32, &Device::Cpu).unwrap())
}

fn prompt_ids(tokenizer: &Tokenizer, question: &str) -> Vec<u32> {
    let template = ChatTemplate::for_tokenizer(tokenizer).unwrap();
    let text = template
        .render(&[Message::new("user", question)], true)
        .unwrap();
    tokenizer.encode(&text).unwrap()
}

#[test]
fn chat_template_renders_like_transformers() {
    let Some((_, tokenizer)) = load() else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pal-models/tests/fixtures");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("smollm2-golden.json")).unwrap())
            .unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let rendered = template
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert_eq!(rendered, golden["prompt"].as_str().unwrap());
}

#[test]
fn greedy_answer_names_paris_and_streams_the_same_text() {
    let Some((model, tokenizer)) = load() else {
        return;
    };
    let ids = prompt_ids(&tokenizer, "What is the capital of France?");
    let params = GenerationParams {
        max_tokens: 40,
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = generate(&model, &tokenizer, &[ids], &params, |_, piece| {
        streamed.push_str(piece)
    })
    .unwrap();
    assert!(out[0].text.contains("Paris"), "answer: {:?}", out[0].text);
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert_eq!(streamed, out[0].text);
}

#[test]
fn batched_generation_matches_one_at_a_time() {
    let Some((model, tokenizer)) = load() else {
        return;
    };
    let prompts = vec![
        prompt_ids(&tokenizer, "What is the capital of France?"),
        prompt_ids(&tokenizer, "Name a color."),
    ];
    assert_ne!(
        prompts[0].len(),
        prompts[1].len(),
        "the batch must need padding"
    );
    let params = GenerationParams {
        max_tokens: 12,
        ..Default::default()
    };
    let batched = generate(&model, &tokenizer, &prompts, &params, |_, _| {}).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(
            &model,
            &tokenizer,
            std::slice::from_ref(p),
            &params,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(batched[i].tokens, alone[0].tokens, "prompt {i}");
    }
}

#[test]
fn sampling_is_reproducible_by_seed_and_respects_limits() {
    let Some((model, tokenizer)) = load() else {
        return;
    };
    let ids = vec![prompt_ids(&tokenizer, "Tell me a story about a cat.")];
    let params = GenerationParams {
        max_tokens: 8,
        temperature: 0.9,
        top_p: 0.95,
        seed: 42,
        stop: vec![],
    };
    let a = generate(&model, &tokenizer, &ids, &params, |_, _| {}).unwrap();
    let b = generate(&model, &tokenizer, &ids, &params, |_, _| {}).unwrap();
    assert_eq!(a[0].tokens, b[0].tokens);
    assert!(a[0].tokens.len() <= 8);
    if a[0].tokens.len() == 8 {
        assert_eq!(a[0].finish_reason, FinishReason::Length);
    }
    // A stop string cuts the text before it.
    let with_stop = GenerationParams {
        max_tokens: 40,
        stop: vec!["Paris".into()],
        ..Default::default()
    };
    let out = generate(
        &model,
        &tokenizer,
        &[prompt_ids(&tokenizer, "What is the capital of France?")],
        &with_stop,
        |_, _| {},
    )
    .unwrap();
    assert!(
        !out[0].text.contains("Paris") && out[0].finish_reason == FinishReason::Stop,
        "{:?}",
        out[0]
    );
}

#[test]
fn template_errors_are_reported() {
    let t = ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).unwrap();
    let err = t
        .render(&[Message::new("user", "hi")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no system role"), "{err}");
    assert!(ChatTemplate::new("{% for %}", None, None).is_err());
}
