//! Continuous batching with the real SmolLM2-135M (random adapters, every route): sequences
//! that join a running batch between steps, about different clips and at different positions,
//! prefilled alone or together in one padded batch, generate exactly what each generates alone;
//! a sequence leaves the batch the step it ends, and a cancelled one at once.

use candle_core::{DType, Device, Tensor};
use pal_infer::continuous::{prefill, prefill_batch, Running};
use pal_infer::{generate_with_audio, ChatTemplate, FinishReason, GenerationParams, Message};
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Route};
use pal_models::load_llm;
use pal_models::text::Segment;
use pal_nn::gradcheck::pseudo_random;
use pal_nn::Params;

fn example(ids: &[u32], frames: usize, seed: u64) -> Example {
    let audio = Tensor::from_vec(
        pseudo_random(frames * 384, seed),
        (frames, 384),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::F32)
    .unwrap();
    Example {
        segments: vec![
            Segment::Audio,
            Segment::Text {
                ids: ids.to_vec(),
                trained: false,
            },
        ],
        clips: vec![vec![audio]],
    }
}

#[test]
fn joining_between_steps_generates_what_each_generates_alone() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let (llm, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let ids = tokenizer
        .encode(
            &template
                .render(
                    &[Message::new("user", "What is the capital of France?")],
                    true,
                )
                .unwrap(),
        )
        .unwrap();
    // Gated LAL with its gates opened (a softmax of its own for the audio keys, in prefill and
    // in each decoding step alike).
    for (route, gated) in [
        (Route::Plits, false),
        (Route::Lal, false),
        (Route::Pal, false),
        (Route::Lal, true),
    ] {
        let p = Params::new(0, DType::F32, &Device::Cpu);
        let mut attachment = Attachment::new("a", 384, route);
        attachment.lal.gate = gated;
        let model = AudioLlm::new(llm.clone(), &[attachment], &p).unwrap();
        for (name, var) in p.vars() {
            if name.ends_with(".gate") {
                var.set(&(var.ones_like().unwrap() * 0.5).unwrap()).unwrap();
            }
        }
        let examples = [
            example(&ids, 12, 2),
            example(&ids[3..], 30, 3),
            example(&ids, 20, 4),
        ];
        let limits = [12, 6, 5];
        let alone: Vec<Vec<u32>> = examples
            .iter()
            .zip(limits)
            .map(|(e, max_tokens)| {
                let params = GenerationParams {
                    max_tokens,
                    ..Default::default()
                };
                let g = generate_with_audio(
                    &model,
                    &tokenizer,
                    std::slice::from_ref(e),
                    &params,
                    |_, _| {},
                )
                .unwrap();
                g[0].tokens.clone()
            })
            .collect();

        // Sequence 0 starts alone; 1 and 2 (other prompt lengths and clips) arrive together
        // after two steps and are prefilled in one padded batch; each leaves when it ends.
        let mut running: Running<usize> = Running::default();
        let mut done: Vec<Option<Vec<u32>>> = vec![None; 3];
        let mut sizes = vec![];
        for step in 0..40 {
            let arriving: Vec<usize> = match step {
                0 => vec![0],
                2 => vec![1, 2],
                _ => vec![],
            };
            let prefilled = match arriving.as_slice() {
                [] => vec![],
                [i] => vec![prefill(&model, &examples[*i], None).unwrap()],
                _ => {
                    let together: Vec<Example> =
                        arriving.iter().map(|&i| examples[i].clone()).collect();
                    prefill_batch(&model, &together, &[]).unwrap()
                }
            };
            for (&i, prefilled) in arriving.iter().zip(prefilled) {
                let params = GenerationParams {
                    max_tokens: limits[i],
                    ..Default::default()
                };
                if let Some((key, g)) = running
                    .join(i, prefilled, params, &tokenizer, |_, _| true)
                    .unwrap()
                {
                    done[key] = Some(g.tokens);
                }
            }
            if running.is_empty() && step > 2 {
                break;
            }
            sizes.push(running.len());
            let outcome = running.step(&model.llm, &tokenizer, |_, _| true).unwrap();
            assert!(outcome.failed.is_empty());
            for (key, g) in outcome.ended {
                done[key] = Some(g.tokens);
            }
        }
        for i in 0..3 {
            assert_eq!(
                done[i].as_ref(),
                Some(&alone[i]),
                "{route:?} (gated: {gated}) sequence {i}"
            );
        }
        // All three ran together, then the batch shrank as they ended.
        let full = sizes.iter().position(|&s| s == 3);
        assert!(
            full.is_some_and(|f| sizes[f..].iter().any(|&s| s < 3)),
            "{route:?}: {sizes:?}"
        );
    }
}

#[test]
fn a_cancelled_sequence_leaves_at_once() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let (llm, tokenizer) = load_llm(&path, DType::F32, &Device::Cpu).unwrap();
    let p = Params::new(0, DType::F32, &Device::Cpu);
    let model = AudioLlm::new(llm, &[Attachment::new("a", 384, Route::Lal)], &p).unwrap();
    let ids = tokenizer.encode("Tell me a long story.").unwrap();
    let params = GenerationParams {
        max_tokens: 50,
        ..Default::default()
    };
    let mut running: Running<&str> = Running::default();
    for key in ["kept", "cancelled"] {
        let prefilled = prefill(&model, &example(&ids, 10, 5), None).unwrap();
        running
            .join(key, prefilled, params.clone(), &tokenizer, |_, _| true)
            .unwrap();
    }
    let outcome = running
        .step(&model.llm, &tokenizer, |key, _| *key != "cancelled")
        .unwrap();
    assert_eq!(outcome.ended.len(), 1);
    assert_eq!(outcome.ended[0].0, "cancelled");
    assert_eq!(outcome.ended[0].1.finish_reason, FinishReason::Cancelled);
    assert_eq!(running.len(), 1);
}
