//! `pal probe attention`: where in the LLM the audio is read. For one clip and one question, the
//! model answers greedily; then prompt and answer run through the LLM once more with every
//! layer's attention probabilities kept, and for each layer the text queries' attention is split
//! into three shares: LAL audio keys, in-sequence audio tokens (PLITS, PAL summary) and text.
//! The queries are the text rows after the clip (the rest of the question, the chat template's
//! assistant header and the answer), which can see the clip in every mode. The three shares of
//! each query sum to 1; the table gives their mean over the queries and the heads. At a gated LAL
//! layer (`gate = true`), audio and text have a softmax each, and the audio's is weighted by the
//! layer's gate `|tanh g|` for that key/value head: the shares are the two weights, normalised.

use std::collections::BTreeMap;

use std::path::Path;

use candle_core::{DType, Tensor};
use pal_infer::{generate_with_audio, ChatTemplate, GenerationParams, Message};
use pal_models::audio_llm::{BuiltModel, Example, Padding};
use pal_models::text::Segment;
use plotters::prelude::*;
use serde::Serialize;

/// The attention shares of one LLM layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerShares {
    /// The layer index.
    pub layer: usize,
    /// Whether the layer has LAL audio keys.
    pub lal_layer: bool,
    /// Share of the attention on LAL audio keys.
    pub lal_audio: f64,
    /// Share on the clip's in-sequence tokens.
    pub sequence_audio: f64,
    /// Share on text (the system prompt, the question and the answer so far).
    pub text: f64,
    /// The largest deviation of a single query's three shares from summing to 1 (a check).
    pub max_sum_error: f64,
}

/// What `pal probe attention` measured.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionReport {
    /// The question asked.
    pub question: String,
    /// The model's greedy answer.
    pub answer: String,
    /// Audio rows: LAL keys per LAL layer, and in-sequence tokens.
    pub lal_rows: usize,
    /// See `lal_rows`.
    pub sequence_audio_rows: usize,
    /// Text query rows the shares are averaged over.
    pub query_rows: usize,
    /// One entry per LLM layer.
    pub layers: Vec<LayerShares>,
}

/// Answers `question` about a clip already encoded (`audio`, one output per encoder) and
/// measures each layer's attention shares over the answer and the question after the clip.
/// The model must attend its LAL prefixes in f32 (`bf16_prefix` off): the bf16 prefix kernel
/// keeps no probabilities.
pub fn attention_shares(
    built: &BuiltModel,
    audio: Vec<Tensor>,
    question: &str,
    max_tokens: usize,
) -> anyhow::Result<AttentionReport> {
    let model = &built.model;
    anyhow::ensure!(
        !model.llm.bf16_prefix,
        "attention shares need the LAL prefixes attended in f32 (bf16_prefix off)"
    );
    let template = ChatTemplate::for_tokenizer(&built.tokenizer)?;
    let mut segments = pal_models::text::segments::prompt_segments(
        &template,
        &built.tokenizer,
        &[Message::new("user", question)],
    )?;
    let params = GenerationParams {
        max_tokens,
        temperature: 0.0,
        ..GenerationParams::default()
    };
    let example = Example::one_clip(segments.clone(), audio.clone());
    let answer =
        generate_with_audio(model, &built.tokenizer, &[example], &params, |_, _| {})?.remove(0);
    segments.push(Segment::Text {
        ids: answer.tokens.clone(),
        trained: false,
    });

    // The sequence: text before the clip, the clip's in-sequence tokens, text after.
    let text_before: usize = segments
        .iter()
        .take_while(|s| !matches!(s, Segment::Audio))
        .map(|s| match s {
            Segment::Text { ids, .. } => ids.len(),
            Segment::Audio => 0,
        })
        .sum();
    let sequence_audio_rows: usize = model
        .encoders
        .iter()
        .zip(&audio)
        .filter_map(|(e, a)| e.in_sequence.as_ref().map(|c| c.output_len(a.dims()[0])))
        .sum();
    let example = Example::one_clip(segments, audio);
    let mut batch = model.prepare(&[example], Padding::Left)?.detach();
    for layer in &mut batch.cache.layers {
        layer.record_attention = true;
    }
    model
        .llm
        .forward_embeds(&batch.embeds, Some(&batch.valid), &mut batch.cache)?;
    let n = batch.embeds.dims3()?.1;
    let audio_end = text_before + sequence_audio_rows;
    let queries: Vec<usize> = (audio_end..n).collect();
    let gates = gate_values(built)?;
    let mut lal_rows = 0;
    let mut layers = Vec::with_capacity(batch.cache.layers.len());
    for (index, layer) in batch.cache.layers.iter().enumerate() {
        let prefix_rows = layer.prefix.as_ref().map_or(0, |p| p.k.dims()[2]);
        lal_rows = lal_rows.max(prefix_rows);
        let probs = layer
            .attention
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("layer {index} kept no attention probabilities"))?
            .to_dtype(DType::F64)?
            .squeeze(0)?;
        // (kv_heads, group * n, keys): query head g of a group reads rows g * n .. (g + 1) * n.
        let probs = probs.to_vec3::<f64>()?;
        let (mut lal, mut seq, mut text, mut worst, mut count) = (0.0, 0.0, 0.0, 0f64, 0usize);
        let gate = gates.get(&index);
        for (kv_head, group) in probs.iter().enumerate() {
            let heads = group.len() / n;
            // A gated layer's audio softmax sums to 1 on its own; it weighs |tanh g|.
            let audio_weight = match (layer.prefix.as_ref().is_some_and(|p| p.own_softmax), gate) {
                (true, Some(g)) => g[kv_head].abs(),
                _ => 1.0,
            };
            for h in 0..heads {
                for &q in &queries {
                    let row = &group[h * n + q];
                    let a: f64 = audio_weight * row[..prefix_rows].iter().sum::<f64>();
                    let s: f64 = row[prefix_rows + text_before..prefix_rows + audio_end]
                        .iter()
                        .sum();
                    let t: f64 = row[prefix_rows..prefix_rows + text_before]
                        .iter()
                        .chain(&row[prefix_rows + audio_end..])
                        .sum();
                    // Plain attention: a + s + t is 1 already. Gated: the text softmax sums to
                    // 1, so a + s + t is 1 + a before normalising.
                    let total = a + s + t;
                    let expected = if audio_weight == 1.0 && gate.is_none() {
                        1.0
                    } else {
                        1.0 + a
                    };
                    worst = worst.max((total - expected).abs());
                    let (a, s, t) = (a / total, s / total, t / total);
                    (lal, seq, text, count) = (lal + a, seq + s, text + t, count + 1);
                }
            }
        }
        let c = count.max(1) as f64;
        layers.push(LayerShares {
            layer: index,
            lal_layer: prefix_rows > 0,
            lal_audio: lal / c,
            sequence_audio: seq / c,
            text: text / c,
            max_sum_error: worst,
        });
    }
    Ok(AttentionReport {
        question: question.to_string(),
        answer: answer.text,
        lal_rows,
        sequence_audio_rows,
        query_rows: queries.len(),
        layers,
    })
}

/// Per gated LAL layer, `tanh(g)` per key/value head (the mean over gated encoders on the layer).
fn gate_values(built: &BuiltModel) -> anyhow::Result<BTreeMap<usize, Vec<f64>>> {
    let mut sums: BTreeMap<usize, (Vec<f64>, usize)> = BTreeMap::new();
    for enc in &built.model.encoders {
        let Some(lal) = &enc.lal else { continue };
        for (j, &layer) in lal.layers.iter().enumerate() {
            if let Some(g) = lal.gate_values(j)? {
                let g = g.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let entry = sums.entry(layer).or_insert((vec![0.0; g.len()], 0));
                entry.0.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
                entry.1 += 1;
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|(l, (s, n))| (l, s.into_iter().map(|v| v / n as f64).collect()))
        .collect())
}

/// The report as a markdown table, one row per layer.
pub fn markdown(report: &AttentionReport) -> String {
    let mut s = format!(
        "Question: {}\n\nAnswer: {}\n\nAudio: {} LAL keys per LAL layer, {} in-sequence tokens; \
         shares averaged over {} text queries and every head.\n\n\
         | layer | LAL | audio keys (LAL) | audio tokens (in sequence) | text |\n|---|---|---|---|---|\n",
        report.question,
        report.answer.trim(),
        report.lal_rows,
        report.sequence_audio_rows,
        report.query_rows
    );
    for l in &report.layers {
        s += &format!(
            "| {} | {} | {:.1}% | {:.1}% | {:.1}% |\n",
            l.layer,
            if l.lal_layer { "yes" } else { "" },
            100.0 * l.lal_audio,
            100.0 * l.sequence_audio,
            100.0 * l.text
        );
    }
    s
}

/// Picks one of a layer's three shares.
type ShareOf = fn(&LayerShares) -> f64;

/// Draws the shares per layer as three lines into a PNG at `out`.
pub fn plot(report: &AttentionReport, out: &Path) -> anyhow::Result<()> {
    let labels = pal_train::metrics::register_font();
    let root = BitMapBackend::new(out, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let layers = report.layers.len().max(1) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(12)
        .x_label_area_size(if labels { 36 } else { 0 })
        .y_label_area_size(if labels { 50 } else { 0 });
    if labels {
        builder.caption(
            "share of the text queries' attention, per LLM layer",
            ("sans-serif", 18),
        );
    }
    let mut chart = builder
        .build_cartesian_2d(-0.5f64..layers - 0.5, 0.0f64..100.0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc("layer").y_desc("%");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let series: [(&str, RGBColor, ShareOf); 3] = [
        ("audio keys (LAL)", RED, |l| l.lal_audio),
        ("audio tokens (in sequence)", BLUE, |l| l.sequence_audio),
        ("text", BLACK, |l| l.text),
    ];
    for (name, color, value) in series {
        let points: Vec<(f64, f64)> = report
            .layers
            .iter()
            .map(|l| (l.layer as f64, 100.0 * value(l)))
            .collect();
        let drawn = chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if labels {
            drawn
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
