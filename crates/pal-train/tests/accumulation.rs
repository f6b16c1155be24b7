//! Gradient accumulation over k micro-batches equals one batch k times larger.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Route};
use pal_models::text::Segment;
use pal_models::{Llama, LlamaConfig, Weights};
use pal_nn::gradcheck::pseudo_random;
use pal_nn::Params;
use pal_train::trainer::accumulated_gradients;

fn example(i: u64, text_len: usize) -> Example {
    let audio = Tensor::from_vec(pseudo_random(5 * 8, i), (5, 8), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    Example {
        segments: vec![
            Segment::Text {
                ids: vec![3, 4],
                trained: false,
            },
            Segment::Audio,
            Segment::Text {
                ids: (0..text_len as u32).map(|t| 10 + t + i as u32).collect(),
                trained: true,
            },
        ],
        clips: vec![vec![audio]],
    }
}

#[test]
fn accumulating_micro_batches_equals_one_big_batch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pal-models/tests/fixtures/tiny-llama");
    let llm = Llama::load(
        LlamaConfig::from_hf_folder(&dir).unwrap(),
        &Weights::from_hf_folder(&dir, DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        let params = Params::new(3, DType::F32, &Device::Cpu);
        let model = AudioLlm::new(llm.clone(), &[Attachment::new("a", 8, route)], &params).unwrap();
        // Different numbers of trained tokens per example: a plain mean of micro-batch means
        // would differ from the big batch; token weighting makes them equal.
        let examples: Vec<Example> = (0..4).map(|i| example(i, 2 + i as usize)).collect();
        let (big, big_loss, big_tokens) =
            accumulated_gradients(&model, &params, std::slice::from_ref(&examples)).unwrap();
        let micro = vec![
            examples[..1].to_vec(),
            examples[1..3].to_vec(),
            examples[3..].to_vec(),
        ];
        let (acc, acc_loss, acc_tokens) = accumulated_gradients(&model, &params, &micro).unwrap();
        assert_eq!(big_tokens, acc_tokens);
        assert!(
            (big_loss - acc_loss).abs() < 1e-5,
            "{route:?}: {big_loss} vs {acc_loss}"
        );
        assert_eq!(big.len(), params.vars().len());
        for (name, g) in &big {
            let d = (g - &acc[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Relative, with an absolute floor for gradients that are zero in exact arithmetic
            // (a key bias shifts every score of a row equally).
            assert!(
                d <= 1e-4 * scale + 1e-7,
                "{route:?} {name}: {d} (scale {scale})"
            );
        }
    }
}
