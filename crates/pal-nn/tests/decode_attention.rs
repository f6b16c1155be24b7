//! Decoding's attention over every sequence's own cache in one pass gives what attending each
//! sequence alone through `attention_split` gives, bit for bit, on caches of different lengths,
//! with and without a LAL prefix under its own softmax, read where they lie in a cache's
//! buffers (views with room to grow).

use candle_core::{DType, Device, Tensor};
use pal_nn::gradcheck::pseudo_random;
use pal_nn::{attention_split, decode_attention, SequenceKeys};

/// `(1, kv_heads, rows, head_dim)` keys or values as a view of the first `rows` rows of a
/// buffer with room for more, as a KV cache holds them.
/// The largest absolute difference between two f32 tensors of one shape.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn cache_view(kv_heads: usize, rows: usize, head_dim: usize, seed: u64) -> Tensor {
    let room = rows + 37;
    let data: Vec<f32> = pseudo_random(kv_heads * room * head_dim, seed)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Tensor::from_vec(data, (1, kv_heads, room, head_dim), &Device::Cpu)
        .unwrap()
        .narrow(2, 0, rows)
        .unwrap()
}

#[test]
fn one_pass_over_ragged_caches_matches_each_sequence_alone() {
    let (q_heads, kv_heads, head_dim) = (9, 3, 64);
    // Per sequence: prefix rows (a clip's LAL keys), its own rows, and whether the prefix has a
    // softmax of its own (gated LAL).
    let sequences = [
        (0, 60, false),
        (550, 63, true),
        (0, 1, false),
        (200, 50, false),
        (1500, 500, true),
    ];
    let b = sequences.len();
    let q: Vec<f32> = pseudo_random(b * q_heads * head_dim, 1)
        .into_iter()
        .map(|x| 3.0 * x as f32)
        .collect();
    let q = Tensor::from_vec(q, (b, q_heads, 1, head_dim), &Device::Cpu).unwrap();
    let view = |rows: usize, seed: u64| cache_view(kv_heads, rows, head_dim, seed);
    let parts: Vec<_> = sequences
        .iter()
        .enumerate()
        .map(|(i, &(prefix, own, _))| {
            let seed = 10 + 4 * i as u64;
            let prefix = (prefix > 0).then(|| (view(prefix, seed), view(prefix, seed + 1)));
            (prefix, view(own, seed + 2), view(own, seed + 3))
        })
        .collect();
    let keys: Vec<SequenceKeys> = parts
        .iter()
        .zip(&sequences)
        .map(|((prefix, k, v), &(_, _, gated))| SequenceKeys {
            prefix: prefix.as_ref().map(|(k, v)| (k, v)),
            prefix_own_softmax: gated,
            packed: None,
            k,
            v,
        })
        .collect();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let together = decode_attention(&q, &keys, scale).unwrap();
    assert_eq!(together.dims(), &[b, q_heads, 1, head_dim]);
    for (i, (prefix, k, v)) in parts.iter().enumerate() {
        let (prefix_rows, own_rows, gated) = sequences[i];
        let (k, v) = match prefix {
            Some((pk, pv)) => (
                Tensor::cat(&[pk, k], 2).unwrap(),
                Tensor::cat(&[pv, v], 2).unwrap(),
            ),
            None => (k.clone(), v.clone()),
        };
        let own_softmax = if gated { prefix_rows } else { 0 };
        let q = q.narrow(0, i, 1).unwrap();
        let alone = attention_split(&q, &k, &v, None, scale, own_softmax)
            .unwrap()
            .0;
        let diff = max_abs_diff(&together.narrow(0, i, 1).unwrap(), &alone);
        // Up to 1,365 keys the one-sequence path takes the same small-product loops: the same
        // numbers. Past that it takes gemm, whose sums are ordered differently.
        let rows = prefix_rows + own_rows;
        let bound = if rows * 3 * head_dim <= 1 << 18 {
            0.0
        } else {
            1e-5
        };
        assert!(
            diff <= bound,
            "sequence {i} ({prefix_rows} prefix keys, gated {gated}, {own_rows} own): {diff}"
        );
    }
}

#[test]
fn other_dtypes_attend_sequence_by_sequence() {
    let q = Tensor::ones((2, 4, 1, 8), DType::F64, &Device::Cpu).unwrap();
    let k = Tensor::ones((1, 2, 5, 8), DType::F64, &Device::Cpu).unwrap();
    let v = (Tensor::arange(0f64, 5.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 5, 1))
        .unwrap()
        .broadcast_as((1, 2, 5, 8))
        .unwrap())
    .contiguous()
    .unwrap();
    // The first two keys as a prefix: one softmax over all seven keys, then the prefix apart.
    let (pk, pv) = (k.narrow(2, 0, 2).unwrap(), v.narrow(2, 0, 2).unwrap());
    let (rk, rv) = (k.narrow(2, 2, 3).unwrap(), v.narrow(2, 2, 3).unwrap());
    let joint = SequenceKeys {
        prefix: Some((&pk, &pv)),
        prefix_own_softmax: false,
        packed: None,
        k: &rk,
        v: &rv,
    };
    let gated = SequenceKeys {
        prefix_own_softmax: true,
        ..joint
    };
    let out = decode_attention(&q, &[joint, gated], 0.5).unwrap();
    let out = out.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    // Equal scores: the mean value 2 over one softmax; with the first two keys apart,
    // (0 + 1) / 2 + (2 + 3 + 4) / 3 = 3.5.
    assert!(out[..32].iter().all(|&x| (x - 2.0).abs() < 1e-12));
    assert!(out[32..].iter().all(|&x| (x - 3.5).abs() < 1e-12));
}

/// Prefill over a prefix read where it lies (`attention_apart`) gives what attending the
/// joined keys gives, with a causal mask over the own rows, with and without the prefix's own
/// softmax.
#[test]
fn a_prefix_read_apart_attends_as_the_joined_keys_do() {
    let (q_heads, kv_heads, head_dim, rows, prefix) = (6, 2, 16, 7, 300);
    let q: Vec<f32> = pseudo_random(q_heads * rows * head_dim, 3)
        .into_iter()
        .map(|x| 2.0 * x as f32)
        .collect();
    let q = Tensor::from_vec(q, (1, q_heads, rows, head_dim), &Device::Cpu).unwrap();
    let (pk, pv) = (
        cache_view(kv_heads, prefix, head_dim, 5),
        cache_view(kv_heads, prefix, head_dim, 6),
    );
    let (k, v) = (
        cache_view(kv_heads, rows, head_dim, 7),
        cache_view(kv_heads, rows, head_dim, 8),
    );
    let mask = pal_nn::causal_mask(rows, prefix + rows, None, DType::F32, &Device::Cpu).unwrap();
    let joined_k = Tensor::cat(&[&pk, &k], 2).unwrap();
    let joined_v = Tensor::cat(&[&pv, &v], 2).unwrap();
    for own_softmax in [0, prefix] {
        let (apart, probs) =
            pal_nn::attention_apart(&q, (&pk, &pv), &k, &v, Some(&mask), 0.25, own_softmax)
                .unwrap();
        let (joined, joined_probs) =
            attention_split(&q, &joined_k, &joined_v, Some(&mask), 0.25, own_softmax).unwrap();
        assert!(
            max_abs_diff(&apart, &joined) < 1e-6,
            "own softmax {own_softmax}"
        );
        assert!(max_abs_diff(&probs, &joined_probs) < 1e-6);
    }
}

/// A sequence whose prefix is packed in bf16 attends over the packed keys (beside one that is
/// not): within bf16's rounding of f32 attention over the same keys, gated or not.
#[test]
fn packed_prefixes_are_attended_in_bf16() {
    use pal_nn::ops::bf16::prefix::{available, PackedPrefix, PackedRun};
    if !available() {
        eprintln!("no bf16 kernel on this CPU: nothing to check");
        return;
    }
    let (q_heads, kv_heads, head_dim, prefix_rows, own_rows) = (9, 3, 64, 1300, 40);
    let q: Vec<f32> = pseudo_random(2 * q_heads * head_dim, 7)
        .into_iter()
        .map(|x| 3.0 * x as f32)
        .collect();
    let q = Tensor::from_vec(q, (2, q_heads, 1, head_dim), &Device::Cpu).unwrap();
    let (pk, pv) = (
        cache_view(kv_heads, prefix_rows, head_dim, 8)
            .contiguous()
            .unwrap(),
        cache_view(kv_heads, prefix_rows, head_dim, 9)
            .contiguous()
            .unwrap(),
    );
    let (k, v) = (
        cache_view(kv_heads, own_rows, head_dim, 10),
        cache_view(kv_heads, own_rows, head_dim, 11),
    );
    let data = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let run = PackedRun::new(&data(&pk), &data(&pv), kv_heads, prefix_rows, head_dim);
    let packed = PackedPrefix {
        runs: vec![std::sync::Arc::new(run)],
    };
    for gated in [false, true] {
        let plain = SequenceKeys {
            prefix: Some((&pk, &pv)),
            prefix_own_softmax: gated,
            packed: None,
            k: &k,
            v: &v,
        };
        let bf16 = SequenceKeys {
            packed: Some(&packed),
            ..plain
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        let got = decode_attention(&q, &[bf16, plain], scale).unwrap();
        let want = decode_attention(&q, &[plain, plain], scale).unwrap();
        // The unpacked sequence is untouched; the packed one near it.
        let (g0, w0) = (got.narrow(0, 0, 1).unwrap(), want.narrow(0, 0, 1).unwrap());
        let d = max_abs_diff(&g0, &w0);
        assert!(d > 0.0 && d < 2e-2, "gated {gated}: {d}");
        let (g1, w1) = (got.narrow(0, 1, 1).unwrap(), want.narrow(0, 1, 1).unwrap());
        assert_eq!(max_abs_diff(&g1, &w1), 0.0);
    }
}
