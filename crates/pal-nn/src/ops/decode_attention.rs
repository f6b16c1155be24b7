//! Decoding's attention under continuous batching, f32 on the CPU: one query row per sequence,
//! each over its own keys and values (a LAL prefix, shared with other requests about the same
//! clip, then its KV cache, as views into the cache's buffers; the two parts are read where they
//! lie, never concatenated), every sequence and key/value head in one pass over candle's thread
//! pool.
//! Attending sequence by sequence costs some twenty tensor operations per sequence and layer
//! (views, two products, softmaxes, a concatenation), more than the arithmetic at decoding's
//! sizes. The arithmetic is the same: the dot-product, softmax and row-update loops of the
//! small batched products ([`super::few_rows`], [`super::softmax`]).

use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor};

use super::avx2_fma;
use super::few_rows::{dot_products, row_updates};
use super::softmax::softmax_in_place;
use super::SharedMut;

/// One sequence's keys and values, each `(1, kv_heads, rows, head_dim)` (rows contiguous within
/// a head; any head stride): a prefix (LAL's audio keys, before the others) and its own.
#[derive(Clone, Copy)]
pub struct SequenceKeys<'a> {
    /// The prefix's keys and values, if any.
    pub prefix: Option<(&'a Tensor, &'a Tensor)>,
    /// Whether the prefix's keys get a softmax of their own, apart from the others' (gated LAL).
    pub prefix_own_softmax: bool,
    /// The prefix packed in bf16 ([`crate::ops::bf16::prefix`]): attended instead of `prefix`.
    pub packed: Option<&'a crate::ops::bf16::prefix::PackedPrefix>,
    /// The sequence's own keys.
    pub k: &'a Tensor,
    /// The sequence's own values.
    pub v: &'a Tensor,
}

/// A CPU f32 tensor's data and layout, when its last dimension is contiguous.
fn cpu_f32(t: &Tensor) -> Option<(StorageRef<'_>, Layout)> {
    let (storage, layout) = t.storage_and_layout();
    let ok = matches!(&*storage, Storage::Cpu(CpuStorage::F32(_)))
        && layout.dims().len() == 4
        && layout.stride()[3] == 1;
    ok.then(|| (storage, layout.clone()))
}

/// The first element of head `h` of a `(1, kv_heads, rows, head_dim)` tensor [`cpu_f32`]
/// accepted.
fn head(storage: &Storage, layout: &Layout, h: usize) -> *const f32 {
    data(storage)[layout.start_offset() + h * layout.stride()[1]..].as_ptr()
}

/// The slice of a storage [`cpu_f32`] accepted.
fn data(storage: &Storage) -> &[f32] {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => v,
        _ => unreachable!("checked by cpu_f32"),
    }
}

/// `q (b, q_heads, 1, head_dim)` attending sequence `i` over `sequences[i]`, scores scaled by
/// `scale`: `(b, q_heads, 1, head_dim)`. `None` when an input is not a CPU f32 tensor of that
/// shape (the caller attends sequence by sequence).
pub(crate) fn decode_attention_cpu(
    q: &Tensor,
    sequences: &[SequenceKeys],
    scale: f64,
) -> Result<Option<Tensor>> {
    let (b, q_heads, q_rows, head_dim) = q.dims4()?;
    let q = q.contiguous()?;
    let Some((q_storage, q_layout)) = cpu_f32(&q) else {
        return Ok(None);
    };
    if q_rows != 1 || sequences.len() != b || b == 0 {
        return Ok(None);
    }
    let kv_heads = sequences[0].k.dims4()?.1;
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return Ok(None);
    }
    // Per sequence: its parts (prefix first, when it has one) and whether the prefix has its
    // own softmax.
    let mut keys = Vec::with_capacity(b);
    for s in sequences {
        let mut parts = Vec::with_capacity(2);
        for (k, v) in s.prefix.into_iter().chain([(s.k, s.v)]) {
            let (Some(k), Some(v)) = (cpu_f32(k), cpu_f32(v)) else {
                return Ok(None);
            };
            let dims = k.1.dims();
            let fits = dims == v.1.dims()
                && dims[0] == 1
                && dims[1] == kv_heads
                && dims[2] > 0
                && dims[3] == head_dim;
            if !fits {
                return Ok(None);
            }
            parts.push((k, v));
        }
        keys.push((parts, s.prefix.is_some() && s.prefix_own_softmax));
    }
    let group = q_heads / kv_heads;
    let q_data = &data(&q_storage)[q_layout.start_offset()..];
    let simd = avx2_fma();
    let scale = scale as f32;
    let mut out = vec![0f32; b * q_heads * head_dim];
    let dst = SharedMut(out.as_mut_ptr());
    let dst = &dst;
    candle_core::utils::barrier_pool().execute_chunked(b * kv_heads, |units| {
        for unit in units {
            let (i, h) = (unit / kv_heads, unit % kv_heads);
            let (parts, own_softmax) = (&keys[i].0, keys[i].1);
            let rows: Vec<usize> = parts.iter().map(|(k, _)| k.1.dims()[2]).collect();
            let all: usize = rows.iter().sum();
            let first_query = (i * q_heads + h * group) * head_dim;
            let mut scores = vec![0f32; group * all];
            // SAFETY: the query rows, and the key and value rows of head `h` of each part, lie
            // inside their storages (offsets and strides from layouts candle checked); this unit
            // alone writes its `group` output rows.
            unsafe {
                let mut column = 0;
                for (((ks, kl), _), &n) in parts.iter().zip(&rows) {
                    dot_products(
                        simd,
                        (group, n, head_dim),
                        (q_data.as_ptr().add(first_query), head_dim),
                        (head(ks, kl, h), kl.stride()[2]),
                        (scores.as_mut_ptr().add(column), all),
                    );
                    column += n;
                }
                let apart = if own_softmax { rows[0] } else { 0 };
                for row in scores.chunks_mut(all) {
                    row.iter_mut().for_each(|s| *s *= scale);
                    let (prefix, rest) = row.split_at_mut(apart);
                    if !prefix.is_empty() {
                        softmax_in_place(prefix);
                    }
                    softmax_in_place(rest);
                }
                // The parts' values added in order into the zeroed output: the same sums as
                // over one concatenated cache.
                let mut column = 0;
                for ((_, (vs, vl)), &n) in parts.iter().zip(&rows) {
                    row_updates(
                        simd,
                        (group, head_dim, n),
                        (scores.as_ptr().add(column), all, 1),
                        (head(vs, vl, h), vl.stride()[2]),
                        (dst.0.add(first_query), head_dim),
                    );
                    column += n;
                }
            }
        }
    });
    let out = Tensor::from_vec(out, (b, q_heads, 1, head_dim), q.device())?;
    Ok(Some(out))
}

/// The rows of the sequences `packed` (their prefixes packed in bf16) of
/// [`crate::attention::decode_attention`]: each query row over its packed prefix and its own
/// keys, every sequence's chunks in one dispatch of the pool
/// ([`super::bf16::prefix::prefix_attention_batch`]; each sequence's arithmetic is the one it
/// gets alone). `q` `(b, q_heads, 1, head_dim)`; returns `(1, q_heads, 1, head_dim)` per
/// sequence of `packed`, in order.
pub(crate) fn decode_packed(
    q: &Tensor,
    sequences: &[SequenceKeys],
    packed: &[usize],
    scale: f64,
) -> Result<Vec<Tensor>> {
    use super::bf16::prefix::{prefix_attention_batch, OwnKeys, PrefixQuery};
    let (_, q_heads, q_rows, head_dim) = q.dims4()?;
    let Some(&first) = packed.first() else {
        return Ok(vec![]);
    };
    let kv_heads = sequences[first].k.dim(1)?;
    if kv_heads == 0 || !q_heads.is_multiple_of(kv_heads) {
        candle_core::bail!("decoding: {q_heads} query heads over {kv_heads} key/value heads");
    }
    if q_rows != 1 {
        candle_core::bail!("decoding: {q_rows} query rows per sequence (one, unmasked)");
    }
    // Each sequence's queries and own keys as a prefill over a packed prefix takes them
    // (`attention_packed`: the same arithmetic, so an answer is the one `pal ask` gives).
    let mut inputs = Vec::with_capacity(packed.len());
    for &i in packed {
        let s = &sequences[i];
        let heads = s.k.dim(1)?;
        if heads != kv_heads {
            candle_core::bail!("decoding: sequences with {heads} and {kv_heads} key/value heads");
        }
        inputs.push(packed_inputs(&q.narrow(0, i, 1)?, s.k, s.v, None, scale)?);
    }
    let queries: Vec<PrefixQuery> = packed
        .iter()
        .zip(&inputs)
        .map(|(&i, own)| PrefixQuery {
            q: &own.folded,
            m: own.m,
            prefix: sequences[i].packed.expect("a packed sequence"),
            own: OwnKeys {
                scores: &own.scores,
                values: &own.values,
                n: own.rows,
            },
            prefix_own_softmax: sequences[i].prefix_own_softmax,
        })
        .collect();
    prefix_attention_batch(&queries, (kv_heads, head_dim), scale as f32)
        .into_iter()
        .map(|out| {
            Tensor::from_vec(out, (1, q_heads, q_rows, head_dim), q.device())?.to_dtype(q.dtype())
        })
        .collect()
}

/// What attention over a packed prefix takes from `q` `(b, q_heads, q_rows, head_dim)` and the
/// own keys and values `(b, kv_heads, rows, head_dim)`, f32, item after item.
pub(crate) struct PackedInputs {
    /// The queries folded `(kv_heads, m, head_dim)` per item (`m` = group x query rows).
    pub folded: Vec<f32>,
    /// Their scores against the own keys `(kv_heads, m, rows)` per item, scaled and masked.
    pub scores: Vec<f32>,
    /// The own values `(kv_heads, rows, head_dim)` per item.
    pub values: Vec<f32>,
    /// Folded rows per head.
    pub m: usize,
    /// Own keys.
    pub rows: usize,
}

/// [`PackedInputs`] of `q` over `k`, `v`, with `mask` (additive, over the own keys only,
/// broadcastable to `(b, 1, q_rows, rows)`): the one place their arithmetic is written, for a
/// prefill and for decoding alike.
pub(crate) fn packed_inputs(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<PackedInputs> {
    use candle_core::DType;
    let (b, q_heads, q_rows, head_dim) = q.dims4()?;
    let (_, kv_heads, rows, _) = k.dims4()?;
    let m = q_heads / kv_heads * q_rows;
    let folded = q
        .detach()
        .contiguous()?
        .reshape((b, kv_heads, m, head_dim))?;
    let scores = (super::batched_matmul(&folded, &k.detach().t()?)? * scale)?;
    let scores = match mask {
        Some(mask) => {
            let mb = if mask.rank() == 4 { mask.dim(0)? } else { 1 };
            let mask = mask
                .broadcast_as((mb, 1, q_rows, rows))?
                .reshape((mb, 1, 1, q_rows, rows))?;
            scores
                .reshape((b, kv_heads, m / q_rows, q_rows, rows))?
                .broadcast_add(&mask.to_dtype(scores.dtype())?)?
        }
        None => scores,
    };
    let f32s = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
    Ok(PackedInputs {
        folded: f32s(&folded)?,
        scores: f32s(&scores)?,
        values: f32s(&v.detach())?,
        m,
        rows,
    })
}
