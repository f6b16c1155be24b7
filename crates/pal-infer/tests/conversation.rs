//! A multi-turn conversation about one clip encodes the clip and computes its LAL prefix once,
//! and every turn answers exactly what a fresh generation over the whole conversation answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use pal_infer::{generate_with_audio, ChatTemplate, Conversation, GenerationParams, Message};
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Route};
use pal_models::encoders::AudioEncoder;
use pal_models::load_llm;
use pal_models::text::segments::prompt_segments;
use pal_nn::gradcheck::pseudo_random;
use pal_nn::Params;

/// An encoder that counts its calls: one token per 1,000 samples.
struct CountingEncoder(Arc<AtomicUsize>);

impl AudioEncoder for CountingEncoder {
    fn id(&self) -> String {
        "counting".into()
    }
    fn dim(&self) -> usize {
        384
    }
    fn encode(&self, samples: &[f32]) -> pal_models::Result<Tensor> {
        self.0.fetch_add(1, Ordering::Relaxed);
        let n = samples.len() / 1000;
        Ok(
            Tensor::from_vec(pseudo_random(n * 384, 7), (n, 384), &Device::Cpu)?
                .to_dtype(DType::F32)?,
        )
    }
}

#[test]
fn conversation_reuses_the_clip_and_answers_like_a_fresh_generation() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let (llm, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let params = GenerationParams {
        max_tokens: 8,
        ..Default::default()
    };
    for route in [Route::Lal, Route::Pal, Route::Plits] {
        let p = Params::new(0, DType::F32, &Device::Cpu);
        let mut attachment = Attachment::new("a", 384, route);
        attachment.lal.start = 20;
        let model = AudioLlm::new(llm.clone(), &[attachment], &p).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let encoders: Vec<Box<dyn AudioEncoder>> = vec![Box::new(CountingEncoder(calls.clone()))];
        let samples = vec![0.0f32; 16_000];
        let mut chat = Conversation::from_clip(&model, &tokenizer, &encoders, &samples).unwrap();
        let mut streamed = String::new();
        for (turn, question) in ["What is this?", "Say more.", "Is it loud?"]
            .iter()
            .enumerate()
        {
            let answer = chat
                .say(question, &params, |piece| streamed.push_str(piece))
                .unwrap();
            // A fresh generation over the same messages answers the same.
            let asked: Vec<Message> = chat.messages()[..chat.messages().len() - 1].to_vec();
            let fresh = generate_with_audio(
                &model,
                &tokenizer,
                &[Example {
                    segments: prompt_segments(&template, &tokenizer, &asked).unwrap(),
                    clips: vec![vec![encoders[0].encode(&samples).unwrap()]],
                }],
                &params,
                |_, _| {},
            )
            .unwrap();
            assert_eq!(
                answer.tokens, fresh[0].tokens,
                "{route:?} turn {turn}: conversation and fresh generation differ"
            );
            assert!(streamed.ends_with(&answer.text));
            streamed.clear();
        }
        // The conversation encoded once; the fresh generations above encoded once per turn.
        assert_eq!(calls.load(Ordering::Relaxed), 1 + 3, "{route:?}");
        let expected_prefixes = if route == Route::Plits { 0 } else { 1 + 3 };
        assert_eq!(
            model.lal_prefix_computations.load(Ordering::Relaxed),
            expected_prefixes,
            "{route:?}: the conversation computes its LAL prefix once"
        );
    }
}
