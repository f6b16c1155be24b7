//! Generation from audio-LLM prompts with the real SmolLM2-135M (random adapters): LAL with no
//! layers generates exactly what the text-only model does, and a padded batch of clips of
//! different lengths generates what each clip alone does, for every route.

use candle_core::{DType, Device, Tensor};
use pal_infer::{generate, generate_with_audio, ChatTemplate, GenerationParams, Message};
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Route};
use pal_models::load_llm;
use pal_models::text::Segment;
use pal_nn::gradcheck::pseudo_random;
use pal_nn::Params;

fn frames(n: usize, seed: u64) -> Tensor {
    Tensor::from_vec(pseudo_random(n * 384, seed), (n, 384), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

#[test]
fn audio_generation_matches_text_generation_and_is_batch_invariant() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let (llm, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let prompt = template
        .render(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let ids = tokenizer.encode(&prompt).unwrap();
    let params = GenerationParams {
        max_tokens: 10,
        ..Default::default()
    };

    let text_only = generate(
        &llm,
        &tokenizer,
        std::slice::from_ref(&ids),
        &params,
        |_, _| {},
    )
    .unwrap();
    let p = Params::new(0, DType::F32, &Device::Cpu);
    let mut none = Attachment::new("a", 384, Route::Lal);
    none.lal.layers = Some(vec![]);
    let model = AudioLlm::new(llm.clone(), &[none], &p).unwrap();
    let example = Example {
        segments: vec![Segment::Text {
            ids: ids.clone(),
            trained: false,
        }],
        clips: vec![vec![frames(7, 1)]],
    };
    let with_audio =
        generate_with_audio(&model, &tokenizer, &[example], &params, |_, _| {}).unwrap();
    assert_eq!(with_audio[0].tokens, text_only[0].tokens);

    for route in [Route::Plits, Route::Lal, Route::Pal] {
        let p = Params::new(0, DType::F32, &Device::Cpu);
        let model = AudioLlm::new(llm.clone(), &[Attachment::new("a", 384, route)], &p).unwrap();
        let examples = vec![
            Example {
                segments: vec![
                    Segment::Audio,
                    Segment::Text {
                        ids: ids.clone(),
                        trained: false,
                    },
                ],
                clips: vec![vec![frames(12, 2)]],
            },
            Example {
                segments: vec![
                    Segment::Audio,
                    Segment::Text {
                        ids: ids[3..].to_vec(),
                        trained: false,
                    },
                ],
                clips: vec![vec![frames(30, 3)]],
            },
        ];
        let batched =
            generate_with_audio(&model, &tokenizer, &examples, &params, |_, _| {}).unwrap();
        for (i, e) in examples.iter().enumerate() {
            let alone = generate_with_audio(
                &model,
                &tokenizer,
                std::slice::from_ref(e),
                &params,
                |_, _| {},
            )
            .unwrap();
            assert_eq!(batched[i].tokens, alone[0].tokens, "{route:?} item {i}");
        }
    }
}
