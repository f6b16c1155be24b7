//! Local (sliding-window) layers, as Gemma 3 has them, on the tiny Llama fixture given a window
//! of 4 positions and its own RoPE base every other layer: outputs depend on the positions'
//! differences only (a text whose first row sits after LAL audio keys that take positions gets
//! the same answer), decoding past the window matches a prefill, and the window does restrict.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, max_diff};
use pal_models::llm::SlidingWindow;
use pal_models::{Llama, LlamaConfig, Weights};

fn model(window: Option<SlidingWindow>) -> Llama {
    let dir = fixture("tiny-llama");
    let mut config = LlamaConfig::from_hf_folder(&dir).unwrap();
    config.rope_scaling = None;
    config.sliding_window = window;
    let weights = Weights::from_hf_folder(&dir, DType::F32, &Device::Cpu).unwrap();
    Llama::load(config, &weights).unwrap()
}

fn local() -> Option<SlidingWindow> {
    Some(SlidingWindow {
        window: 4,
        global_every: 2,
        rope_theta: 100.0,
    })
}

fn tokens() -> Vec<u32> {
    vec![5, 17, 33, 2, 90, 41, 7, 8, 9, 10, 60]
}

fn prefill(m: &Llama, first_position: u32) -> Tensor {
    let ids = Tensor::new(tokens().as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = m.new_cache();
    cache.next_position = vec![first_position];
    m.forward(&ids, None, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn local_layers_depend_on_position_differences_only() {
    let m = model(local());
    assert_eq!(m.layers.iter().filter(|l| l.window.is_some()).count(), 1);
    let at_zero = prefill(&m, 0);
    // As after 100 audio keys that take positions (LAL with rope = "prefix").
    let after_audio = prefill(&m, 100);
    let d = max_diff(&at_zero, &after_audio);
    assert!(d < 1e-4, "shifted positions change the logits by {d}");
}

#[test]
fn decoding_past_the_window_matches_a_prefill() {
    let m = model(local());
    let whole = prefill(&m, 0);
    let ids = tokens();
    let n = ids.len();
    let mut cache = m.new_cache();
    let head = Tensor::new(&ids[..4], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&head, None, &mut cache).unwrap();
    for (i, &id) in ids.iter().enumerate().skip(4) {
        let step = m
            .decode_step(&[id], &mut [&mut cache])
            .unwrap()
            .squeeze(0)
            .unwrap();
        let d = max_diff(&step, &whole.get(i).unwrap());
        assert!(d < 1e-4, "decoding token {i} of {n} differs by {d}");
    }
}

#[test]
fn the_window_restricts_what_a_local_layer_sees() {
    let windowed = prefill(&model(local()), 0);
    let wide = prefill(
        &model(Some(SlidingWindow {
            window: 1000,
            global_every: 2,
            rope_theta: 100.0,
        })),
        0,
    );
    // Rows within the window agree; later rows do not.
    assert!(
        max_diff(
            &windowed.narrow(0, 0, 4).unwrap(),
            &wide.narrow(0, 0, 4).unwrap()
        ) < 1e-5
    );
    assert!(
        max_diff(
            &windowed.narrow(0, 4, 7).unwrap(),
            &wide.narrow(0, 4, 7).unwrap()
        ) > 1e-3
    );
}
