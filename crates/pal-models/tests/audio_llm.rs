//! The properties of PLITS, LAL and PAL from PAPER.md, on the tiny random Llama fixture.

use std::sync::atomic::Ordering;

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{fixture, max_abs, max_diff};
use pal_models::audio_llm::config::ConnectorConfig;
use pal_models::audio_llm::lal::LalProjection;
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Padding, Route};
use pal_models::text::Segment;
use pal_models::{Llama, LlamaConfig, Weights};
use pal_nn::gradcheck::pseudo_random;
use pal_nn::Params;

const D_ENC: usize = 8;

fn tiny_llm(dtype: DType) -> Llama {
    let dir = fixture("tiny-llama");
    let config = LlamaConfig::from_hf_folder(&dir).unwrap();
    Llama::load(
        config,
        &Weights::from_hf_folder(&dir, dtype, &Device::Cpu).unwrap(),
    )
    .unwrap()
}

fn frames(n: usize, seed: u64, dtype: DType) -> Tensor {
    Tensor::from_vec(pseudo_random(n * D_ENC, seed), (n, D_ENC), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn example(text_before: &[u32], text_after: &[u32], audio: Tensor) -> Example {
    Example {
        segments: vec![
            Segment::Text {
                ids: text_before.to_vec(),
                trained: false,
            },
            Segment::Audio,
            Segment::Text {
                ids: text_after.to_vec(),
                trained: true,
            },
        ],
        clips: vec![vec![audio]],
    }
}

fn model(route: Route, dtype: DType, edit: impl FnOnce(&mut Attachment)) -> (AudioLlm, Params) {
    let params = Params::new(7, dtype, &Device::Cpu);
    let mut a = Attachment::new("enc", D_ENC, route);
    a.summary = ConnectorConfig::Latent {
        queries: 4,
        layers: 1,
    };
    edit(&mut a);
    (
        AudioLlm::new(tiny_llm(dtype), &[a], &params).unwrap(),
        params,
    )
}

#[test]
fn empty_lal_layers_is_exactly_the_text_only_llm() {
    let (m, _) = model(Route::Lal, DType::F32, |a| a.lal.layers = Some(vec![]));
    let text = [5u32, 17, 33, 2, 40];
    let mut batch = m
        .prepare(
            &[example(&text[..2], &text[2..], frames(6, 1, DType::F32))],
            Padding::Right,
        )
        .unwrap();
    let ours = m.forward(&mut batch).unwrap();
    let ids = Tensor::new(&text, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = m.llm.new_cache();
    let plain = m.llm.forward(&ids, None, &mut cache).unwrap();
    assert_eq!(max_diff(&ours, &plain), 0.0);
}

#[test]
fn one_layer_lal_equals_plits_with_the_same_audio_embeddings() {
    let mut llm = tiny_llm(DType::F32);
    llm.layers.truncate(1);
    llm.config.num_hidden_layers = 1;
    let params = Params::new(7, DType::F32, &Device::Cpu);
    let m = AudioLlm::new(llm, &[Attachment::new("enc", D_ENC, Route::Lal)], &params).unwrap();
    let e = frames(5, 2, DType::F32);
    let text = [3u32, 9, 27, 81];
    let mut batch = m
        .prepare(
            &[Example {
                segments: vec![Segment::Text {
                    ids: text.to_vec(),
                    trained: true,
                }],
                clips: vec![vec![e.clone()]],
            }],
            Padding::Right,
        )
        .unwrap();
    let lal = m.forward(&mut batch).unwrap();
    // PLITS with A_0 = Proj_0(E) as the audio embeddings, prepended.
    let Some(LalProjection::Linear(projectors)) =
        m.encoders[0].lal.as_ref().map(|a| a.projector.clone())
    else {
        panic!()
    };
    let a0 = projectors[0].forward(&e).unwrap();
    let text_emb = m
        .llm
        .embed(
            &Tensor::new(&text, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let seq = Tensor::cat(&[&a0, &text_emb], 0)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = m.llm.new_cache();
    let hidden = m.llm.forward_embeds(&seq, None, &mut cache).unwrap();
    let plits = m.llm.logits(&hidden.narrow(1, 5, 4).unwrap()).unwrap();
    let d = max_diff(&lal, &plits);
    assert!(d < 1e-5, "1-layer LAL and PLITS differ by {d}");
}

#[test]
fn audio_never_reaches_an_ffn_in_lal_but_does_in_plits() {
    let layers = 2;
    let (na, nt) = (6usize, 4usize);
    let text = [1u32, 2, 3, 4];
    for (route, audio_rows) in [(Route::Lal, 0), (Route::Plits, na), (Route::Pal, 4)] {
        let (m, _) = model(route, DType::F32, |_| {});
        let mut batch = m
            .prepare(
                &[example(&text[..1], &text[1..], frames(na, 3, DType::F32))],
                Padding::Right,
            )
            .unwrap();
        let before = m.llm.ffn_rows.load(Ordering::SeqCst);
        m.forward(&mut batch).unwrap();
        let rows = m.llm.ffn_rows.load(Ordering::SeqCst) - before;
        assert_eq!(rows, (nt + audio_rows) * layers, "{route:?}");
    }
}

#[test]
fn changing_the_audio_changes_lal_text_logits() {
    let (m, _) = model(Route::Lal, DType::F32, |_| {});
    let text = [7u32, 8, 9];
    let run = |seed| {
        let mut batch = m
            .prepare(
                &[example(&[], &text, frames(5, seed, DType::F32))],
                Padding::Right,
            )
            .unwrap();
        m.forward(&mut batch).unwrap()
    };
    assert!(max_diff(&run(10), &run(11)) > 1e-3);
    assert_eq!(max_diff(&run(10), &run(10)), 0.0);
}

/// Each item of a padded batch gets, on its real rows, the logits and targets it gets alone.
fn assert_batch_matches_alone(m: &AudioLlm, items: &[Example], padding: Padding, label: &str) {
    let mut batch = m.prepare(items, padding).unwrap();
    let logits = m.forward(&mut batch).unwrap();
    let valid = batch.valid.to_vec2::<f32>().unwrap();
    for (i, item) in items.iter().enumerate() {
        let mut alone = m.prepare(std::slice::from_ref(item), padding).unwrap();
        let single = m.forward(&mut alone).unwrap().squeeze(0).unwrap();
        let rows: Vec<u32> = (0..valid[i].len() as u32)
            .filter(|&r| valid[i][r as usize] > 0.5)
            .collect();
        let picked = logits
            .get(i)
            .unwrap()
            .index_select(&Tensor::new(rows.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap();
        let d = max_diff(&picked, &single);
        assert!(d < 1e-4, "{label} item {i}: {d}");
        // Targets follow the same rows.
        let t: Vec<Option<u32>> = rows.iter().map(|&r| batch.targets[i][r as usize]).collect();
        assert_eq!(t, alone.targets[0], "{label} item {i}");
    }
}

#[test]
fn padded_batches_give_each_item_its_result_alone() {
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        for padding in [Padding::Right, Padding::Left] {
            let (m, _) = model(route, DType::F32, |a| {
                a.connector = ConnectorConfig::Mlp { stack: 2 }
            });
            let items = vec![
                example(&[4, 5], &[6, 7, 8], frames(3, 20, DType::F32)),
                example(&[9], &[10, 11, 12, 13, 14], frames(7, 21, DType::F32)),
            ];
            assert_batch_matches_alone(&m, &items, padding, &format!("{route:?} {padding:?}"));
        }
    }
}

/// Text, a clip, text, a second clip, the trained answer.
fn two_clip_example(first: Tensor, second: Tensor) -> Example {
    let text = |ids: &[u32], trained| Segment::Text {
        ids: ids.to_vec(),
        trained,
    };
    Example {
        segments: vec![
            text(&[4, 5], false),
            Segment::Audio,
            text(&[6], false),
            Segment::Audio,
            text(&[7, 8, 9], true),
        ],
        clips: vec![vec![first], vec![second]],
    }
}

#[test]
fn several_clips_each_take_their_place_and_batch_with_one_clip_examples() {
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        let (mut m, _) = model(route, DType::F32, |a| {
            a.connector = ConnectorConfig::Mlp { stack: 2 }
        });
        m.max_clips = 2;
        let two = two_clip_example(frames(5, 50, DType::F32), frames(3, 51, DType::F32));
        let one = example(&[4, 5], &[6, 7, 8], frames(7, 52, DType::F32));
        for padding in [Padding::Right, Padding::Left] {
            let label = format!("{route:?} {padding:?}");
            assert_batch_matches_alone(&m, &[one.clone(), two.clone()], padding, &label);
        }
        // The prompt takes both clips' positions.
        let mut batch = m
            .prepare(std::slice::from_ref(&two), Padding::Left)
            .unwrap();
        let logits = m.forward(&mut batch).unwrap();
        assert_eq!(
            batch.cache.next_position[0] as usize,
            m.prompt_positions(&two).unwrap(),
            "{route:?}"
        );
        // Both clips are heard, in order: swapping them changes the answer's logits.
        let swapped = two_clip_example(frames(3, 51, DType::F32), frames(5, 50, DType::F32));
        let mut batch = m.prepare(&[swapped], Padding::Left).unwrap();
        let other = m.forward(&mut batch).unwrap();
        let last = |t: &Tensor| {
            let n = t.dim(1).unwrap();
            t.narrow(1, n - 1, 1).unwrap()
        };
        assert!(max_diff(&last(&logits), &last(&other)) > 1e-4, "{route:?}");
    }
}

#[test]
fn more_clips_than_the_config_allows_are_refused() {
    let (m, _) = model(Route::Lal, DType::F32, |_| {});
    let two = two_clip_example(frames(5, 50, DType::F32), frames(3, 51, DType::F32));
    let error = m.prepare(&[two], Padding::Right).err().unwrap().to_string();
    assert!(
        error.contains("2 clips") && error.contains("max_clips"),
        "{error}"
    );
}

#[test]
fn targets_cover_only_trained_tokens() {
    let (m, _) = model(Route::Plits, DType::F32, |_| {});
    let batch = m
        .prepare(
            &[example(&[1, 2], &[3, 4], frames(2, 5, DType::F32))],
            Padding::Right,
        )
        .unwrap();
    // Rows: 1 2 [a a] 3 4: row 3 (last audio) predicts 3, row 4 predicts 4.
    assert_eq!(
        batch.targets[0],
        vec![None, None, None, Some(3), Some(4), None]
    );
}

/// Gradients of the logits into the adapter parameters named `names`, checked against central
/// finite differences in f64. The model reads the parameters' Vars, so a perturbation is a
/// `Var::set` followed by a forward pass.
/// Sets every LAL gate to a non-zero value, so that gradients reach the gated projectors too.
fn open_gates(params: &Params) {
    for (name, var) in params.vars() {
        if name.ends_with(".gate") {
            let n = var.elem_count();
            let values: Vec<f64> = pseudo_random(n, 90).into_iter().map(|v| 0.3 + v).collect();
            var.set(
                &Tensor::from_vec(values, var.shape(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(var.dtype())
                    .unwrap(),
            )
            .unwrap();
        }
    }
}

fn check_adapter_gradients(route: Route, gate: bool, names: &[&str]) {
    let (m, params) = model(route, DType::F64, |a| {
        a.lal.gate = gate;
        // PAL's gates scaled (tanh(3 g)), LAL's not.
        a.lal.gate_scale = if route == Route::Pal { 3.0 } else { 1.0 };
    });
    open_gates(&params);
    let vars = params.vars();
    let items = vec![
        example(&[4], &[6, 7], frames(3, 30, DType::F64)),
        example(&[9, 2], &[10], frames(4, 31, DType::F64)),
    ];
    let logits = || {
        let mut batch = m.prepare(&items, Padding::Right).unwrap();
        m.forward(&mut batch).unwrap()
    };
    let out = logits();
    let weights = pal_nn::gradcheck::pseudo_random_like(&out).unwrap();
    let scalar = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();
    let grads = scalar(&out).backward().unwrap();
    let eps = 1e-6;
    for name in names {
        let var: &Var = &vars[*name];
        let analytic = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let analytic = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let original = var.as_tensor().copy().unwrap();
        let base = original.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut worst = 0f64;
        for idx in (0..base.len()).step_by((base.len() / 24).max(1)) {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                scalar(&logits()).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            worst = worst.max((analytic[idx] - numeric).abs() / numeric.abs().max(1.0));
        }
        var.set(&original).unwrap();
        assert!(worst < 1e-6, "{route:?} {name}: gradient error {worst}");
    }
}

#[test]
fn lal_gradients_reach_the_projectors() {
    check_adapter_gradients(
        Route::Lal,
        false,
        &[
            "enc.lal.layers.0.proj.weight",
            "enc.lal.layers.0.proj.bias",
            "enc.lal.layers.1.proj.weight",
        ],
    );
}

#[test]
fn pal_gradients_reach_summary_and_projectors() {
    check_adapter_gradients(
        Route::Pal,
        false,
        &[
            "enc.lal.layers.1.proj.weight",
            "enc.summary.queries",
            "enc.summary.out.fc2.weight",
        ],
    );
}

#[test]
fn gated_lal_gradients_reach_gates_and_projectors() {
    for route in [Route::Lal, Route::Pal] {
        check_adapter_gradients(
            route,
            true,
            &[
                "enc.lal.layers.0.gate",
                "enc.lal.layers.1.gate",
                "enc.lal.layers.0.proj.weight",
                "enc.lal.layers.1.proj.bias",
            ],
        );
    }
}

/// Gated LAL starts as the LLM itself: with its gates at 0 (as initialised), the text's logits
/// are those of the LLM without audio, for any clip; once a gate opens, the audio counts.
#[test]
fn untrained_gated_lal_is_the_text_only_llm() {
    let (m, params) = model(Route::Lal, DType::F32, |a| a.lal.gate = true);
    let text = [5u32, 17, 33, 2, 40];
    let logits = |m: &AudioLlm, audio: Tensor| {
        let mut batch = m
            .prepare(&[example(&text[..2], &text[2..], audio)], Padding::Right)
            .unwrap();
        m.forward(&mut batch).unwrap()
    };
    let ids = Tensor::new(&text, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let plain = m.llm.forward(&ids, None, &mut m.llm.new_cache()).unwrap();
    for (n, seed) in [(3, 1), (40, 2)] {
        let loud = (frames(n, seed, DType::F32) * 100.0).unwrap();
        let d = max_diff(&logits(&m, loud), &plain);
        assert!(
            d < 1e-4,
            "closed gates, {n} audio rows: logits differ by {d}"
        );
    }
    open_gates(&params);
    let d = max_diff(&logits(&m, frames(6, 3, DType::F32)), &plain);
    assert!(
        d > 1e-3,
        "open gates: the audio should change the logits ({d})"
    );
}

#[test]
fn llm_weights_get_no_gradient() {
    let (m, params) = model(Route::Pal, DType::F32, |_| {});
    let mut batch = m
        .prepare(
            &[example(&[1], &[2, 3], frames(4, 40, DType::F32))],
            Padding::Right,
        )
        .unwrap();
    let grads = m
        .forward(&mut batch)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in params.vars() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{name} has no gradient"
        );
    }
    let l0 = &m.llm.layers[0];
    for w in [
        &l0.q_proj.weight,
        &l0.k_proj.weight,
        &l0.gate_proj.weight,
        &m.llm.embed_tokens,
    ] {
        assert!(grads.get(w).is_none());
    }
}

#[test]
fn several_encoders_each_take_their_route() {
    // A "speech" encoder through PLITS and a "general audio" encoder through LAL, as in PAPER.md.
    let params = Params::new(9, DType::F32, &Device::Cpu);
    let speech = Attachment::new("speech", D_ENC, Route::Plits);
    let mut general = Attachment::new("general", 6, Route::Lal);
    general.lal.start = 1;
    let m = AudioLlm::new(tiny_llm(DType::F32), &[speech, general], &params).unwrap();
    let general_frames = |seed| {
        Tensor::from_vec(pseudo_random(4 * 6, seed), (4, 6), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let example = |g| Example {
        segments: vec![
            Segment::Audio,
            Segment::Text {
                ids: vec![5, 6, 7],
                trained: true,
            },
        ],
        clips: vec![vec![frames(3, 50, DType::F32), general_frames(g)]],
    };
    let mut batch = m.prepare(&[example(51)], Padding::Right).unwrap();
    // 3 PLITS tokens + 3 text tokens in the sequence; LAL keys only at layer 1.
    assert_eq!(batch.embeds.dims()[1], 6);
    assert!(batch.cache.layers[0].prefix.is_none());
    assert_eq!(
        batch.cache.layers[1].prefix.as_ref().unwrap().k.dims()[2],
        4
    );
    let before = m.llm.ffn_rows.load(Ordering::SeqCst);
    let a = m.forward(&mut batch).unwrap();
    assert_eq!(m.llm.ffn_rows.load(Ordering::SeqCst) - before, 6 * 2);
    // Both encoders matter.
    let mut other = m.prepare(&[example(52)], Padding::Right).unwrap();
    assert!(max_diff(&a, &m.forward(&mut other).unwrap()) > 1e-4);
    let names: Vec<String> = params.vars().into_keys().collect();
    assert!(
        names.iter().any(|n| n.starts_with("speech.connector"))
            && names.iter().any(|n| n.starts_with("general.lal"))
    );
}

#[test]
fn activation_checkpointing_gives_the_same_loss_and_gradients() {
    for (route, gate) in [
        (Route::Plits, false),
        (Route::Lal, false),
        (Route::Pal, false),
        (Route::Lal, true),
    ] {
        let (mut m, params) = model(route, DType::F32, |a| {
            a.lal.start = 1;
            a.lal.gate = gate;
        });
        open_gates(&params);
        let items = vec![
            example(&[4], &[6, 7, 8], frames(3, 60, DType::F32)),
            example(&[9, 2], &[10, 11], frames(5, 61, DType::F32)),
        ];
        let run = |m: &AudioLlm| {
            let mut batch = m.prepare(&items, Padding::Right).unwrap();
            let (loss, _) = m.loss(&mut batch).unwrap();
            let grads = loss.backward().unwrap();
            let named: Vec<(String, Tensor)> = params
                .vars()
                .into_iter()
                .map(|(n, v)| (n, grads.get(v.as_tensor()).unwrap().clone()))
                .collect();
            (loss.to_scalar::<f32>().unwrap(), named)
        };
        let (plain_loss, plain) = run(&m);
        m.llm.checkpoint_layers = true;
        let (ckpt_loss, ckpt) = run(&m);
        assert_eq!(plain_loss, ckpt_loss, "{route:?}");
        for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
            let d = max_diff(a, b);
            assert!(d <= 1e-5 * max_abs(a) + 1e-8, "{route:?} {name}: {d}");
        }
    }
}

#[test]
fn target_log_probs_agree_with_the_loss() {
    let (m, _) = model(Route::Lal, DType::F32, |_| {});
    let items = vec![
        example(&[4], &[6, 7, 8], frames(3, 70, DType::F32)),
        example(&[9], &[10], frames(5, 71, DType::F32)),
    ];
    for item in &items {
        let mut batch = m
            .prepare(std::slice::from_ref(item), Padding::Right)
            .unwrap();
        let (loss, n) = m.loss(&mut batch).unwrap();
        let mut batch = m
            .prepare(std::slice::from_ref(item), Padding::Right)
            .unwrap();
        let lp = m.target_log_probs(&mut batch).unwrap();
        let expected = -(loss.to_scalar::<f32>().unwrap() as f64) * n as f64;
        assert!(
            (lp[0] - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "{} vs {expected}",
            lp[0]
        );
    }
    // Batched scores equal the per-item ones.
    let mut batch = m.prepare(&items, Padding::Right).unwrap();
    let both = m.target_log_probs(&mut batch).unwrap();
    for (i, item) in items.iter().enumerate() {
        let mut one = m
            .prepare(std::slice::from_ref(item), Padding::Right)
            .unwrap();
        assert!((both[i] - m.target_log_probs(&mut one).unwrap()[0]).abs() < 1e-4);
    }
}

/// Frozen layers run as single graph nodes with a written-out backward (the default); the
/// gradients of every adapter parameter must equal those of recording every op, for each route,
/// with padding and uneven clip lengths, in f64.
#[test]
fn frozen_layer_nodes_give_the_recorded_gradients() {
    for (route, gate) in [
        (Route::Lal, false),
        (Route::Plits, false),
        (Route::Pal, false),
        (Route::Lal, true),
        (Route::Pal, true),
    ] {
        let gradients = |nodes: bool| {
            let (mut m, params) = model(route, DType::F64, |a| a.lal.gate = gate);
            open_gates(&params);
            m.llm.frozen_layer_nodes = nodes;
            let items = vec![
                example(&[4], &[6, 7], frames(3, 30, DType::F64)),
                example(&[9, 2], &[10], frames(5, 31, DType::F64)),
            ];
            let mut batch = m.prepare(&items, Padding::Right).unwrap();
            let (loss, _) = m.loss(&mut batch).unwrap();
            let grads = loss.backward().unwrap();
            params
                .vars()
                .into_iter()
                .map(|(name, var)| {
                    let g = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("{route:?}: no gradient for {name}"));
                    (name, g.flatten_all().unwrap().to_vec1::<f64>().unwrap())
                })
                .collect::<Vec<_>>()
        };
        let (nodes, recorded) = (gradients(true), gradients(false));
        assert_eq!(nodes.len(), recorded.len());
        for ((name, a), (_, b)) in nodes.iter().zip(&recorded) {
            // Floored: some gradients are exactly zero in theory (a key bias under softmax).
            let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst / scale < 1e-9,
                "{route:?} {name}: written-out backward differs by {worst} (scale {scale})"
            );
        }
    }
}

/// A clip's LAL keys and values computed alone and reused in a later batch give the logits the
/// batch computes itself (what a server's audio cache relies on), for uneven clips and both
/// paddings; they are computed once per clip.
#[test]
fn cached_clip_prefixes_give_the_batch_its_own_logits() {
    for (route, gate) in [(Route::Lal, false), (Route::Pal, false), (Route::Lal, true)] {
        for padding in [Padding::Left, Padding::Right] {
            let (m, params) = model(route, DType::F32, |a| a.lal.gate = gate);
            open_gates(&params);
            let items = vec![
                example(&[4, 5], &[6, 7, 8], frames(3, 30, DType::F32)),
                example(&[9], &[10, 11, 12, 13, 14], frames(7, 31, DType::F32)),
            ];
            let mut computed = m.prepare(&items, padding).unwrap().detach();
            let expected = m.forward(&mut computed).unwrap();
            let before = m.lal_prefix_computations.load(Ordering::Relaxed);
            let clips: Vec<_> = items
                .iter()
                .map(|e| m.clip_lal(e.first_clip()).unwrap())
                .collect();
            assert_eq!(
                m.lal_prefix_computations.load(Ordering::Relaxed) - before,
                2,
                "one computation per clip"
            );
            let cached: Vec<_> = clips.iter().map(Some).collect();
            let mut reused = m.prepare_cached(&items, padding, &cached).unwrap();
            assert_eq!(
                m.lal_prefix_computations.load(Ordering::Relaxed) - before,
                2,
                "a batch of cached clips computes no prefix"
            );
            let got = m.forward(&mut reused).unwrap();
            let valid = computed.valid.unsqueeze(2).unwrap();
            let d = max_diff(
                &got.broadcast_mul(&valid).unwrap(),
                &expected.broadcast_mul(&valid).unwrap(),
            );
            assert!(d < 1e-5, "{route:?} {padding:?}: {d}");
        }
    }
}

/// `prompt_positions` counts the positions a prompt really takes (what a server checks against
/// the RoPE table before batching): the cache's next position after the prompt.
#[test]
fn prompt_positions_are_the_positions_the_prompt_takes() {
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        let (m, _) = model(route, DType::F32, |a| {
            a.connector = ConnectorConfig::Mlp { stack: 2 }
        });
        let item = example(&[4, 5], &[6, 7, 8], frames(7, 40, DType::F32));
        let mut batch = m
            .prepare(std::slice::from_ref(&item), Padding::Left)
            .unwrap();
        m.forward(&mut batch).unwrap();
        assert_eq!(
            batch.cache.next_position[0] as usize,
            m.prompt_positions(&item).unwrap(),
            "{route:?}"
        );
    }
}

/// A bf16 backbone with f32 adapters (master copies) and an f32 loss: the adapter stays f32, its
/// gradients are f32, and loss and gradients agree with the all-f32 model to bf16's precision.
#[test]
fn a_bf16_backbone_trains_f32_adapters_like_f32() {
    let cases = [
        (Route::Plits, false),
        (Route::Lal, false),
        (Route::Pal, false),
        (Route::Lal, true),
    ];
    for (route, lora) in cases {
        let items = vec![
            example(&[4, 5], &[6, 7, 8], frames(3, 60, DType::F32)),
            example(&[9], &[10, 11, 12, 13, 14], frames(7, 61, DType::F32)),
        ];
        let run = |dtype: DType| {
            let params = Params::new(7, Params::master_dtype(dtype), &Device::Cpu);
            let mut a = Attachment::new("enc", D_ENC, route);
            a.summary = ConnectorConfig::Latent {
                queries: 4,
                layers: 1,
            };
            let mut m = AudioLlm::new(tiny_llm(dtype), &[a], &params).unwrap();
            if lora {
                let targets = ["q_proj".to_string(), "v_proj".to_string()];
                m.llm.attach_lora(&params, 2, 4.0, &targets, false).unwrap();
            }
            let mut batch = m.prepare(&items, Padding::Right).unwrap();
            let (loss, _) = m.loss(&mut batch).unwrap();
            assert_eq!(loss.dtype(), DType::F32, "{route:?} {dtype:?} loss");
            let grads = loss.backward().unwrap();
            let named: Vec<(String, Tensor)> = params
                .vars()
                .into_iter()
                .map(|(name, var)| {
                    assert_eq!(var.dtype(), DType::F32, "{route:?} {name}");
                    let g = grads.get(var.as_tensor()).expect("every adapter parameter");
                    assert_eq!(g.dtype(), DType::F32, "{route:?} {name} gradient");
                    (name, g.clone())
                })
                .collect();
            (loss.to_scalar::<f32>().unwrap(), named)
        };
        let (loss32, grads32) = run(DType::F32);
        let (loss16, grads16) = run(DType::BF16);
        assert!(
            (loss16 - loss32).abs() < 0.02 * loss32.abs(),
            "{route:?} lora {lora}: loss {loss16} (bf16) vs {loss32}"
        );
        for ((name, g32), (_, g16)) in grads32.iter().zip(&grads16) {
            let scale = max_abs(g32);
            let d = max_diff(g32, g16);
            assert!(
                d <= 0.05 * scale + 1e-6,
                "{route:?} lora {lora} {name}: {d} of {scale}"
            );
        }
    }
}
