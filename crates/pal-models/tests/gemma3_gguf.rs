//! The real Gemma 3 270M GGUF (`pal fetch gemma3-270m`): its tokenizer and logits match
//! transformers reading the same file (golden values from `scripts/make_llm_fixtures.py
//! --gemma3-gguf`), over a prompt longer than the local layers' 512-position window; decoding
//! past the window matches a full prefill; the quantized weights give the same next token.

mod common;

use candle_core::{DType, Device, Tensor};
use common::max_diff;
use pal_models::llm::{Activation, WeightForm};
use pal_models::load_llm;
use pal_models::text::{ChatTemplate, Message};

fn golden() -> (Tensor, Tensor, Tensor, serde_json::Value) {
    common::golden("gemma3", "rows_logits")
}

fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

#[test]
fn gemma3_gguf_tokenizer_and_logits_match_transformers() {
    let Some(path) = pal_assets::for_test(&pal_assets::GEMMA3_270M) else {
        return;
    };
    let (model, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let c = &model.config;
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.vocab_size),
        (18, 640, 262_144)
    );
    assert_eq!(c.hidden_act, Activation::GeluTanh);
    let local = model.layers.iter().filter(|l| l.window.is_some()).count();
    assert_eq!(local, 15, "five local layers per global one");
    let (ids, last, rows, json) = golden();

    common::assert_encodings(&tokenizer, &json, true);
    let prompt = json["prompt"].as_str().unwrap();
    let ids_vec = ids.to_vec1::<u32>().unwrap();
    let with_bos = format!("{}{prompt}", tokenizer.bos_token.as_deref().unwrap());
    assert_eq!(tokenizer.encode(&with_bos).unwrap(), ids_vec);
    let end_of_turn = tokenizer.token_id("<end_of_turn>").unwrap();
    assert!(tokenizer.stop_token_ids.contains(&end_of_turn));
    // Answers end as the template ends a turn, not with the file's `<eos>`.
    assert_eq!(tokenizer.answer_end_id(), Some(end_of_turn));

    let n = ids_vec.len();
    assert!(n > 600, "the prompt must pass the 512-position window");
    let mut cache = model.new_cache();
    let logits = model
        .forward(&ids.unsqueeze(0).unwrap(), None, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let every_64th: Vec<u32> = (0..n as u32).step_by(64).collect();
    let picked = logits
        .index_select(
            &Tensor::new(every_64th.as_slice(), &Device::Cpu).unwrap(),
            0,
        )
        .unwrap()
        .narrow(1, 0, 512)
        .unwrap();
    let d_last = max_diff(&logits.get(n - 1).unwrap(), &last);
    let d_rows = max_diff(&picked, &rows);
    eprintln!("logits vs transformers: last {d_last}, rows {d_rows}");
    assert!(d_last < 2e-3, "last-position logits differ by {d_last}");
    assert!(d_rows < 2e-3, "logits differ by {d_rows}");

    // Decoding the last token after a prefill of the others (own keys past the window).
    let mut cache = model.new_cache();
    let head = ids.narrow(0, 0, n - 1).unwrap().unsqueeze(0).unwrap();
    model.forward(&head, None, &mut cache).unwrap();
    let step = model
        .decode_step(&ids_vec[n - 1..], &mut [&mut cache])
        .unwrap();
    let d_step = max_diff(&step.squeeze(0).unwrap(), &last);
    eprintln!("decoding step vs transformers: {d_step}");
    assert!(d_step < 2e-3, "a decoding step differs by {d_step}");
}

#[test]
fn gemma3_quantized_weights_pick_the_same_next_token() {
    let Some(path) = pal_assets::for_test(&pal_assets::GEMMA3_270M) else {
        return;
    };
    let (mut model, _) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let (ids, last, _, _) = golden();
    let embedded = model.embed(&ids.unsqueeze(0).unwrap()).unwrap();
    let used =
        pal_models::llm::weight_form::apply(&mut model, &path, WeightForm::Quantized).unwrap();
    for kind in ["Q4K", "Q5_0", "Q6K", "Q8_0"] {
        assert!(used.quantized.contains_key(kind), "{kind} not in {used}");
    }
    // The 262k-row f32 table is freed: tokens are looked up in the quantized one, to the same
    // values.
    assert!(model.embed_quantized.is_some());
    assert_eq!(model.embed_tokens.stride(), &[0, 0]);
    let looked_up = model.embed(&ids.unsqueeze(0).unwrap()).unwrap();
    assert_eq!(max_diff(&looked_up, &embedded), 0.0);
    let ids_vec = ids.to_vec1::<u32>().unwrap();
    let n = ids_vec.len();
    let mut cache = model.new_cache();
    let head = ids.narrow(0, 0, n - 1).unwrap().unsqueeze(0).unwrap();
    model.forward(&head, None, &mut cache).unwrap();
    let step = model
        .decode_step(&ids_vec[n - 1..], &mut [&mut cache])
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_eq!(argmax(&step), argmax(&last));
    // Every type of the file runs on pal's kernels, activations quantized to 16 bits per value:
    // the logits stay within 1e-2 of the f32 product on the same weights (6.4e-3 measured;
    // candle's 8-bit activations, which the k-quants took before, moved them by 0.92).
    let d = max_diff(&step, &last);
    eprintln!("quantized logits vs transformers f32: {d}");
    assert!(d < 1e-2, "quantized logits differ by {d}");
}

#[test]
fn gemma3_prompt_uses_gemma_turns() {
    let Some(path) = pal_assets::for_test(&pal_assets::GEMMA3_270M) else {
        return;
    };
    let (_, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let text = template
        .render(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "What is heard?"),
                Message::new("assistant", "A dog."),
                Message::new("user", "How many times?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is heard?<end_of_turn>\n<start_of_turn>model\nA dog.<end_of_turn>\n<start_of_turn>user\nHow many times?<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = tokenizer.encode(&text).unwrap();
    assert_eq!(ids[0], tokenizer.token_id("<bos>").unwrap());
    assert_eq!(ids[1], tokenizer.token_id("<start_of_turn>").unwrap());
}
