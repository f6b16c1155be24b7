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
    let shape = (kv_heads, m, head_dim);
    prefix_attention_on(chosen(), q, shape, prefix, own, scale, prefix_own_softmax)
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

/// [`prefix_attention`] on `kernel` (available, not the portable one). Flash-decoding's
/// arithmetic: each chunk of keys gives, per query row, its largest score, the sum of its
/// scores' exponentials after that one, and those exponentials times the values; the chunks
/// and the own keys are then combined row by row.
fn prefix_attention_on(
    kernel: Bf16Kernel,
    q: &[f32],
    (kv_heads, m, head_dim): (usize, usize, usize),
    prefix: &PackedPrefix,
    own: &OwnKeys,
    scale: f32,
    prefix_own_softmax: bool,
) -> Vec<f32> {
    assert!(
        kernel != Bf16Kernel::Portable && kernel.available(),
        "prefix attention needs a bf16 kernel"
    );
    assert_eq!(
        q.len(),
        kv_heads * m * head_dim,
        "prefix attention: q's shape"
    );
    for run in &prefix.runs {
        assert!(
            run.keys.len() == kv_heads
                && run.keys.iter().all(|k| k.k == head_dim)
                && run.values.iter().all(|v| v.n == head_dim),
            "prefix attention: a run packed for other heads than the queries'"
        );
    }
    let rows = row_tiles(m) * TILE_ROWS;
    let q_tiles = head_dim.div_ceil(TILE_K);
    // The queries, scaled, packed per head.
    let per_head = row_tiles(m) * q_tiles * TILE;
    let mut packed_q = vec![0u16; kv_heads * per_head];
    for (h, out) in packed_q.chunks_mut(per_head).enumerate() {
        let scaled: Vec<f32> = q[h * m * head_dim..(h + 1) * m * head_dim]
            .iter()
            .map(|x| x * scale)
            .collect();
        pack_rows(&scaled, m, head_dim, q_tiles, 0..rows, out);
    }
    let chunks = chunks(prefix, kv_heads);
    let ldc = head_dim.div_ceil(32) * 32;
    // Per chunk and query row: the largest score, the sum of exponentials, the output.
    let mut maxes = vec![f32::NEG_INFINITY; chunks.len() * m];
    let mut sums = vec![0f32; chunks.len() * m];
    let mut outs = vec![0f32; chunks.len() * m * head_dim];
    {
        let shared = (
            SharedMut(maxes.as_mut_ptr()),
            SharedMut(sums.as_mut_ptr()),
            SharedMut(outs.as_mut_ptr()),
        );
        let (shared, chunks, packed_q) = (&shared, &chunks, &packed_q);
        column_parts(chunks.len(), 1, |part| {
            let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
            let Scratch {
                scores,
                packed_p,
                out,
            } = &mut scratch;
            scores.resize(rows * SCORE_STRIDE, 0.0);
            packed_p.resize(rows * CHUNK_PAIRS * 32, 0);
            out.resize(rows * ldc, 0.0);
            let mut parts = vec![];
            // SAFETY: the kernel is available (asserted); every tile read lies inside its
            // buffer (pairs and tiles counted from the runs' own shapes); each unit writes only
            // its chunk's rows of `maxes`, `sums` and `outs`.
            unsafe {
                let blocks = Blocks::start(kernel);
                for u in part {
                    let chunk = &chunks[u];
                    let h = chunk.head;
                    let q_h = &packed_q[h * per_head..(h + 1) * per_head];
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
                                );
                            }
                        }
                    }
                    let max = std::slice::from_raw_parts_mut(shared.0 .0.add(u * m), m);
                    let sum = std::slice::from_raw_parts_mut(shared.1 .0.add(u * m), m);
                    let p_tiles = width / TILE_K;
                    let real = real_columns(&chunk.segments);
                    for r in 0..rows {
                        let at = packed_p
                            [(r / TILE_ROWS * p_tiles * TILE + r % TILE_ROWS * TILE_K)..]
                            .as_mut_ptr();
                        if r < m {
                            (max[r], sum[r]) =
                                softmax_row(scores[r * SCORE_STRIDE..].as_ptr(), &real, at);
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
                            );
                        }
                    }
                    let dst = std::slice::from_raw_parts_mut(
                        shared.2 .0.add(u * m * head_dim),
                        m * head_dim,
                    );
                    for (r, d) in dst.chunks_mut(head_dim).enumerate() {
                        d.copy_from_slice(&out[r * ldc..r * ldc + head_dim]);
                    }
                }
            }
            SCRATCH.set(scratch);
        });
    }
    // The chunks of each head, and its own keys, combined row by row.
    let n = own.n;
    let mut result = vec![0f32; kv_heads * m * head_dim];
    let mut own_row = vec![0f32; n];
    for h in 0..kv_heads {
        let units: Vec<usize> = (0..chunks.len()).filter(|&u| chunks[u].head == h).collect();
        let own_values = &own.values[h * n * head_dim..(h + 1) * n * head_dim];
        for r in 0..m {
            let o = &mut result[(h * m + r) * head_dim..(h * m + r + 1) * head_dim];
            // The prefix: its output and sum after its largest score.
            let largest = units
                .iter()
                .map(|&u| maxes[u * m + r])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut prefix_sum = 0f32;
            let mut prefix_out = vec![0f32; head_dim];
            if largest > f32::NEG_INFINITY {
                for &u in &units {
                    let w = (maxes[u * m + r] - largest).exp_fast();
                    prefix_sum += w * sums[u * m + r];
                    let part = &outs[(u * m + r) * head_dim..(u * m + r + 1) * head_dim];
                    for (a, &x) in prefix_out.iter_mut().zip(part) {
                        *a += w * x;
                    }
                }
            }
            // The own keys, the same way.
            own_row.copy_from_slice(&own.scores[(h * m + r) * n..(h * m + r + 1) * n]);
            let own_largest = if n == 0 {
                f32::NEG_INFINITY
            } else {
                lane_max(&own_row)
            };
            let mut own_sum = 0f32;
            let mut own_out = vec![0f32; head_dim];
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
            let (wp, wo) = if prefix_own_softmax {
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
/// As there; a bf16 kernel other than the portable one is available (every such CPU has the
/// instructions it needs).
unsafe fn softmax_row(row: *const f32, real: &[u8], out: *mut u16) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    return super::x86::softmax_row_avx512(row, real, out);
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

/// The block kernel of one pool part (AMX tiles configured for its thread while it lives).
struct Blocks {
    kernel: Bf16Kernel,
}

impl Blocks {
    /// # Safety
    /// `kernel` is available on this CPU.
    unsafe fn start(kernel: Bf16Kernel) -> Self {
        #[cfg(target_arch = "x86_64")]
        if kernel == Bf16Kernel::Amx {
            super::x86::amx_configure();
        }
        Self { kernel }
    }

    /// A 32 x 32 block: see [`super::x86::Block`].
    ///
    /// # Safety
    /// As [`super::x86::amx_block`].
    #[allow(unused_variables)]
    unsafe fn run(
        &self,
        a: [*const u16; 2],
        b: [*const u16; 2],
        k_tiles: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let block = super::x86::Block {
                a,
                b,
                k_tiles,
                c,
                ldc,
                accumulate,
            };
            match self.kernel {
                Bf16Kernel::Amx => super::x86::amx_block(&block),
                _ => super::x86::avx512_block(&block),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("only the portable bf16 kernel exists off x86-64")
    }
}

impl Blocks {
    /// A 32 x 32 block written at `c`: the sum of the products of `parts` (`(a, b, k_tiles)`
    /// each, as [`Self::run`]'s).
    ///
    /// # Safety
    /// As [`Self::run`], for every part.
    unsafe fn run_sum(
        &self,
        parts: &[([*const u16; 2], [*const u16; 2], usize)],
        c: *mut f32,
        ldc: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Bf16Kernel::Amx {
            return super::x86::amx_block_sum(parts, c, ldc);
        }
        for (i, &(a, b, k_tiles)) in parts.iter().enumerate() {
            self.run(a, b, k_tiles, c, ldc, i > 0);
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Bf16Kernel::Amx {
            // SAFETY: configured in `start` on this thread.
            unsafe { super::x86::amx_release() };
        }
    }
}

#[cfg(test)]
mod tests {
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
        let (kv_heads, head_dim, m) = (2, 64, 37);
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
            let kernels = [Bf16Kernel::Avx512, Bf16Kernel::Amx];
            for (kernel, apart) in kernels
                .into_iter()
                .filter(|k| k.available())
                .flat_map(|k| [(k, false), (k, true)])
            {
                let shape = (kv_heads, m, head_dim);
                let got = prefix_attention_on(kernel, &q, shape, &prefix, &own, 0.125, apart);
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
                            "{kernel:?} n {n} apart {apart}: {g} vs {w}"
                        );
                    }
                }
            }
        }
        // No prefix at all: attention over the own keys alone.
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
        let two = prefix.first_rows(52).expect("two runs");
        assert_eq!(two.runs.len(), 2);
        assert!(prefix.first_rows(50).is_none());
    }
}
