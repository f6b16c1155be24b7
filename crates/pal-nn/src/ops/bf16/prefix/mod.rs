//! Attention over a long key prefix (LAL's audio keys: thousands of rows per layer for a
//! recording of minutes) in bf16 on the CPU's bf16 kernels, f32 accumulation: what a question
//! about a long recording spends its prefill on.
//!
//! The prefix is packed once, as it is computed ([`PackedRun`]: a window's keys as the weight of
//! `q K^T`, its values as the weight of `P V`, per key/value head), and a prefix is the runs in
//! order ([`PackedPrefix`]): a clip growing window by window appends a run and shares the
//! earlier ones with every question already asked about it; nothing is repacked per question.
//! A question's queries attend over the prefix and over its own keys (f32, few): the scores of
//! both go through one softmax (or one each, for a gated prefix), and the output sums both
//! parts. Scores and probabilities are f32; the queries and probabilities are rounded to bf16
//! as they are packed, as the backbone's products round their inputs.

use std::sync::Arc;

use super::cpu::{chosen, Bf16Kernel};
use super::pack::{pack_rows, row_tiles, PackedWeight, TILE, TILE_K, TILE_ROWS};
use super::Blocks;
use crate::ops::{column_parts, lane_max, Exp, SharedMut};

/// One run of a prefix's rows (a window's), packed per key/value head.
pub struct PackedRun {
    rows: usize,
    /// Per head: the keys as the weight of `q K^T` (`n` = rows, `k` = head_dim).
    keys: Vec<PackedWeight>,
    /// Per head: the values as the weight of `P V` (`n` = head_dim, `k` = rows).
    values: Vec<PackedWeight>,
}

impl PackedRun {
    /// Packs keys and values given as `(kv_heads, rows, head_dim)` row-major f32.
    pub fn new(k: &[f32], v: &[f32], kv_heads: usize, rows: usize, head_dim: usize) -> Self {
        assert_eq!(
            k.len(),
            kv_heads * rows * head_dim,
            "packed run: keys' shape"
        );
        assert_eq!(v.len(), k.len(), "packed run: values' shape");
        let per_head = rows * head_dim;
        let keys = (0..kv_heads)
            .map(|h| PackedWeight::new(&k[h * per_head..], rows, head_dim, head_dim, 1))
            .collect();
        let values = (0..kv_heads)
            .map(|h| PackedWeight::new(&v[h * per_head..], head_dim, rows, 1, head_dim))
            .collect();
        Self { rows, keys, values }
    }

    /// Rows packed.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|w| w.bytes())
            .sum()
    }

    /// Score columns the run takes (its rows rounded up to whole column pairs, 32).
    fn width(&self) -> usize {
        self.keys[0].n_blocks * TILE_ROWS
    }
}

/// A prefix's keys and values packed for the bf16 kernels: its runs, in order (a clone shares
/// them).
#[derive(Clone, Default)]
pub struct PackedPrefix {
    /// The runs, in row order.
    pub runs: Vec<Arc<PackedRun>>,
}

impl std::fmt::Debug for PackedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedPrefix({} rows in {} runs)",
            self.rows(),
            self.runs.len()
        )
    }
}

impl PackedPrefix {
    /// Rows over all runs.
    pub fn rows(&self) -> usize {
        self.runs.iter().map(|r| r.rows).sum()
    }

    /// Bytes held by its runs.
    pub fn bytes(&self) -> usize {
        self.runs.iter().map(|r| r.bytes()).sum()
    }

    /// The first runs holding `rows` rows exactly, or `None` when a run would be cut.
    pub fn first_rows(&self, rows: usize) -> Option<Self> {
        let mut taken = 0;
        let mut runs = vec![];
        for run in &self.runs {
            if taken == rows {
                break;
            }
            taken += run.rows;
            runs.push(run.clone());
        }
        (taken == rows).then_some(Self { runs })
    }
}

/// Whether [`prefix_attention`] runs on this CPU (a bf16 kernel other than the portable one).
pub fn available() -> bool {
    chosen() != Bf16Kernel::Portable
}

/// The own keys of a question: its queries' scores against them and their values, f32.
#[derive(Clone, Copy)]
pub struct OwnKeys<'a> {
    /// Scores `(kv_heads, m, n)` already scaled and masked (`m` = group x query rows).
    pub scores: &'a [f32],
    /// Values `(kv_heads, n, head_dim)`.
    pub values: &'a [f32],
    /// Own keys `n`.
    pub n: usize,
}

/// Attention of the folded queries `q` (`(kv_heads, m, head_dim)`, f32, `m` = group x query
/// rows: the query heads of a group folded into the rows) over `prefix` and `own`: scores
/// `scale q K^T` on the prefix, one softmax over both parts (or one each when
/// `prefix_own_softmax`), outputs `(kv_heads, m, head_dim)`. Runs on the bf16 kernel the CPU
/// has ([`available`] must hold).
pub fn prefix_attention(
    q: &[f32],
    (kv_heads, m, head_dim): (usize, usize, usize),
    prefix: &PackedPrefix,
    own: &OwnKeys,
    scale: f32,
    prefix_own_softmax: bool,
) -> Vec<f32> {
    let query = PrefixQuery {
        q,
        m,
        prefix,
        own: *own,
        prefix_own_softmax,
    };
    let shape = (kv_heads, head_dim);
    prefix_attention_on(chosen(), std::slice::from_ref(&query), shape, scale).remove(0)
}

/// One query of [`prefix_attention_batch`]: as [`prefix_attention`]'s arguments.
pub struct PrefixQuery<'a> {
    /// Folded queries `(kv_heads, m, head_dim)`.
    pub q: &'a [f32],
    /// Their rows (group x query rows).
    pub m: usize,
    /// The prefix they attend over.
    pub prefix: &'a PackedPrefix,
    /// Their own keys.
    pub own: OwnKeys<'a>,
    /// Whether the prefix has a softmax of its own.
    pub prefix_own_softmax: bool,
}

/// [`prefix_attention`] of several queries (decoding sequences, each over its own prefix), their
/// chunks in one dispatch of the pool; each query's arithmetic is the one it gets alone.
pub fn prefix_attention_batch(
    queries: &[PrefixQuery],
    (kv_heads, head_dim): (usize, usize),
    scale: f32,
) -> Vec<Vec<f32>> {
    prefix_attention_on(chosen(), queries, (kv_heads, head_dim), scale)
}

/// A pool thread's buffers for its chunks (kept between calls: a question's 15 layers would
/// otherwise allocate and fault in a megabyte each, per thread).
#[derive(Default)]
struct Scratch {
    /// A chunk's scores, rows [`SCORE_STRIDE`] apart.
    scores: Vec<f32>,
    /// Its softmax numerators, packed as the activation tiles of `P V`.
    packed_p: Vec<u16>,
    /// Its output rows.
    out: Vec<f32>,
}

impl Scratch {
    fn bytes(&self) -> usize {
        4 * (self.scores.capacity() + self.out.capacity()) + 2 * self.packed_p.capacity()
    }
}

/// Most bytes of scratch a thread keeps between calls (enough for about 650 folded rows: a
/// prompt of 200 rows with three query heads per key head).
const SCRATCH_KEPT: usize = 4 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Column pairs (32 keys each) of one unit of work: a head's queries against this many keys,
/// their scores (a few hundred KiB) staying in the core's cache from product to softmax to
/// values.
const CHUNK_PAIRS: usize = 32;

/// Consecutive column pairs of one run, inside a chunk.
struct Segment {
    run: usize,
    /// The run's first column pair taken.
    first_pair: usize,
    pairs: usize,
    /// Its first column in the chunk.
    column: usize,
    /// Its columns that are real keys (the run's last pair may end in padding).
    real: usize,
}

/// A unit of work: one head's queries against consecutive keys of the prefix.
struct Chunk {
    head: usize,
    segments: Vec<Segment>,
    pairs: usize,
}

/// The prefix's keys cut into chunks of at most [`CHUNK_PAIRS`] column pairs, head by head.
fn chunks(prefix: &PackedPrefix, kv_heads: usize) -> Vec<Chunk> {
    let mut chunks = vec![];
    for head in 0..kv_heads {
        let mut chunk = Chunk {
            head,
            segments: vec![],
            pairs: 0,
        };
        for (r, run) in prefix.runs.iter().enumerate() {
            let run_pairs = run.width() / 32;
            let mut first_pair = 0;
            while first_pair < run_pairs {
                if chunk.pairs == CHUNK_PAIRS {
                    let full = std::mem::take(&mut chunk.segments);
                    chunks.push(Chunk {
                        head,
                        segments: full,
                        pairs: CHUNK_PAIRS,
                    });
                    chunk.pairs = 0;
                }
                let pairs = (run_pairs - first_pair).min(CHUNK_PAIRS - chunk.pairs);
                chunk.segments.push(Segment {
                    run: r,
                    first_pair,
                    pairs,
                    column: chunk.pairs * 32,
                    real: run.rows.saturating_sub(first_pair * 32).min(pairs * 32),
                });
                chunk.pairs += pairs;
                first_pair += pairs;
            }
        }
        if chunk.pairs > 0 {
            chunks.push(chunk);
        }
    }
    chunks
}

/// Per 32-column tile of a chunk, how many of its columns are real keys (the first ones; a run's
/// last pair may end in padding).
fn real_columns(segments: &[Segment]) -> Vec<u8> {
    let mut real = vec![];
    for s in segments {
        for t in 0..s.pairs {
            real.push(s.real.saturating_sub(32 * t).min(32) as u8);
        }
    }
    real
}

/// Floats between two query rows' scores: a chunk's columns and one cache line more, so that
/// the rows of a tile stored at once do not all fall in the same cache set (4 KiB apart).
const SCORE_STRIDE: usize = CHUNK_PAIRS * 32 + 16;

/// One query's queries packed for the kernel, and its prefix cut into chunks.
struct Prepared {
    /// Scaled queries, packed per head (`per_head` values each).
    packed_q: Vec<u16>,
    per_head: usize,
    /// Rows the tiles take (`m` padded to whole row pairs).
    rows: usize,
    chunks: Vec<Chunk>,
    /// Its first unit of work (units are the queries' chunks in order).
    first_unit: usize,
}

/// [`prefix_attention_batch`] on `kernel` (available, not the portable one). Flash-decoding's
/// arithmetic: each chunk of keys gives, per query row, its largest score, the sum of its
/// scores' exponentials after that one, and those exponentials times the values; the chunks
/// (of every query, in one dispatch of the pool) and the own keys are then combined row by row.
fn prefix_attention_on(
    kernel: Bf16Kernel,
    queries: &[PrefixQuery],
    (kv_heads, head_dim): (usize, usize),
    scale: f32,
) -> Vec<Vec<f32>> {
    assert!(
        kernel != Bf16Kernel::Portable && kernel.available(),
        "prefix attention needs a bf16 kernel"
    );
    let q_tiles = head_dim.div_ceil(TILE_K);
    let mut prepared = Vec::with_capacity(queries.len());
    // Per unit: its query, its chunk, and where its rows start in `maxes`, `sums`, `outs`.
    let mut units: Vec<(usize, usize, usize)> = vec![];
    let mut unit_rows = 0;
    for (i, query) in queries.iter().enumerate() {
        let m = query.m;
        assert_eq!(
            query.q.len(),
            kv_heads * m * head_dim,
            "prefix attention: q's shape"
        );
        for run in &query.prefix.runs {
            assert!(
                run.keys.len() == kv_heads
                    && run.keys.iter().all(|k| k.k == head_dim)
                    && run.values.iter().all(|v| v.n == head_dim),
                "prefix attention: a run packed for other heads than the queries'"
            );
        }
        let rows = row_tiles(m) * TILE_ROWS;
        let per_head = row_tiles(m) * q_tiles * TILE;
        let mut packed_q = vec![0u16; kv_heads * per_head];
        for (h, out) in packed_q.chunks_mut(per_head).enumerate() {
            let scaled: Vec<f32> = query.q[h * m * head_dim..(h + 1) * m * head_dim]
                .iter()
                .map(|x| x * scale)
                .collect();
            pack_rows(&scaled, m, head_dim, q_tiles, 0..rows, out);
        }
        let chunks = chunks(query.prefix, kv_heads);
        let first_unit = units.len();
        for c in 0..chunks.len() {
            units.push((i, c, unit_rows));
            unit_rows += m;
        }
        prepared.push(Prepared {
            packed_q,
            per_head,
            rows,
            chunks,
            first_unit,
        });
    }
    let ldc = head_dim.div_ceil(32) * 32;
    let most_rows = prepared.iter().map(|p| p.rows).max().unwrap_or(0);
    // Per unit and query row: the largest score, the sum of exponentials, the output.
    let mut maxes = vec![f32::NEG_INFINITY; unit_rows];
    let mut sums = vec![0f32; unit_rows];
    let mut outs = vec![0f32; unit_rows * head_dim];
    {
        let shared = (
            SharedMut(maxes.as_mut_ptr()),
            SharedMut(sums.as_mut_ptr()),
            SharedMut(outs.as_mut_ptr()),
        );
        let (shared, units, prepared) = (&shared, &units, &prepared);
        column_parts(units.len(), 1, |part| {
            let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
            let Scratch {
                scores,
                packed_p,
                out,
            } = &mut scratch;
            let grow = |v: &mut Vec<_>, n, zero| {
                if v.len() < n {
                    v.resize(n, zero);
                }
            };
            grow(scores, most_rows * SCORE_STRIDE, 0.0);
            grow(out, most_rows * ldc, 0.0);
            if packed_p.len() < most_rows * CHUNK_PAIRS * 32 {
                packed_p.resize(most_rows * CHUNK_PAIRS * 32, 0);
            }
            let mut parts = vec![];
            // SAFETY: the kernel is available (asserted); every tile read lies inside its
            // buffer (pairs and tiles counted from the runs' own shapes); each unit writes only
            // its own rows of `maxes`, `sums` and `outs`.
            unsafe {
                let blocks = Blocks::start(kernel);
                for u in part {
                    let (i, c, first_row) = units[u];
                    let (query, prep) = (&queries[i], &prepared[i]);
                    let (m, rows, prefix) = (query.m, prep.rows, query.prefix);
                    let chunk = &prep.chunks[c];
                    let h = chunk.head;
                    let q_h = &prep.packed_q[h * prep.per_head..(h + 1) * prep.per_head];
                    let width = chunk.pairs * 32;
                    for seg in &chunk.segments {
                        let keys = &prefix.runs[seg.run].keys[h];
                        for p in 0..seg.pairs {
                            for row_pair in 0..rows / 32 {
                                blocks.run(
                                    tile_pair(q_h, row_pair, q_tiles, 0),
                                    tile_pair(&keys.tiles, seg.first_pair + p, keys.k_tiles, 0),
                                    keys.k_tiles,
                                    scores
                                        .as_mut_ptr()
                                        .add(row_pair * 32 * SCORE_STRIDE + seg.column + 32 * p),
                                    SCORE_STRIDE,
                                    false,
                                    m.saturating_sub(row_pair * 32),
                                );
                            }
                        }
                    }
                    let max = std::slice::from_raw_parts_mut(shared.0 .0.add(first_row), m);
                    let sum = std::slice::from_raw_parts_mut(shared.1 .0.add(first_row), m);
                    let p_tiles = width / TILE_K;
                    let real = real_columns(&chunk.segments);
                    for r in 0..rows {
                        let at = packed_p
                            [(r / TILE_ROWS * p_tiles * TILE + r % TILE_ROWS * TILE_K)..]
                            .as_mut_ptr();
                        if r < m {
                            (max[r], sum[r]) =
                                softmax_row(kernel, scores[r * SCORE_STRIDE..].as_ptr(), &real, at);
                        } else {
                            // Padding rows: no weight.
                            for t in 0..p_tiles {
                                std::ptr::write_bytes(at.add(t * TILE), 0, TILE_K);
                            }
                        }
                    }
                    for pair in 0..ldc / 32 {
                        for row_pair in 0..rows / 32 {
                            parts.clear();
                            parts.extend(chunk.segments.iter().map(|seg| {
                                let values = &prefix.runs[seg.run].values[h];
                                (
                                    tile_pair(packed_p, row_pair, p_tiles, seg.column / 32),
                                    tile_pair(&values.tiles, pair, values.k_tiles, seg.first_pair),
                                    seg.pairs,
                                )
                            }));
                            blocks.run_sum(
                                &parts,
                                out.as_mut_ptr().add(row_pair * 32 * ldc + pair * 32),
                                ldc,
                                m.saturating_sub(row_pair * 32),
                            );
                        }
                    }
                    let dst = std::slice::from_raw_parts_mut(
                        shared.2 .0.add(first_row * head_dim),
                        m * head_dim,
                    );
                    for (r, d) in dst.chunks_mut(head_dim).enumerate() {
                        d.copy_from_slice(&out[r * ldc..r * ldc + head_dim]);
                    }
                }
            }
            // Kept for the next call unless a long prompt made it big.
            if scratch.bytes() <= SCRATCH_KEPT {
                SCRATCH.set(scratch);
            }
        });
    }
    queries
        .iter()
        .zip(&prepared)
        .map(|(query, prep)| {
            let units = &units[prep.first_unit..prep.first_unit + prep.chunks.len()];
            combine(
                query,
                prep,
                units,
                (&maxes, &sums, &outs),
                (kv_heads, head_dim),
            )
        })
        .collect()
}

/// One query's outputs `(kv_heads, m, head_dim)`: its chunks (`units`, with their rows in
/// `maxes`, `sums`, `outs`) and its own keys combined row by row.
fn combine(
    query: &PrefixQuery,
    prep: &Prepared,
    units: &[(usize, usize, usize)],
    (maxes, sums, outs): (&[f32], &[f32], &[f32]),
    (kv_heads, head_dim): (usize, usize),
) -> Vec<f32> {
    let (m, own, n) = (query.m, &query.own, query.own.n);
    let mut result = vec![0f32; kv_heads * m * head_dim];
    let mut prefix_out = vec![0f32; head_dim];
    let mut own_out = vec![0f32; head_dim];
    for h in 0..kv_heads {
        // This head's chunks: where their rows start.
        let firsts: Vec<usize> = units
            .iter()
            .filter(|&&(_, c, _)| prep.chunks[c].head == h)
            .map(|&(_, _, first)| first)
            .collect();
        let own_values = &own.values[h * n * head_dim..(h + 1) * n * head_dim];
        for r in 0..m {
            let o = &mut result[(h * m + r) * head_dim..(h * m + r + 1) * head_dim];
            // The prefix: its output and sum after its largest score.
            let largest = firsts
                .iter()
                .map(|&f| maxes[f + r])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut prefix_sum = 0f32;
            prefix_out.fill(0.0);
            if largest > f32::NEG_INFINITY {
                for &f in &firsts {
                    let w = (maxes[f + r] - largest).exp_fast();
                    prefix_sum += w * sums[f + r];
                    let part = &outs[(f + r) * head_dim..(f + r + 1) * head_dim];
                    for (a, &x) in prefix_out.iter_mut().zip(part) {
                        *a += w * x;
                    }
                }
            }
            // The own keys, the same way.
            let own_row = &own.scores[(h * m + r) * n..(h * m + r + 1) * n];
            let own_largest = if n == 0 {
                f32::NEG_INFINITY
            } else {
                lane_max(own_row)
            };
            let mut own_sum = 0f32;
            own_out.fill(0.0);
            if own_largest > f32::NEG_INFINITY {
                for (j, s) in own_row.iter().enumerate() {
                    let e = (s - own_largest).exp_fast();
                    own_sum += e;
                    for (a, &v) in own_out.iter_mut().zip(&own_values[j * head_dim..]) {
                        *a += e * v;
                    }
                }
            }
            let inverse = |sum: f32| if sum > 0.0 { 1.0 / sum } else { 0.0 };
            let (wp, wo) = if query.prefix_own_softmax {
                (inverse(prefix_sum), inverse(own_sum))
            } else {
                let top = largest.max(own_largest);
                let (ep, eo) = if top == f32::NEG_INFINITY {
                    (0.0, 0.0)
                } else {
                    ((largest - top).exp_fast(), (own_largest - top).exp_fast())
                };
                let total = inverse(ep * prefix_sum + eo * own_sum);
                (ep * total, eo * total)
            };
            for ((o, p), w) in o.iter_mut().zip(&prefix_out).zip(&own_out) {
                *o = wp * p + wo * w;
            }
        }
    }
    result
}

/// One query row of a chunk's scores as softmax numerators packed for `P V`: see
/// [`super::x86::softmax_row_avx512`].
///
/// # Safety
/// As there; `kernel` is available and not the portable one (every CPU that has it has the
/// instructions its softmax needs).
unsafe fn softmax_row(
    kernel: Bf16Kernel,
    row: *const f32,
    real: &[u8],
    out: *mut u16,
) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    return match kernel {
        Bf16Kernel::Avx2 => super::avx2::softmax_row_avx2(row, real, out),
        _ => super::x86::softmax_row_avx512(row, real, out),
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("only the portable bf16 kernel exists off x86-64")
}

/// The first tiles of the two 16-row (or 16-column) halves of pair `pair`, `first` tiles along
/// `k` in, in a buffer laid out `[halves][k_tiles][TILE]`.
fn tile_pair(tiles: &[u16], pair: usize, k_tiles: usize, first: usize) -> [*const u16; 2] {
    [
        tiles[(2 * pair * k_tiles + first) * TILE..].as_ptr(),
        tiles[((2 * pair + 1) * k_tiles + first) * TILE..].as_ptr(),
    ]
}

#[cfg(test)]
mod tests;
