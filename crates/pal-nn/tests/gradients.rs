//! Finite-difference gradient tests (f64, CPU) for every op used in training.

use candle_core::{DType, Device, Result, Tensor, Var};
use pal_nn::gradcheck::{check_gradients, pseudo_random};
use pal_nn::ops::{
    constant_input_linear, cross_entropy, frozen_linear, gelu_erf, layer_norm, rms_norm,
    rms_norm_input_grad, rope, scaled_masked_softmax, softmax_last_dim,
};
use pal_nn::{
    attention, attention_backward, attention_split, attention_split_backward, causal_mask, Linear,
};

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(pseudo_random(n, seed), shape, &Device::Cpu).unwrap()
}

/// Largest absolute elementwise difference of two tensors of one shape, as f64.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn assert_grads<F: Fn(&[Tensor]) -> Result<Tensor>>(name: &str, f: F, inputs: &[Tensor]) {
    let report = check_gradients(f, inputs, EPS, 64).unwrap();
    assert!(report.checked > 0);
    assert!(
        report.max_error < TOL,
        "{name}: gradient error {} >= {TOL}",
        report.max_error
    );
}

#[test]
fn rms_norm_gradients_match_finite_differences() {
    let x = rand(&[2, 3, 8], 1);
    let w = (rand(&[8], 2) + 1.0).unwrap();
    assert_grads("rms_norm", |xs| rms_norm(&xs[0], &xs[1], 1e-5), &[x, w]);
}

#[test]
fn rms_norm_fused_matches_composite_formula() {
    let x = rand(&[4, 16], 3);
    let w = rand(&[16], 4);
    let fused = rms_norm(&x, &w, 1e-6).unwrap();
    let r = (x.sqr().unwrap().mean_keepdim(1).unwrap() + 1e-6)
        .unwrap()
        .sqrt()
        .unwrap();
    let reference = x.broadcast_div(&r).unwrap().broadcast_mul(&w).unwrap();
    let diff = (fused - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let x = rand(&[3, 6], 5);
    let w = (rand(&[6], 6) + 1.0).unwrap();
    let b = rand(&[6], 7);
    assert_grads(
        "layer_norm",
        |xs| layer_norm(&xs[0], &xs[1], &xs[2], 1e-5),
        &[x, w, b],
    );
}

#[test]
fn gelu_erf_gradients_match_finite_differences() {
    let x = (rand(&[3, 9], 9) * 4.0).unwrap();
    assert_grads("gelu_erf", |xs| gelu_erf(&xs[0]), &[x]);
}

#[test]
fn softmax_gradients_match_finite_differences() {
    let x = (rand(&[2, 3, 7], 8) * 3.0).unwrap();
    assert_grads("softmax", |xs| softmax_last_dim(&xs[0]), &[x]);
}

#[test]
fn softmax_of_fully_masked_row_is_finite() {
    let x = Tensor::new(
        &[[f64::NEG_INFINITY, f64::NEG_INFINITY], [0.0, 0.0]],
        &Device::Cpu,
    )
    .unwrap();
    let y = softmax_last_dim(&x).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(y, vec![vec![0.0, 0.0], vec![0.5, 0.5]]);
}

#[test]
fn rope_gradients_match_finite_differences() {
    let x = rand(&[2, 2, 3, 8], 9);
    let angles = rand(&[3, 4], 10);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    assert_grads(
        "rope",
        |xs| rope(&xs[0], &cos, &sin),
        std::slice::from_ref(&x),
    );
    // Per-batch positions (padded batches).
    let angles = rand(&[2, 3, 4], 11);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    assert_grads("rope per batch", |xs| rope(&xs[0], &cos, &sin), &[x]);
}

#[test]
fn rope_matches_candle_reference() {
    let x = rand(&[1, 2, 5, 8], 12).to_dtype(DType::F32).unwrap();
    let angles = rand(&[5, 4], 13).to_dtype(DType::F32).unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let ours = rope(&x, &cos, &sin).unwrap();
    let reference = candle_nn::rotary_emb::rope_slow(&x, &cos, &sin).unwrap();
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
}

#[test]
fn frozen_linear_input_gradient_matches_finite_differences() {
    let w = rand(&[5, 4], 14);
    let x = rand(&[2, 3, 4], 15);
    assert_grads("frozen_linear", |xs| frozen_linear(&xs[0], &w), &[x]);
}

#[test]
fn stacked_frozen_linear_applies_each_group_and_has_input_gradients() {
    let w = rand(&[3, 5, 4], 30);
    let x = rand(&[3, 2, 4], 31);
    let y = frozen_linear(&x, &w).unwrap();
    for g in 0..3 {
        let expected = x
            .get(g)
            .unwrap()
            .matmul(&w.get(g).unwrap().t().unwrap())
            .unwrap();
        let diff = (y.get(g).unwrap() - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    }
    assert_grads(
        "stacked frozen_linear",
        |xs| frozen_linear(&xs[0], &w),
        &[x],
    );
}

#[test]
fn trainable_linear_gradients_match_finite_differences() {
    let x = rand(&[3, 4], 16);
    let w = rand(&[5, 4], 17);
    let b = rand(&[5], 18);
    assert_grads(
        "linear",
        |xs| Linear::new(xs[1].clone(), Some(xs[2].clone())).forward(&xs[0]),
        &[x, w, b],
    );
}

#[test]
fn attention_gradients_match_finite_differences() {
    // GQA (4 query heads over 2 kv heads), a 2-key prefix visible to all, causal text.
    let q = rand(&[2, 4, 3, 4], 19);
    let k = rand(&[2, 2, 5, 4], 20);
    let v = rand(&[2, 2, 5, 4], 21);
    let valid = Tensor::new(
        &[[1f64, 1., 1., 1., 1.], [1., 1., 1., 1., 0.]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = causal_mask(3, 5, Some(&valid), DType::F64, &Device::Cpu).unwrap();
    assert_grads(
        "attention",
        |xs| attention(&xs[0], &xs[1], &xs[2], Some(&mask), 0.5),
        &[q, k, v],
    );
}

#[test]
fn split_attention_gradients_match_finite_differences() {
    // A 2-row prefix with its own softmax (LAL's gated audio keys), the second item's last
    // prefix row padded.
    let q = rand(&[2, 4, 3, 4], 22);
    let k = rand(&[2, 2, 6, 4], 23);
    let v = rand(&[2, 2, 6, 4], 24);
    let valid = Tensor::new(
        &[[1f64, 1., 1., 1., 1., 1.], [1., 0., 1., 1., 1., 1.]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = causal_mask(3, 6, Some(&valid), DType::F64, &Device::Cpu).unwrap();
    assert_grads(
        "split attention",
        |xs| Ok(attention_split(&xs[0], &xs[1], &xs[2], Some(&mask), 0.5, 2)?.0),
        &[q, k, v],
    );
}

#[test]
fn split_attention_keeps_the_text_weights_whatever_the_prefix() {
    // The text keys' weights of each query sum to 1 and do not change when the prefix's scores
    // grow by any amount: the prefix cannot crowd the text out.
    let q = rand(&[1, 2, 3, 4], 25);
    let k = rand(&[1, 2, 7, 4], 26);
    let v = rand(&[1, 2, 7, 4], 27);
    let mask = causal_mask(3, 7, None, DType::F64, &Device::Cpu).unwrap();
    let (_, probs) = attention_split(&q, &k, &v, Some(&mask), 0.5, 4).unwrap();
    let loud = Tensor::cat(
        &[
            &(k.narrow(2, 0, 4).unwrap() * 50.0).unwrap(),
            &k.narrow(2, 4, 3).unwrap(),
        ],
        2,
    )
    .unwrap();
    let (_, loud_probs) = attention_split(&q, &loud, &v, Some(&mask), 0.5, 4).unwrap();
    let text = |p: &Tensor| p.narrow(3, 4, 3).unwrap();
    assert!(max_abs_diff(&text(&probs), &text(&loud_probs)) < 1e-12);
    for part in [probs.narrow(3, 0, 4).unwrap(), text(&probs)] {
        let sums = part
            .sum(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12), "{sums:?}");
    }
}

/// Total number of gradient elements held by a gradient store.
fn held_elements(grads: &candle_core::backprop::GradStore) -> usize {
    grads
        .get_ids()
        .filter_map(|id| grads.get_id(*id))
        .map(|g| g.elem_count())
        .sum()
}

#[test]
fn frozen_weight_gets_no_gradient_and_no_gradient_memory() {
    let x = Var::from_tensor(&rand(&[4, 64], 22)).unwrap();
    let w = rand(&[256, 64], 23);
    let weight_elems = 256 * 64;

    // candle's matmul computes and stores a weight-sized gradient even for a constant weight.
    let y = x.matmul(&w.t().unwrap()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(
        held_elements(&grads) >= weight_elems,
        "candle trap no longer reproduces"
    );

    // Ours: the input gradient only, identical to candle's.
    let y_frozen = Linear::new(w.clone(), None).forward(&x).unwrap();
    let frozen_grads = y_frozen.sum_all().unwrap().backward().unwrap();
    assert!(
        frozen_grads.get(&w).is_none(),
        "frozen weight received a gradient"
    );
    let gx = frozen_grads.get(&x).unwrap();
    let gx_ref = grads.get(&x).unwrap();
    let diff = (gx - gx_ref).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    // Nothing weight-sized anywhere in the store: x's gradient and the output's, nothing more.
    let held = held_elements(&frozen_grads);
    assert!(held < weight_elems, "gradient store holds {held} elements");
    assert!(
        held <= 4 * 64 + 4 * 256 + 1,
        "gradient store holds {held} elements"
    );
}

#[test]
fn trainable_linear_gets_weight_gradient() {
    let x = rand(&[4, 8], 24);
    let w = Var::from_tensor(&rand(&[3, 8], 25)).unwrap();
    let y = Linear::new(w.as_tensor().clone(), None)
        .forward(&x)
        .unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let gw = grads.get(w.as_tensor()).expect("weight gradient");
    assert_eq!(gw.dims(), &[3, 8]);
}

#[test]
fn cross_entropy_matches_definition_and_finite_differences() {
    let logits = (rand(&[3, 5], 40) * 4.0).unwrap();
    let targets = Tensor::new(&[1u32, 4, 0], &Device::Cpu).unwrap();
    let ce = cross_entropy(&logits, &targets)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let rows = logits.to_vec2::<f64>().unwrap();
    let expected: f64 = rows
        .iter()
        .zip([1usize, 4, 0])
        .map(|(r, t)| r.iter().map(|v| v.exp()).sum::<f64>().ln() - r[t])
        .sum::<f64>()
        / 3.0;
    assert!((ce - expected).abs() < 1e-12);
    assert_grads(
        "cross_entropy",
        |xs| cross_entropy(&xs[0], &targets),
        &[logits],
    );
}

#[test]
fn constant_input_linear_gives_weight_gradient_only() {
    let x = rand(&[4, 3], 41);
    let w = rand(&[5, 3], 42);
    assert_grads(
        "constant_input_linear",
        |xs| constant_input_linear(&x, &xs[0]),
        std::slice::from_ref(&w),
    );
    let var = Var::from_tensor(&w).unwrap();
    let y = constant_input_linear(&x, var.as_tensor()).unwrap();
    let reference = x.matmul(&w.t().unwrap()).unwrap();
    assert!(
        (&y - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            < 1e-12
    );
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    // Only the weight's gradient: no input-sized gradient is computed or kept.
    assert_eq!(held_elements(&grads), 5 * 3);
}

#[test]
fn lora_linear_gradients_match_finite_differences_and_start_as_the_base() {
    let w = rand(&[5, 4], 50);
    let x = rand(&[3, 4], 51);
    let a = rand(&[2, 4], 52);
    let b = rand(&[5, 2], 53);
    let with_lora = |xs: &[Tensor]| {
        let mut l = Linear::new(w.clone(), None);
        l.lora = Some(pal_nn::Lora {
            a: xs[1].clone(),
            b: xs[2].clone(),
            scale: 2.0,
        });
        l.forward(&xs[0])
    };
    assert_grads("lora", with_lora, &[x.clone(), a.clone(), b]);
    // B = 0: exactly the base layer.
    let zero_b = Tensor::zeros((5, 2), DType::F64, &Device::Cpu).unwrap();
    let base = Linear::new(w.clone(), None).forward(&x).unwrap();
    let y = with_lora(&[x, a, zero_b]).unwrap();
    assert_eq!(
        (y - base)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        0.0
    );
}

#[test]
fn closed_form_attention_backward_equals_autograd() {
    // What the frozen-layer node uses instead of recording attention's ops: plain attention, and
    // attention whose first two keys have a softmax of their own (gated LAL).
    let (q, k, v) = (
        rand(&[2, 4, 3, 4], 40),
        rand(&[2, 2, 5, 4], 41),
        rand(&[2, 2, 5, 4], 42),
    );
    let valid = Tensor::new(
        &[[1f64, 1., 1., 1., 1.], [0., 1., 1., 1., 1.]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = causal_mask(3, 5, Some(&valid), DType::F64, &Device::Cpu).unwrap();
    for own_softmax in [0, 2] {
        let (qv, kv, vv) = (
            Var::from_tensor(&q).unwrap(),
            Var::from_tensor(&k).unwrap(),
            Var::from_tensor(&v).unwrap(),
        );
        let (out, _) = attention_split(
            qv.as_tensor(),
            kv.as_tensor(),
            vv.as_tensor(),
            Some(&mask),
            0.5,
            own_softmax,
        )
        .unwrap();
        let d_out = rand(out.dims(), 43);
        let grads = (&out * &d_out)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (_, probs) = attention_split(&q, &k, &v, Some(&mask), 0.5, own_softmax).unwrap();
        let (dq, dk, dv) = match own_softmax {
            0 => attention_backward(&q, &k, &v, &probs, &d_out, 0.5).unwrap(),
            p => attention_split_backward(&q, &k, &v, &probs, &d_out, 0.5, p).unwrap(),
        };
        for (name, closed, var) in [("q", dq, &qv), ("k", dk, &kv), ("v", dv, &vv)] {
            let auto = grads.get(var.as_tensor()).unwrap();
            let diff = max_abs_diff(&closed, auto);
            assert!(
                diff < 1e-12,
                "d{name} (own softmax {own_softmax}): closed form differs from autograd by {diff}"
            );
        }
    }
}

#[test]
fn rms_norm_input_gradient_equals_autograd() {
    let (x, w, g) = (rand(&[3, 5, 8], 44), rand(&[8], 45), rand(&[3, 5, 8], 46));
    let xv = Var::from_tensor(&x).unwrap();
    let y = rms_norm(xv.as_tensor(), &w, 1e-5).unwrap();
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let closed = rms_norm_input_grad(&x, &w, &g, 1e-5).unwrap();
    let diff = max_abs_diff(&closed, grads.get(xv.as_tensor()).unwrap());
    assert!(diff < 1e-12, "rms_norm input gradient differs by {diff}");
}

/// The f32 kernels on tensors large enough to be split over threads, against candle's own ops:
/// softmax (with scale and a per-batch mask, fast `exp`), RMSNorm and RoPE.
#[test]
fn f32_row_kernels_match_candle_on_large_inputs() {
    let dev = Device::Cpu;
    let f32s = |shape: &[usize], seed: u64| {
        (rand(shape, seed) * 8.0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    // Scores (b=2, heads=3, rows=40, keys=300); mask hides the last 7 keys of batch item 1.
    let scores = f32s(&[2, 3, 40, 300], 50);
    let valid: Vec<f32> = (0..600)
        .map(|i| if i >= 300 && i % 300 >= 293 { 0.0 } else { 1.0 })
        .collect();
    let valid = Tensor::from_vec(valid, (2, 300), &dev).unwrap();
    let mask = causal_mask(40, 300, Some(&valid), DType::F32, &dev).unwrap();
    let ours = scaled_masked_softmax(&scores, Some(&mask.squeeze(1).unwrap()), 0.125).unwrap();
    let reference =
        candle_nn::ops::softmax_last_dim(&(scores * 0.125).unwrap().broadcast_add(&mask).unwrap())
            .unwrap();
    let d = max_abs_diff(&ours, &reference);
    assert!(d < 1e-6, "masked softmax differs from candle's by {d}");
    let hidden = ours.get(1).unwrap().narrow(2, 293, 7).unwrap();
    assert_eq!(
        hidden
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // RMSNorm over (600, 576) and RoPE over (2, 9, 300, 64).
    let (x, w) = (f32s(&[600, 576], 51), f32s(&[576], 52));
    let d = max_abs_diff(
        &rms_norm(&x, &w, 1e-5).unwrap(),
        &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
    );
    assert!(d < 1e-4, "rms_norm differs from candle's by {d}");
    let (x, cos, sin) = (
        f32s(&[2, 9, 300, 64], 53),
        f32s(&[300, 32], 54),
        f32s(&[300, 32], 55),
    );
    let d = max_abs_diff(
        &rope(&x, &cos, &sin).unwrap(),
        &candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap(),
    );
    assert!(d < 1e-3, "rope differs from candle's by {d}");
}

#[test]
fn batched_matmul_equals_candle_matmul_for_plain_and_transposed_operands() {
    use pal_nn::ops::batched_matmul;
    for dtype in [DType::F32, DType::F64] {
        let a = rand(&[2, 3, 5, 4], 60).to_dtype(dtype).unwrap();
        let b = rand(&[2, 3, 4, 6], 61).to_dtype(dtype).unwrap();
        let bt = rand(&[2, 3, 6, 4], 62).to_dtype(dtype).unwrap();
        let at = rand(&[2, 3, 4, 5], 63).to_dtype(dtype).unwrap();
        let cases = [
            (a.clone(), b.clone()),
            (a.clone(), bt.t().unwrap()),
            (at.t().unwrap(), b.clone()),
            (a.reshape((6, 5, 4)).unwrap(), b.reshape((6, 4, 6)).unwrap()),
            // Attention-shaped probabilities times values (a decoding step's 5 query rows over
            // 170 keys, 70 columns: whole and partial 32-column parts, three rows and two).
            (
                rand(&[2, 3, 5, 170], 66).to_dtype(dtype).unwrap(),
                rand(&[2, 3, 170, 70], 67).to_dtype(dtype).unwrap(),
            ),
            // Attention-shaped scores: 5 query rows against 170 keys of 70 values, the keys a
            // transposed view (dot products).
            (
                rand(&[2, 3, 5, 70], 68).to_dtype(dtype).unwrap(),
                rand(&[2, 3, 170, 70], 69)
                    .to_dtype(dtype)
                    .unwrap()
                    .t()
                    .unwrap(),
            ),
            // A batch of 40 items: the pool's threads split it.
            (
                rand(&[40, 7, 3], 64).to_dtype(dtype).unwrap(),
                rand(&[40, 3, 9], 65).to_dtype(dtype).unwrap(),
            ),
        ];
        for (x, y) in cases {
            let ours = batched_matmul(&x, &y).unwrap();
            let reference = x.matmul(&y).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = max_abs_diff(&ours, &reference);
            assert!(diff < 1e-5, "{dtype:?} {:?}: differs by {diff}", x.dims());
        }
    }
}

#[test]
fn linear_cross_entropy_equals_logits_then_cross_entropy() {
    use pal_nn::ops::linear_cross_entropy;
    let (hidden, weight) = (rand(&[5, 8], 70), rand(&[11, 8], 71));
    let targets = Tensor::new(&[3u32, 0, 10, 7, 3], &Device::Cpu).unwrap();
    let h = Var::from_tensor(&hidden).unwrap();
    let fused = linear_cross_entropy(h.as_tensor(), &weight, &targets).unwrap();
    let fused_grad = fused
        .backward()
        .unwrap()
        .get(h.as_tensor())
        .unwrap()
        .clone();
    let h2 = Var::from_tensor(&hidden).unwrap();
    let logits = frozen_linear(h2.as_tensor(), &weight).unwrap();
    let plain = cross_entropy(&logits, &targets).unwrap();
    let plain_grad = plain
        .backward()
        .unwrap()
        .get(h2.as_tensor())
        .unwrap()
        .clone();
    let value_diff = (fused.to_scalar::<f64>().unwrap() - plain.to_scalar::<f64>().unwrap()).abs();
    assert!(value_diff < 1e-12, "loss differs by {value_diff}");
    let grad_diff = max_abs_diff(&fused_grad, &plain_grad);
    assert!(grad_diff < 1e-12, "hidden gradient differs by {grad_diff}");
    assert_grads(
        "linear_cross_entropy",
        |xs| linear_cross_entropy(&xs[0], &weight, &targets),
        &[hidden],
    );
}

#[test]
fn kv_conversion_matches_transpose_rotate_stack_and_inverts() {
    use pal_nn::ops::{kv_heads_to_rows, kv_rows_to_heads, KvShape};
    let shape = KvShape {
        batch: 2,
        rows: 5,
        heads: 3,
        head_dim: 4,
    };
    let kv = rand(&[10, 24], 80);
    let (cos, sin) = (rand(&[2, 5, 2], 81), rand(&[2, 5, 2], 82));
    let heads = kv_rows_to_heads(&kv, shape, Some((&cos, &sin))).unwrap();
    let split = |part: usize| {
        kv.narrow(1, part * 12, 12)
            .unwrap()
            .reshape((2, 5, 3, 4))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let k = rope(&split(0), &cos, &sin).unwrap();
    let reference = Tensor::stack(&[&k, &split(1)], 0).unwrap();
    assert!(max_abs_diff(&heads, &reference) < 1e-12);
    // With a pure rotation (cos^2 + sin^2 = 1) the way back restores the rows.
    let angle = rand(&[2, 5, 2], 83);
    let (cos, sin) = (angle.cos().unwrap(), angle.sin().unwrap());
    let there = kv_rows_to_heads(&kv, shape, Some((&cos, &sin))).unwrap();
    let back = kv_heads_to_rows(&there, shape, Some((&cos, &sin))).unwrap();
    assert!(max_abs_diff(&back, &kv) < 1e-12);
    let plain =
        kv_heads_to_rows(&kv_rows_to_heads(&kv, shape, None).unwrap(), shape, None).unwrap();
    assert!(max_abs_diff(&plain, &kv) == 0.0);
}

#[test]
fn column_split_matmul_equals_candle_matmul() {
    use pal_nn::ops::matmul;
    for dtype in [DType::F32, DType::F64] {
        let a = rand(&[37, 19], 90).to_dtype(dtype).unwrap();
        let b = rand(&[19, 53], 91).to_dtype(dtype).unwrap();
        let bt = rand(&[53, 19], 92).to_dtype(dtype).unwrap();
        let at = rand(&[19, 37], 93).to_dtype(dtype).unwrap();
        // Narrow matrices (fewer columns than one part), wide ones, transposed views.
        let narrow = rand(&[19, 3], 94).to_dtype(dtype).unwrap();
        for (x, y) in [
            (a.clone(), b.clone()),
            (a.clone(), bt.t().unwrap()),
            (at.t().unwrap(), b.clone()),
            (a.clone(), narrow),
        ] {
            let diff = max_abs_diff(&matmul(&x, &y).unwrap(), &x.matmul(&y).unwrap());
            assert!(
                diff < 1e-5,
                "{dtype:?} {:?} x {:?}: differs by {diff}",
                x.dims(),
                y.dims()
            );
        }
    }
}

/// Few-row products against a transposed weight (decoding: `x W^T` for one row per sequence)
/// take their own kernel; it agrees with candle's matmul for 1 to 16 rows, inner sizes that are
/// and are not multiples of the vector width, and column counts below and above one part, with
/// the frozen linear layer going through it too.
#[test]
fn few_row_products_equal_candle_matmul() {
    use pal_nn::ops::{frozen_linear, matmul};
    for (m, k, n) in [
        (1, 576, 1536),
        (3, 37, 5),
        (8, 576, 193),
        (16, 64, 640),
        (17, 40, 70),
    ] {
        let x = rand(&[m, k], 200 + m as u64).to_dtype(DType::F32).unwrap();
        let w = rand(&[n, k], 300 + n as u64).to_dtype(DType::F32).unwrap();
        let expected = x.matmul(&w.t().unwrap()).unwrap();
        let scale = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        for got in [
            matmul(&x, &w.t().unwrap()).unwrap(),
            frozen_linear(&x, &w).unwrap(),
        ] {
            let diff = max_abs_diff(&got, &expected);
            assert!(
                diff < 1e-5 * scale.max(1.0),
                "({m}, {k}, {n}): differs by {diff}"
            );
        }
    }
}

#[test]
fn cross_entropy_refuses_targets_outside_the_vocabulary_or_of_the_wrong_count() {
    use pal_nn::ops::linear_cross_entropy;
    let (hidden, weight) = (rand(&[2, 8], 100), rand(&[11, 8], 101));
    let logits = frozen_linear(&hidden, &weight).unwrap();
    let too_big = Tensor::new(&[3u32, 11], &Device::Cpu).unwrap();
    let too_few = Tensor::new(&[3u32], &Device::Cpu).unwrap();
    for err in [
        cross_entropy(&logits, &too_big).unwrap_err(),
        linear_cross_entropy(&hidden, &weight, &too_big).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            msg.contains("target 11 outside the vocabulary of 11"),
            "{msg}"
        );
    }
    for err in [
        cross_entropy(&logits, &too_few).unwrap_err(),
        linear_cross_entropy(&hidden, &weight, &too_few).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("1 targets for 2 rows"), "{msg}");
    }
}
