//! The KV cache: per layer, the keys and values of the rows seen so far, after an optional fixed
//! prefix (LAL's audio keys/values), plus which cached rows are real and each item's next position.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Extra keys/values that precede a layer's own (LAL audio keys): every query sees every valid
/// prefix row, and the prefix never goes through the layer's FFN.
#[derive(Clone, Debug)]
pub struct KeyValuePrefix {
    /// `(batch, kv_heads, rows, head_dim)`, already normed, projected and rotated.
    pub k: Tensor,
    /// `(batch, kv_heads, rows, head_dim)`.
    pub v: Tensor,
    /// `(batch, rows)`, 1 for real rows and 0 for padding.
    pub valid: Tensor,
    /// `(2, batch, kv_heads, rows, head_dim)` when `k` and `v` are the two halves of one tensor
    /// (a LAL prefix in training): a frozen layer then takes this tensor as one input, so its
    /// gradient arrives in one piece instead of as two zero-padded halves.
    pub stacked: Option<Tensor>,
    /// The prefix's keys get a softmax of their own, apart from the text's (gated LAL audio,
    /// see [`pal_nn::attention_split`]): the prefix can never take attention from the text.
    pub own_softmax: bool,
    /// Per batch item, its real rows packed in bf16 for the CPU's bf16 kernel (see
    /// [`crate::llm::Llama::bf16_prefix`]); inference attends over these, and `k` and `v` are
    /// then [`placeholder`]s (shapes only).
    pub packed: Option<Vec<pal_nn::ops::bf16::prefix::PackedPrefix>>,
}

/// Keys or values held only packed ([`KeyValuePrefix::packed`]): `(items, kv_heads, rows,
/// head_dim)`, heads, width, type and device as `like`'s, with no memory behind them (one zero,
/// broadcast). Attention reads the packed form; a path that would read these in f32 refuses a
/// packed prefix instead (see `DecoderLayer`'s forward).
pub fn placeholder(like: &Tensor, items: usize, rows: usize) -> Result<Tensor> {
    let (_, kv_heads, _, head_dim) = like.dims4()?;
    let one = Tensor::zeros((1, 1, 1, 1), like.dtype(), like.device())?;
    Ok(one.broadcast_as((items, kv_heads, rows, head_dim))?)
}

/// Bytes of the storage `t` is a view of: a view of a buffer with room to grow holds the whole
/// buffer, a [`placeholder`] one element (what a cache that keeps `t` keeps alive).
pub fn held_bytes(t: &Tensor) -> usize {
    use candle_core::{CpuStorage, Storage};
    let (storage, _) = t.storage_and_layout();
    let elements = match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v.len(),
        Storage::Cpu(CpuStorage::BF16(v)) => v.len(),
        Storage::Cpu(CpuStorage::F16(v)) => v.len(),
        // Other types and devices: the view's own elements.
        _ => t.elem_count(),
    };
    elements * t.dtype().size_in_bytes()
}

impl KeyValuePrefix {
    /// Keys at the front of the layer's attention that get their own softmax (0: none).
    pub fn own_softmax_rows(&self) -> usize {
        match self.own_softmax {
            true => self.k.dims()[2],
            false => 0,
        }
    }
}

/// Keys and values cached for one layer, `(batch, kv_heads, rows, head_dim)`, after an optional
/// fixed prefix.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// Fixed prefix (LAL audio keys/values), not part of `k`/`v`.
    pub prefix: Option<KeyValuePrefix>,
    /// Cached keys.
    pub k: Option<Tensor>,
    /// Cached values.
    pub v: Option<Tensor>,
    /// At inference, `[prefix ; k]` and `[prefix ; v]` in buffers with room to grow: a decoding
    /// step writes its row in place instead of copying the whole cache (and the prefix) into a
    /// new tensor; `k` and `v` are then views into it.
    store: Option<KvStore>,
    /// Keep the attention probabilities of the layer's next forward in `attention` (for
    /// `pal probe attention`, which shows where in the LLM the audio is read).
    pub record_attention: bool,
    /// The recorded probabilities `(batch, kv_heads, group * q_rows, k_rows)`, query heads of a
    /// group folded into the rows as [`pal_nn::attention_with_probs`] returns them; keys are
    /// `[prefix ; cached ; new]`.
    pub attention: Option<Tensor>,
}

/// Buffers `(batch, kv_heads, capacity, head_dim)` holding a layer's prefix and cached rows.
#[derive(Debug)]
struct KvStore {
    k: Tensor,
    v: Tensor,
    /// Rows of the prefix at the start of the buffers.
    prefix_rows: usize,
    /// Rows filled (prefix included).
    rows: usize,
    /// The prefix tensor the buffers were built with.
    prefix_id: Option<candle_core::TensorId>,
}

impl Clone for KvStore {
    /// A copy of the filled rows, with the same room: two caches cloned from one must never
    /// write into the same buffer.
    fn clone(&self) -> Self {
        let copy = |t: &Tensor| -> Tensor {
            let fresh = t
                .zeros_like()
                .expect("a buffer of an existing shape allocates");
            let filled = t
                .narrow(2, 0, self.rows)
                .and_then(|f| f.contiguous())
                .expect("filled rows lie inside the buffer");
            fresh
                .slice_set(&filled, 2, 0)
                .expect("same shapes but the row count");
            fresh
        };
        Self {
            k: copy(&self.k),
            v: copy(&self.v),
            prefix_rows: self.prefix_rows,
            rows: self.rows,
            prefix_id: self.prefix_id,
        }
    }
}

/// What [`LayerCache::append_apart`] returns: the prefix's keys and values (when the layer has
/// one) and the layer's own, each `(batch, kv_heads, rows, head_dim)`.
pub struct ApartKeys {
    /// The prefix's keys and values.
    pub prefix: Option<(Tensor, Tensor)>,
    /// Cached and new keys.
    pub k: Tensor,
    /// Cached and new values.
    pub v: Tensor,
}

/// Rows a new buffer gets room for, beyond what it must hold.
const STORE_HEADROOM: usize = 64;

impl LayerCache {
    /// Whether the layer's next (inference) forward attends over its prefix's packed form.
    pub fn attends_packed(&self) -> bool {
        !self.record_attention && self.prefix.as_ref().is_some_and(|p| p.packed.is_some())
    }

    /// An empty cache after `prefix`.
    pub fn with_prefix(prefix: Option<KeyValuePrefix>) -> Self {
        Self {
            prefix,
            ..Default::default()
        }
    }

    /// Appends new keys and values `(batch, kv_heads, n, head_dim)` in place (inference: nothing
    /// may need a gradient) and returns `[prefix ; cached ; new]` keys and values as views of the
    /// buffers. The buffers are (re)built when missing, full, or made for another prefix.
    pub fn append_in_place(&mut self, k_new: &Tensor, v_new: &Tensor) -> Result<(Tensor, Tensor)> {
        let store = self.append_to_store(k_new, v_new, true)?;
        let (all, prefix_rows) = (store.rows, store.prefix_rows);
        let (k, v) = (store.k.narrow(2, 0, all)?, store.v.narrow(2, 0, all)?);
        self.k = Some(k.narrow(2, prefix_rows, all - prefix_rows)?);
        self.v = Some(v.narrow(2, prefix_rows, all - prefix_rows)?);
        Ok((k, v))
    }

    /// [`Self::append_in_place`] for decoding with the prefix kept apart: the buffers hold only
    /// the layer's own rows, and the prefix (a clip's LAL keys, which every request about the
    /// clip shares) is never copied. Returns the prefix's keys and values when there is one,
    /// then the cached and new keys and values as views of the buffers; attention reads the
    /// two parts as one ([`pal_nn::decode_attention`]).
    pub fn append_apart(&mut self, k_new: &Tensor, v_new: &Tensor) -> Result<ApartKeys> {
        let store = self.append_to_store(k_new, v_new, false)?;
        let (k, v) = (
            store.k.narrow(2, 0, store.rows)?,
            store.v.narrow(2, 0, store.rows)?,
        );
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        let prefix = self.prefix.as_ref().map(|p| (p.k.clone(), p.v.clone()));
        Ok(ApartKeys { prefix, k, v })
    }

    /// Writes the new rows into the buffers after the rows they hold, first (re)building them
    /// when missing, full, or made for another prefix (or, `with_prefix` false, holding one).
    fn append_to_store(
        &mut self,
        k_new: &Tensor,
        v_new: &Tensor,
        with_prefix: bool,
    ) -> Result<&KvStore> {
        let prefix = self.prefix.as_ref().filter(|_| with_prefix);
        let prefix_rows = prefix.map_or(0, |p| p.k.dims()[2]);
        let prefix_id = prefix.map(|p| p.k.id());
        let cached = self.k.as_ref().map_or(0, |k| k.dims()[2]);
        let needed = prefix_rows + cached + k_new.dims()[2];
        let usable = self.store.as_ref().is_some_and(|s| {
            s.prefix_id == prefix_id
                && s.rows == prefix_rows + cached
                && s.k.dims()[0] == k_new.dims()[0]
                && s.k.dims()[2] >= needed
        });
        if !usable {
            let capacity = needed + STORE_HEADROOM.max(needed / 2);
            self.store = Some(self.rebuild_store(k_new, capacity, with_prefix)?);
        }
        let store = self.store.as_mut().expect("built above");
        store.k.slice_set(&k_new.contiguous()?, 2, store.rows)?;
        store.v.slice_set(&v_new.contiguous()?, 2, store.rows)?;
        store.rows += k_new.dims()[2];
        Ok(store)
    }

    /// New buffers of `capacity` rows holding the cached rows, after the prefix when
    /// `with_prefix` (shaped as `like`).
    fn rebuild_store(&self, like: &Tensor, capacity: usize, with_prefix: bool) -> Result<KvStore> {
        let (b, heads, _, head_dim) = like.dims4()?;
        let zeros = || Tensor::zeros((b, heads, capacity, head_dim), like.dtype(), like.device());
        let (k, v) = (zeros()?, zeros()?);
        let mut rows = 0;
        let prefix = self.prefix.as_ref().filter(|_| with_prefix);
        let parts = [
            prefix.map(|p| (&p.k, &p.v)),
            self.k.as_ref().zip(self.v.as_ref()),
        ];
        for (pk, pv) in parts.into_iter().flatten() {
            k.slice_set(&pk.contiguous()?, 2, rows)?;
            v.slice_set(&pv.contiguous()?, 2, rows)?;
            rows += pk.dims()[2];
        }
        Ok(KvStore {
            k,
            v,
            prefix_rows: prefix.map_or(0, |p| p.k.dims()[2]),
            rows,
            prefix_id: prefix.map(|p| p.k.id()),
        })
    }
}

/// The KV cache of a whole model, plus which cached rows are real (not padding) and the next
/// position of each batch item.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// One entry per layer.
    pub layers: Vec<LayerCache>,
    /// `(batch, cached_rows)`, 1 for real rows and 0 for padding; `None` before the first step.
    pub key_valid: Option<Tensor>,
    /// Position the next real token of each batch item gets.
    pub next_position: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            key_valid: None,
            next_position: vec![],
        }
    }

    /// Number of cached rows.
    pub fn len(&self) -> usize {
        self.key_valid.as_ref().map(|t| t.dims()[1]).unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies each layer's rows out of its growable buffers (which may hold the prefix too, and
    /// room to grow) and drops the buffers: for a cache kept for later (a server keeps prompts),
    /// whose clones then share their tensors instead of copying the buffers, and which holds
    /// only the bytes of its rows.
    pub fn compact(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if layer.store.take().is_some() {
                layer.k = layer.k.as_ref().map(|k| k.copy()).transpose()?;
                layer.v = layer.v.as_ref().map(|v| v.copy()).transpose()?;
            }
        }
        Ok(())
    }

    /// Keeps only the first `rows` cached rows (prefixes stay): a conversation whose latest turn
    /// re-tokenized differently from what was generated rolls back to the common part.
    pub fn truncate(&mut self, rows: usize) -> Result<()> {
        let len = self.len();
        if rows >= len {
            return Ok(());
        }
        let valid = self
            .key_valid
            .as_ref()
            .expect("non-empty cache has validity");
        let dropped: Vec<u32> = valid
            .narrow(1, rows, len - rows)?
            .sum(1)?
            .to_dtype(DType::U32)?
            .to_vec1()?;
        for (next, d) in self.next_position.iter_mut().zip(dropped) {
            *next -= d;
        }
        self.key_valid = Some(valid.narrow(1, 0, rows)?);
        for layer in &mut self.layers {
            layer.k = layer.k.as_ref().map(|k| k.narrow(2, 0, rows)).transpose()?;
            layer.v = layer.v.as_ref().map(|v| v.narrow(2, 0, rows)).transpose()?;
            if let Some(store) = &mut layer.store {
                // The next append writes over the dropped rows.
                store.rows = store.prefix_rows + rows;
            }
        }
        Ok(())
    }
}

impl KvCache {
    /// The cache of each batch item on its own (batch 1), without its padding: only the key rows
    /// and prefix rows marked valid are kept, and positions are unchanged (they count real rows
    /// only). A server prefills the requests that arrive together in one padded batch, then
    /// decodes each with its own cache (continuous batching).
    pub fn split(&self) -> Result<Vec<KvCache>> {
        let b = self.next_position.len();
        let valid_rows = |valid: &Tensor, i: usize| -> Result<Tensor> {
            let row: Vec<f32> = valid
                .narrow(0, i, 1)?
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            let keep: Vec<u32> = (0..row.len() as u32)
                .filter(|&r| row[r as usize] > 0.5)
                .collect();
            Ok(Tensor::new(keep.as_slice(), valid.device())?)
        };
        let all_valid = |valid: &Tensor| -> Result<bool> {
            let real = valid.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            Ok(real as usize == valid.elem_count())
        };
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let keys = self
                .key_valid
                .as_ref()
                .map(|v| valid_rows(v, i))
                .transpose()?;
            let mut layers = Vec::with_capacity(self.layers.len());
            for layer in &self.layers {
                let pick = |t: &Tensor, rows: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, i, 1)?.contiguous()?.index_select(rows, 2)?)
                };
                let prefix = match &layer.prefix {
                    // One item whose rows are all real: the same tensors, not a copy (a server's
                    // audio cache then shares one clip's LAL keys with every request about it).
                    Some(p) if b == 1 && all_valid(&p.valid)? => Some(KeyValuePrefix {
                        stacked: None,
                        ..p.clone()
                    }),
                    Some(p) if p.packed.is_some() => {
                        let item = p.packed.as_ref().expect("matched")[i].clone();
                        let keys = placeholder(&p.k, 1, item.rows())?;
                        Some(KeyValuePrefix {
                            k: keys.clone(),
                            v: keys,
                            valid: Tensor::ones(
                                (1, item.rows()),
                                p.valid.dtype(),
                                p.valid.device(),
                            )?,
                            stacked: None,
                            own_softmax: p.own_softmax,
                            packed: Some(vec![item]),
                        })
                    }
                    Some(p) => {
                        let rows = valid_rows(&p.valid, i)?;
                        let n = rows.dims()[0];
                        Some(KeyValuePrefix {
                            k: pick(&p.k, &rows)?,
                            v: pick(&p.v, &rows)?,
                            valid: Tensor::ones((1, n), p.valid.dtype(), p.valid.device())?,
                            stacked: None,
                            own_softmax: p.own_softmax,
                            packed: None,
                        })
                    }
                    None => None,
                };
                let (k, v) = match (&layer.k, &layer.v, &keys) {
                    (Some(k), Some(v), Some(rows)) => (Some(pick(k, rows)?), Some(pick(v, rows)?)),
                    _ => (None, None),
                };
                layers.push(LayerCache {
                    prefix,
                    k,
                    v,
                    ..Default::default()
                });
            }
            let key_valid = match (&self.key_valid, &keys) {
                (Some(v), Some(rows)) => {
                    Some(Tensor::ones((1, rows.dims()[0]), v.dtype(), v.device())?)
                }
                _ => None,
            };
            out.push(KvCache {
                layers,
                key_valid,
                next_position: vec![self.next_position[i]],
            });
        }
        Ok(out)
    }
}
