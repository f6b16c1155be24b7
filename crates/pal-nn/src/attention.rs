//! The one attention function used by every model in pal (LLM self-attention, PLITS, LAL, PAL,
//! encoders). Options are expressed through its inputs: keys may have more rows than queries (a KV
//! cache, or LAL's audio prefix), heads may be grouped (GQA), and an additive mask says who sees whom.

use candle_core::{DType, Device, Result, Tensor};

use crate::ops::bf16::prefix::{prefix_attention, OwnKeys, PackedPrefix};
use crate::ops::{
    batched_matmul, decode_attention_cpu, decode_packed, packed_inputs, scaled_masked_softmax,
    scaled_masked_softmax_over, softmax_backward, SequenceKeys,
};

/// A large negative value for masked scores, finite so that fully masked rows stay finite.
pub fn mask_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        _ => -1e30,
    }
}

/// Scaled dot-product attention with grouped key/value heads.
///
/// - `q`: `(batch, q_heads, q_rows, head_dim)`
/// - `k`, `v`: `(batch, kv_heads, k_rows, head_dim)`; `q_heads` must be a multiple of `kv_heads`
///   (query head `h` uses key/value head `h / (q_heads / kv_heads)`, as in Llama and Qwen).
/// - `mask`: additive, broadcastable to `(batch, 1, q_rows, k_rows)` (see [`causal_mask`]).
///
/// Returns `(batch, q_heads, q_rows, head_dim)`. Grouped heads are handled by folding the query
/// heads of a group into the row dimension, so keys and values are never copied per head.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    Ok(attention_with_probs(q, k, v, mask, scale)?.0)
}

/// [`attention`] that also returns the attention probabilities `(batch, kv_heads, group *
/// q_rows, k_rows)` (query heads of a group folded into the rows), which
/// [`attention_backward`] needs.
pub fn attention_with_probs(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    attention_split(q, k, v, mask, scale, 0)
}

/// Query heads per key/value head (grouped-query attention), or an error when they do not divide.
fn query_group(q_heads: usize, kv_heads: usize) -> Result<usize> {
    if kv_heads == 0 || !q_heads.is_multiple_of(kv_heads) {
        candle_core::bail!(
            "attention: {q_heads} query heads not a multiple of {kv_heads} kv heads"
        );
    }
    Ok(q_heads / kv_heads)
}

/// [`attention_with_probs`] where the first `own_softmax` keys (a LAL audio prefix) get a
/// softmax of their own, apart from the other keys: each query's weights over the prefix sum to
/// 1, and so do its weights over the rest, so the prefix can never take attention away from the
/// text, however many rows it has or however large its scores (LLaMA-Adapter's zero-init
/// attention, with the gate applied to the prefix's values by the caller). `own_softmax = 0` is
/// plain attention. The probabilities returned are the two softmaxes side by side.
pub fn attention_split(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    own_softmax: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, q_heads, q_rows, head_dim) = q.dims4()?;
    let (_, kv_heads, k_rows, _) = k.dims4()?;
    let group = query_group(q_heads, kv_heads)?;
    let q = q
        .contiguous()?
        .reshape((b, kv_heads, group * q_rows, head_dim))?;
    // On the CPU, batched_matmul reads strided keys and values (views into a KV cache's
    // buffers) where they lie; candle's matmul elsewhere wants them contiguous.
    let in_place = q.device().is_cpu() && !(q.track_op() || k.track_op() || v.track_op());
    let (k, v) = match in_place {
        true => (k.clone(), v.clone()),
        false => (k.contiguous()?, v.contiguous()?),
    };
    let scores = batched_matmul(&q, &k.t()?)?;
    // The mask as `(batch or 1, q_rows, k_rows)`: one row per query, shared by the heads.
    let mask = match mask {
        Some(mask) => {
            let mb = if mask.rank() == 4 { mask.dim(0)? } else { 1 };
            Some(
                mask.broadcast_as((mb, 1, q_rows, k_rows))?
                    .reshape((mb, q_rows, k_rows))?,
            )
        }
        None => None,
    };
    let probs = match own_softmax {
        0 => scaled_masked_softmax_over(scores, mask.as_ref(), scale)?,
        p if p < k_rows => {
            let part = |start: usize, len: usize| -> Result<Tensor> {
                let m = mask.as_ref().map(|m| m.narrow(2, start, len)).transpose()?;
                scaled_masked_softmax(&scores.narrow(3, start, len)?, m.as_ref(), scale)
            };
            Tensor::cat(&[&part(0, p)?, &part(p, k_rows - p)?], 3)?
        }
        p => candle_core::bail!("attention: a prefix of {p} rows among only {k_rows} keys"),
    };
    let out = batched_matmul(&probs, &v)?.reshape((b, q_heads, q_rows, head_dim))?;
    Ok((out, probs))
}

/// [`attention_split`] over keys and values given in two parts, a prefix (LAL's audio, a view
/// of a clip's buffers) and the sequence's own, read where they lie instead of joined into one
/// copy: only the scores (a row per query) are joined. Inference only (no gradient). Returns
/// the output and the probabilities over `[prefix ; own]`.
pub fn attention_apart(
    q: &Tensor,
    prefix: (&Tensor, &Tensor),
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    own_softmax: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, q_heads, q_rows, head_dim) = q.dims4()?;
    let (pk, pv) = prefix;
    let (_, kv_heads, p, _) = pk.dims4()?;
    let n = k.dim(2)?;
    let group = query_group(q_heads, kv_heads)?;
    if own_softmax != 0 && own_softmax != p {
        candle_core::bail!("attention: a softmax of its own over {own_softmax} of {p} prefix rows");
    }
    let q = q
        .contiguous()?
        .reshape((b, kv_heads, group * q_rows, head_dim))?;
    let scores = Tensor::cat(
        &[
            &batched_matmul(&q, &pk.t()?)?,
            &batched_matmul(&q, &k.t()?)?,
        ],
        3,
    )?;
    let mask = match mask {
        Some(mask) => {
            let mb = if mask.rank() == 4 { mask.dim(0)? } else { 1 };
            Some(
                mask.broadcast_as((mb, 1, q_rows, p + n))?
                    .reshape((mb, q_rows, p + n))?,
            )
        }
        None => None,
    };
    let probs = if own_softmax == 0 {
        scaled_masked_softmax_over(scores, mask.as_ref(), scale)?
    } else {
        let part = |start: usize, len: usize| -> Result<Tensor> {
            let m = mask.as_ref().map(|m| m.narrow(2, start, len)).transpose()?;
            scaled_masked_softmax(&scores.narrow(3, start, len)?, m.as_ref(), scale)
        };
        Tensor::cat(&[&part(0, p)?, &part(p, n)?], 3)?
    };
    let out = (batched_matmul(&probs.narrow(3, 0, p)?, pv)?
        + batched_matmul(&probs.narrow(3, p, n)?, v)?)?
    .reshape((b, q_heads, q_rows, head_dim))?;
    Ok((out, probs))
}

/// [`attention_apart`] with each item's prefix packed in bf16 ([`PackedPrefix`], its real rows
/// only) and multiplied on the CPU's bf16 kernel ([`crate::ops::bf16::prefix`]): a question's
/// prefill over a long LAL prefix. `q` `(b, q_heads, q_rows, head_dim)`, the own keys and
/// values `(b, kv_heads, rows, head_dim)` and `mask` (over the own keys only, broadcastable to
/// `(b, 1, q_rows, rows)`) in f32 on the CPU; `prefixes[i]` is item `i`'s prefix. Returns
/// `(b, q_heads, q_rows, head_dim)`. Inference only (no gradient, no probabilities).
pub fn attention_packed(
    q: &Tensor,
    prefixes: &[PackedPrefix],
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    prefix_own_softmax: bool,
) -> Result<Tensor> {
    let (b, q_heads, q_rows, head_dim) = q.dims4()?;
    let (_, kv_heads, rows, _) = k.dims4()?;
    query_group(q_heads, kv_heads)?;
    if prefixes.len() != b {
        candle_core::bail!(
            "attention: {} packed prefixes for {b} items",
            prefixes.len()
        );
    }
    let inputs = packed_inputs(q, k, v, mask, scale)?;
    let m = inputs.m;
    let (per_q, per_scores, per_values) = (
        kv_heads * m * head_dim,
        kv_heads * m * rows,
        kv_heads * rows * head_dim,
    );
    let mut out = Vec::with_capacity(b * per_q);
    for (i, prefix) in prefixes.iter().enumerate() {
        let own = OwnKeys {
            scores: &inputs.scores[i * per_scores..(i + 1) * per_scores],
            values: &inputs.values[i * per_values..(i + 1) * per_values],
            n: rows,
        };
        let shape = (kv_heads, m, head_dim);
        let q_i = &inputs.folded[i * per_q..(i + 1) * per_q];
        out.extend(prefix_attention(
            q_i,
            shape,
            prefix,
            &own,
            scale as f32,
            prefix_own_softmax,
        ));
    }
    Tensor::from_vec(out, (b, q_heads, q_rows, head_dim), q.device())?.to_dtype(q.dtype())
}

/// Decoding under continuous batching: `q (b, q_heads, 1, head_dim)`, one query row per
/// sequence, attends sequence `i` over `sequences[i]`: its prefix's keys and values (LAL's audio,
/// with a softmax of its own when gated, as in [`attention_split`]) then its own, the two parts
/// read as one. Returns `(b, q_heads, 1, head_dim)`. On the CPU in f32, every sequence and head
/// in one pass with [`attention_split`]'s arithmetic; elsewhere, sequence by sequence through
/// it; the sequences whose prefixes are packed in bf16 together on the bf16 kernel, apart from
/// the others. Inference only
/// (no gradient).
pub fn decode_attention(q: &Tensor, sequences: &[SequenceKeys], scale: f64) -> Result<Tensor> {
    let (packed, plain): (Vec<usize>, Vec<usize>) =
        (0..sequences.len()).partition(|&i| sequences[i].packed.is_some());
    if !packed.is_empty() {
        // The packed ones apart; the others in one pass as without them (each sequence's
        // arithmetic never depends on the batch it is in).
        let mut rows: Vec<Option<Tensor>> = vec![None; sequences.len()];
        if !plain.is_empty() {
            let index: Vec<u32> = plain.iter().map(|&i| i as u32).collect();
            let index = Tensor::new(index.as_slice(), q.device())?;
            let keys: Vec<SequenceKeys> = plain.iter().map(|&i| sequences[i]).collect();
            let out = decode_attention(&q.index_select(&index, 0)?, &keys, scale)?;
            for (j, &i) in plain.iter().enumerate() {
                rows[i] = Some(out.narrow(0, j, 1)?);
            }
        }
        for (&i, out) in packed
            .iter()
            .zip(decode_packed(q, sequences, &packed, scale)?)
        {
            rows[i] = Some(out);
        }
        let rows: Vec<Tensor> = rows.into_iter().map(|r| r.expect("every row")).collect();
        return Tensor::cat(&rows, 0);
    }
    if let Some(out) = decode_attention_cpu(q, sequences, scale)? {
        return Ok(out);
    }
    let mut rows = Vec::with_capacity(sequences.len());
    for (i, s) in sequences.iter().enumerate() {
        let (k, v, own_softmax) = match s.prefix {
            Some((pk, pv)) => (
                Tensor::cat(&[pk, s.k], 2)?,
                Tensor::cat(&[pv, s.v], 2)?,
                if s.prefix_own_softmax { pk.dim(2)? } else { 0 },
            ),
            None => (s.k.clone(), s.v.clone(), 0),
        };
        let q = q.narrow(0, i, 1)?;
        rows.push(attention_split(&q, &k, &v, None, scale, own_softmax)?.0);
    }
    Tensor::cat(&rows, 0)
}

/// The gradients `(dq, dk, dv)` of [`attention`] for the output gradient `d_out`, from its
/// inputs and the probabilities [`attention_with_probs`] returned (closed form; masked keys get
/// zero gradient because their probabilities are zero):
/// `dV = P^T dO`, `dS = P * (dO V^T - rowsum(P * dO V^T))`, `dQ = scale dS K`,
/// `dK = scale dS^T Q`. Used by closed-form layer backwards on tensors that track no gradient.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    d_out: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    attention_split_backward(q, k, v, probs, d_out, scale, 0)
}

/// [`attention_backward`] of [`attention_split`]: the softmax backward runs on the prefix's
/// columns and the other columns apart.
pub fn attention_split_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    d_out: &Tensor,
    scale: f64,
    own_softmax: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, q_heads, q_rows, head_dim) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let group = q_heads / kv_heads;
    let fold = |t: &Tensor| {
        t.contiguous()?
            .reshape((b, kv_heads, group * q_rows, head_dim))
    };
    let (q, d_out) = (fold(q)?, fold(d_out)?);
    let dv = batched_matmul(&probs.t()?, &d_out)?;
    let dp = batched_matmul(&d_out, &v.contiguous()?.t()?)?;
    let ds = match own_softmax {
        0 => softmax_backward(probs, &dp, scale)?,
        p => {
            let rest = probs.dim(3)? - p;
            let part = |start: usize, len: usize| {
                softmax_backward(
                    &probs.narrow(3, start, len)?,
                    &dp.narrow(3, start, len)?,
                    scale,
                )
            };
            Tensor::cat(&[&part(0, p)?, &part(p, rest)?], 3)?
        }
    };
    let dq = batched_matmul(&ds, &k.contiguous()?)?.reshape((b, q_heads, q_rows, head_dim))?;
    let dk = batched_matmul(&ds.t()?, &q)?;
    Ok((dq, dk, dv))
}

/// Additive causal mask `(batch or 1, 1, q_rows, k_rows)` where the queries are the last `q_rows`
/// of `k_rows` positions: query `i` sees key `j` iff `j <= k_rows - q_rows + i`. A key prefix (KV
/// cache, LAL audio keys) is therefore visible to every query.
///
/// `key_valid`, if given, is `(batch, k_rows)` with 1 for real keys and 0 for padding; padded keys
/// are hidden from every query.
pub fn causal_mask(
    q_rows: usize,
    k_rows: usize,
    key_valid: Option<&Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if q_rows > k_rows {
        candle_core::bail!("causal_mask: {q_rows} queries but only {k_rows} keys");
    }
    let offset = k_rows - q_rows;
    let neg = mask_value(DType::F32) as f32;
    let causal: Vec<f32> = (0..q_rows)
        .flat_map(|i| (0..k_rows).map(move |j| if j <= offset + i { 0.0 } else { neg }))
        .collect();
    let mask = Tensor::from_vec(causal, (1, 1, q_rows, k_rows), device)?;
    let mask = match key_valid {
        Some(valid) => {
            let (b, n) = valid.dims2()?;
            if n != k_rows {
                candle_core::bail!("causal_mask: key_valid has {n} columns, expected {k_rows}");
            }
            let hidden = ((1.0 - valid.to_dtype(DType::F32)?)? * neg as f64)?;
            let hidden = hidden.reshape((b, 1, 1, k_rows))?;
            // Clamp so that two masks added together stay at the mask value.
            mask.broadcast_add(&hidden)?.clamp(neg, 0f32)?
        }
        None => mask,
    };
    mask.to_dtype(dtype)
}
