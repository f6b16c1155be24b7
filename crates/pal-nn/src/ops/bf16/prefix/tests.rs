//! Tests of [`super`]: the kernel against plain f32 attention of the same bf16 inputs.

use super::*;
use crate::ops::lane_sum;

/// One softmax over `prefix` and `own` together, or one over each (`apart`); a part whose
/// scores are all masked gets no weight.
fn softmax_parts(prefix: &mut [f32], own: &mut [f32], apart: bool) {
    let max_of = |x: &[f32]| {
        if x.is_empty() {
            f32::NEG_INFINITY
        } else {
            lane_max(x)
        }
    };
    let exp_sum = |x: &mut [f32], max: f32| -> f32 {
        if max == f32::NEG_INFINITY {
            x.fill(0.0);
            return 0.0;
        }
        for s in x.iter_mut() {
            *s = (*s - max).exp_fast();
        }
        if x.is_empty() {
            0.0
        } else {
            lane_sum(x)
        }
    };
    let normalize = |x: &mut [f32], sum: f32| {
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        x.iter_mut().for_each(|s| *s *= inv);
    };
    if apart {
        let sum = exp_sum(prefix, max_of(prefix));
        normalize(prefix, sum);
        let sum = exp_sum(own, max_of(own));
        normalize(own, sum);
    } else {
        let max = max_of(prefix).max(max_of(own));
        let sum = exp_sum(prefix, max) + exp_sum(own, max);
        normalize(prefix, sum);
        normalize(own, sum);
    }
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed * 131) * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Plain f32 attention of the same bf16-rounded inputs, for one head.
fn reference(
    q: &[f32],
    (m, head_dim): (usize, usize),
    k: &[f32],
    v: &[f32],
    own: (&[f32], &[f32], usize),
    scale: f32,
    apart: bool,
) -> Vec<f32> {
    let round = |x: f32| super::super::pack::from_bf16(super::super::pack::to_bf16(x));
    let p_rows = k.len() / head_dim;
    let (own_scores, own_values, n) = own;
    let mut out = vec![0f32; m * head_dim];
    for r in 0..m {
        let mut s: Vec<f32> = (0..p_rows)
            .map(|j| {
                (0..head_dim)
                    .map(|d| round(q[r * head_dim + d]) * round(k[j * head_dim + d]))
                    .sum::<f32>()
                    * scale
            })
            .collect();
        let mut o = own_scores[r * n..(r + 1) * n].to_vec();
        softmax_parts(&mut s, &mut o, apart);
        for d in 0..head_dim {
            let mut sum = 0f32;
            for j in 0..p_rows {
                sum += round(s[j]) * round(v[j * head_dim + d]);
            }
            for j in 0..n {
                sum += o[j] * own_values[j * head_dim + d];
            }
            out[r * head_dim + d] = sum;
        }
    }
    out
}

/// Over runs of uneven lengths, with own keys (one of them masked) and without, joint and
/// apart: the kernel gives the plain attention of the same bf16 inputs.
#[test]
fn prefix_attention_is_attention_over_the_runs() {
    if !available() {
        eprintln!("no bf16 kernel on this CPU: nothing to check");
        return;
    }
    for m in [3, 37] {
        check_prefix_attention(m);
    }
    // No prefix at all: attention over the own keys alone.
    let (kv_heads, head_dim, m) = (2, 64, 37);
    let q = values(kv_heads * m * head_dim, 3);
    let (n, own_scores, own_values) = (
        3,
        values(kv_heads * m * 3, 6),
        values(kv_heads * 3 * head_dim, 7),
    );
    let own = OwnKeys {
        scores: &own_scores,
        values: &own_values,
        n,
    };
    let got = prefix_attention(
        &q,
        (kv_heads, m, head_dim),
        &PackedPrefix::default(),
        &own,
        1.0,
        false,
    );
    for h in 0..kv_heads {
        for r in 0..m {
            let mut p = own_scores[(h * m + r) * n..(h * m + r + 1) * n].to_vec();
            softmax_parts(&mut [], &mut p, false);
            for d in 0..head_dim {
                let want: f32 = (0..n)
                    .map(|j| p[j] * own_values[(h * n + j) * head_dim + d])
                    .sum();
                assert!((got[(h * m + r) * head_dim + d] - want).abs() < 1e-5);
            }
        }
    }
}

/// Several queries at once (decoding sequences over prefixes of their own, of different
/// lengths and rows) give each the outputs it gets alone, bit for bit.
#[test]
fn queries_together_are_each_as_alone() {
    if !available() {
        eprintln!("no bf16 kernel on this CPU: nothing to check");
        return;
    }
    let (kv_heads, head_dim) = (3, 64);
    let prefixes: Vec<PackedPrefix> = [vec![300, 70], vec![1100], vec![5, 2000, 40]]
        .iter()
        .enumerate()
        .map(|(i, rows)| PackedPrefix {
            runs: rows
                .iter()
                .map(|&r| {
                    let k = values(kv_heads * r * head_dim, 10 + i);
                    let v = values(kv_heads * r * head_dim, 20 + i);
                    Arc::new(PackedRun::new(&k, &v, kv_heads, r, head_dim))
                })
                .collect(),
        })
        .collect();
    let ms = [3, 3, 40];
    let ns = [7, 0, 12];
    let qs: Vec<Vec<f32>> = (0..3)
        .map(|i| values(kv_heads * ms[i] * head_dim, 30 + i))
        .collect();
    let scores: Vec<Vec<f32>> = (0..3)
        .map(|i| values(kv_heads * ms[i] * ns[i], 40 + i))
        .collect();
    let own_values: Vec<Vec<f32>> = (0..3)
        .map(|i| values(kv_heads * ns[i] * head_dim, 50 + i))
        .collect();
    let queries: Vec<PrefixQuery> = (0..3)
        .map(|i| PrefixQuery {
            q: &qs[i],
            m: ms[i],
            prefix: &prefixes[i],
            own: OwnKeys {
                scores: &scores[i],
                values: &own_values[i],
                n: ns[i],
            },
            prefix_own_softmax: i == 1,
        })
        .collect();
    let together = prefix_attention_batch(&queries, (kv_heads, head_dim), 0.125);
    for (i, query) in queries.iter().enumerate() {
        let alone =
            prefix_attention_batch(std::slice::from_ref(query), (kv_heads, head_dim), 0.125);
        assert_eq!(together[i], alone[0], "query {i}");
    }
}

/// [`prefix_attention_is_attention_over_the_runs`] for `m` query rows (3: a decoding step's
/// three query heads per key head; 37: a question, rows in two tile pairs) on every kernel.
fn check_prefix_attention(m: usize) {
    let (kv_heads, head_dim) = (2, 64);
    let run_rows = [45, 7, 1100, 130];
    let total: usize = run_rows.iter().sum();
    let k = values(kv_heads * total * head_dim, 1);
    let v = values(kv_heads * total * head_dim, 2);
    // Each head's rows, split into runs.
    let mut runs = vec![];
    let mut first = 0;
    for &rows in &run_rows {
        let take = |x: &[f32]| -> Vec<f32> {
            (0..kv_heads)
                .flat_map(|h| {
                    x[(h * total + first) * head_dim..(h * total + first + rows) * head_dim]
                        .to_vec()
                })
                .collect()
        };
        runs.push(Arc::new(PackedRun::new(
            &take(&k),
            &take(&v),
            kv_heads,
            rows,
            head_dim,
        )));
        first += rows;
    }
    let prefix = PackedPrefix { runs };
    assert_eq!(prefix.rows(), total);
    let q = values(kv_heads * m * head_dim, 3);
    for n in [0, 5] {
        let mut own_scores = values(kv_heads * m * n, 4);
        if n > 0 {
            own_scores[n - 1] = f32::NEG_INFINITY;
        }
        let own_values = values(kv_heads * n * head_dim, 5);
        let own = OwnKeys {
            scores: &own_scores,
            values: &own_values,
            n,
        };
        for (kernel, apart) in Bf16Kernel::ALL
            .into_iter()
            .filter(|&k| k != Bf16Kernel::Portable && k.available())
            .flat_map(|k| [(k, false), (k, true)])
        {
            let query = PrefixQuery {
                q: &q,
                m,
                prefix: &prefix,
                own,
                prefix_own_softmax: apart,
            };
            let shape = (kv_heads, head_dim);
            let got = prefix_attention_on(kernel, &[query], shape, 0.125).remove(0);
            for h in 0..kv_heads {
                let want = reference(
                    &q[h * m * head_dim..(h + 1) * m * head_dim],
                    (m, head_dim),
                    &k[h * total * head_dim..(h + 1) * total * head_dim],
                    &v[h * total * head_dim..(h + 1) * total * head_dim],
                    (
                        &own_scores[h * m * n..(h + 1) * m * n],
                        &own_values[h * n * head_dim..(h + 1) * n * head_dim],
                        n,
                    ),
                    0.125,
                    apart,
                );
                let got = &got[h * m * head_dim..(h + 1) * m * head_dim];
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 2e-3,
                        "{kernel:?} m {m} n {n} apart {apart}: {g} vs {w}"
                    );
                }
            }
        }
    }
    let two = prefix.first_rows(52).expect("two runs");
    assert_eq!(two.runs.len(), 2);
    assert!(prefix.first_rows(50).is_none());
}
