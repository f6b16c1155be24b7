//! A clip encoded window by window as it arrives ([`GrowingClip`]): its keys and values are the
//! ones the whole clip gives, the views lent to a question are never written under by the
//! windows that come after, and audio taken back is gone.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, max_diff};
use pal_models::audio_llm::config::LalRope;
use pal_models::audio_llm::{
    limits, Attachment, AudioLimits, AudioLlm, ClipLal, Example, GrowingClip, Padding, Route,
};
use pal_models::encoders::AudioEncoder;
use pal_models::text::Segment;
use pal_models::{Llama, LlamaConfig, Weights};
use pal_nn::Params;

const D_ENC: usize = 8;
/// Samples per frame of the test encoder.
const HOP: usize = 4;

/// Each 4 samples become one frame (their values spread over the frame's width): outputs of
/// consecutive pieces join into the whole's, as a windowed encoder's do.
struct FrameEncoder;

impl AudioEncoder for FrameEncoder {
    fn id(&self) -> String {
        "frames".into()
    }

    fn dim(&self) -> usize {
        D_ENC
    }

    fn encode(&self, samples: &[f32]) -> pal_models::Result<Tensor> {
        let frames = samples.len().div_ceil(HOP);
        let data: Vec<f32> = (0..frames * D_ENC)
            .map(|i| {
                let (f, j) = (i / D_ENC, i % D_ENC);
                samples.get(f * HOP + j % HOP).copied().unwrap_or(0.0) * (1.0 + j as f32)
            })
            .collect();
        Ok(Tensor::from_vec(data, (frames, D_ENC), &Device::Cpu)?)
    }

    fn window_samples(&self) -> Option<usize> {
        Some(40)
    }
}

fn model(rope: LalRope) -> AudioLlm {
    let dir = fixture("tiny-llama");
    let config = LlamaConfig::from_hf_folder(&dir).unwrap();
    let weights = Weights::from_hf_folder(&dir, DType::F32, &Device::Cpu).unwrap();
    let llm = Llama::load(config, &weights).unwrap();
    let params = Params::new(7, DType::F32, &Device::Cpu);
    let mut a = Attachment::new("enc", D_ENC, Route::Lal);
    a.lal.rope = rope;
    AudioLlm::new(llm, &[a], &params).unwrap()
}

fn audio(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed * 7) * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// The largest difference between two clips' keys and values, layer by layer.
fn lal_diff(a: &ClipLal, b: &ClipLal) -> f64 {
    let (a, b) = (
        a.encoders[0].as_ref().unwrap(),
        b.encoders[0].as_ref().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| max_diff(&x.k, &y.k).max(max_diff(&x.v, &y.v)))
        .fold(0.0, f64::max)
}

fn encoders() -> Vec<Box<dyn AudioEncoder>> {
    vec![Box::new(FrameEncoder)]
}

#[test]
fn windows_then_a_tail_give_the_whole_clips_keys_and_values() {
    for rope in [LalRope::Prefix, LalRope::None] {
        let m = model(rope);
        let encoders = encoders();
        let whole = audio(40 * 60 + 12, 1);
        let mut clip = GrowingClip::new(&m).unwrap();
        // Sixty windows: the buffers grow past their first room (2048 rows) on the way.
        for window in whole[..40 * 60].chunks(40) {
            clip.push(&m, &encoders, window).unwrap();
        }
        let (outputs, grown) = clip.with_tail(&m, &encoders, &whole[40 * 60..]).unwrap();
        let frames = FrameEncoder.encode(&whole).unwrap();
        assert_eq!(max_diff(&outputs[0], &frames), 0.0);
        let once = m.clip_lal(&[frames]).unwrap();
        assert!(
            lal_diff(&grown, &once) < 1e-6,
            "{rope:?}: {}",
            lal_diff(&grown, &once)
        );
    }
}

#[test]
fn a_view_lent_to_a_question_is_never_written_under() {
    let m = model(LalRope::Prefix);
    let encoders = encoders();
    let mut clip = GrowingClip::new(&m).unwrap();
    clip.push(&m, &encoders, &audio(40, 1)).unwrap();
    // A question with a tail: its rows after the window are the tail's.
    let (outputs, asked) = clip.with_tail(&m, &encoders, &audio(20, 2)).unwrap();
    let outputs_before = outputs[0].copy().unwrap();
    let before: Vec<Tensor> = asked.encoders[0]
        .as_ref()
        .unwrap()
        .iter()
        .map(|l| l.k.copy().unwrap())
        .collect();
    // The next window lands where the tail was lent: the question's view must not change.
    clip.push(&m, &encoders, &audio(40, 3)).unwrap();
    for (layer, kept) in asked.encoders[0].as_ref().unwrap().iter().zip(&before) {
        assert_eq!(max_diff(&layer.k, kept), 0.0);
    }
    assert_eq!(max_diff(&outputs[0], &outputs_before), 0.0);
    // And the clip goes on as the two windows make it.
    let (outputs, now) = clip.with_tail(&m, &encoders, &[]).unwrap();
    let mut both = audio(40, 1);
    both.extend(audio(40, 3));
    let frames = FrameEncoder.encode(&both).unwrap();
    assert_eq!(max_diff(&outputs[0], &frames), 0.0);
    let once = m.clip_lal(&[frames]).unwrap();
    assert!(lal_diff(&now, &once) < 1e-6);
}

/// A live session asked as it listens: a question with a tail between windows moves the
/// buffers its tail was lent from, and never grows them past what the windows need.
#[test]
fn questions_between_windows_keep_the_clip_bounded() {
    let m = model(LalRope::Prefix);
    let encoders = encoders();
    let mut asked = GrowingClip::new(&m).unwrap();
    let mut quiet = GrowingClip::new(&m).unwrap();
    for seed in 0..20 {
        if seed > 0 {
            asked.with_tail(&m, &encoders, &audio(20, seed)).unwrap();
        }
        asked.push(&m, &encoders, &audio(40, seed)).unwrap();
        quiet.push(&m, &encoders, &audio(40, seed)).unwrap();
    }
    assert_eq!(asked.bytes(), quiet.bytes());
}

#[test]
fn audio_taken_back_is_gone() {
    let m = model(LalRope::Prefix);
    let encoders = encoders();
    let mut clip = GrowingClip::new(&m).unwrap();
    for seed in 0..3 {
        clip.push(&m, &encoders, &audio(40, seed)).unwrap();
    }
    assert_eq!(clip.truncate(80), 80);
    clip.push(&m, &encoders, &audio(40, 9)).unwrap();
    let (_, grown) = clip.with_tail(&m, &encoders, &[]).unwrap();
    let mut kept: Vec<f32> = (0..2).flat_map(|s| audio(40, s)).collect();
    kept.extend(audio(40, 9));
    let once = m.clip_lal(&[FrameEncoder.encode(&kept).unwrap()]).unwrap();
    assert!(lal_diff(&grown, &once) < 1e-6);
}

#[test]
fn pooled_windows_give_the_pooled_whole_with_half_the_keys() {
    use pal_models::encoders::pooled::PooledEncoder;
    let m = model(LalRope::Prefix);
    // A window is 10 frames, a multiple of the pool: pooled apart equals pooled whole.
    let pooled: Vec<Box<dyn AudioEncoder>> =
        vec![Box::new(PooledEncoder::new(Box::new(FrameEncoder), 2))];
    let whole = audio(40 * 5 + 12, 4);
    let mut clip = GrowingClip::new(&m).unwrap();
    for window in whole[..40 * 5].chunks(40) {
        clip.push(&m, &pooled, window).unwrap();
    }
    let (outputs, grown) = clip.with_tail(&m, &pooled, &whole[40 * 5..]).unwrap();
    let frames = FrameEncoder.encode(&whole).unwrap();
    assert_eq!(
        outputs[0].dim(0).unwrap(),
        frames.dim(0).unwrap().div_ceil(2)
    );
    let once = m.clip_lal(&[pooled[0].encode(&whole).unwrap()]).unwrap();
    assert!(lal_diff(&grown, &once) < 1e-6);
    let keys = grown.encoders[0].as_ref().unwrap()[0].k.dims().to_vec();
    let unpooled = m.clip_lal(&[frames]).unwrap();
    let all_keys = unpooled.encoders[0].as_ref().unwrap()[0].k.dims().to_vec();
    // 53 frames pooled by 2 are 27 keys per layer.
    assert_eq!(
        keys.iter().product::<usize>() * 53,
        all_keys.iter().product::<usize>() * 27
    );
}

/// With attention over the prefix in bf16 ([`pal_models::Llama::bf16_prefix`]), each window's
/// keys and values are packed once, as a run of their own, and kept only so (no f32 copy: the
/// clip holds less than half the bytes); a question gets the runs so far: its logits are f32
/// attention's over the same keys within bf16's rounding, and the whole clip packed at once
/// (one run) gives the windows' logits.
#[test]
fn a_bf16_prefix_is_packed_window_by_window() {
    if !pal_nn::ops::bf16::prefix::available() {
        eprintln!("no bf16 kernel on this CPU: the prefix is attended in f32");
        return;
    }
    let f32_model = model(LalRope::Prefix);
    let mut m = model(LalRope::Prefix);
    m.llm.bf16_prefix = true;
    let encoders = encoders();
    let whole = audio(40 * 30 + 12, 5);
    let grow = |m: &AudioLlm| {
        let mut clip = GrowingClip::new(m).unwrap();
        for window in whole[..40 * 30].chunks(40) {
            clip.push(m, &encoders, window).unwrap();
        }
        let (outputs, lal) = clip.with_tail(m, &encoders, &whole[40 * 30..]).unwrap();
        (clip, outputs, lal)
    };
    let (packed_clip, outputs, grown) = grow(&m);
    let (f32_clip, _, exact_lal) = grow(&f32_model);
    for layer in grown.encoders[0].as_ref().unwrap() {
        let packed = layer.packed.as_ref().expect("windows packed");
        assert_eq!(packed[0].runs.len(), 31);
        assert_eq!(packed[0].rows(), layer.k.dim(2).unwrap());
    }
    // Audio taken back lets its runs go.
    let mut shorter = packed_clip.clone();
    assert_eq!(shorter.truncate(40 * 15), 40 * 15);
    let mut fresh = GrowingClip::new(&m).unwrap();
    for window in whole[..40 * 15].chunks(40) {
        fresh.push(&m, &encoders, window).unwrap();
    }
    assert_eq!(shorter.bytes(), fresh.bytes());
    let (_, half) = shorter.with_tail(&m, &encoders, &[]).unwrap();
    let runs = &half.encoders[0].as_ref().unwrap()[0]
        .packed
        .as_ref()
        .unwrap()[0];
    assert_eq!(runs.runs.len(), 15);
    // Both clips hold the same outputs: the packed one holds less than half of the f32 keys'
    // and values' bytes.
    let f32_keys: usize = exact_lal.encoders[0]
        .as_ref()
        .unwrap()
        .iter()
        .map(|l| 2 * l.k.elem_count() * 4)
        .sum();
    assert!(
        f32_clip.bytes() - packed_clip.bytes() > f32_keys / 2,
        "{} bytes packed, {} in f32, {f32_keys} of f32 keys and values",
        packed_clip.bytes(),
        f32_clip.bytes()
    );
    let text = |ids: &[u32]| Segment::Text {
        ids: ids.to_vec(),
        trained: false,
    };
    let example = Example {
        segments: vec![text(&[7, 8, 9]), Segment::Audio, text(&[10, 11, 12])],
        clips: vec![outputs.clone()],
    };
    let logits = |m: &AudioLlm, lal: &ClipLal| {
        let examples = std::slice::from_ref(&example);
        let mut batch = m
            .prepare_cached(examples, Padding::Left, &[Some(lal)])
            .unwrap();
        m.forward(&mut batch).unwrap()
    };
    let packed = logits(&m, &grown);
    let exact = logits(&f32_model, &exact_lal);
    let scale = exact
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let d = max_diff(&packed, &exact);
    assert!(
        d < 1e-2 * scale,
        "bf16 against f32: {d} (logits up to {scale})"
    );
    // (Not equal: the packed keys were attended, in bf16.)
    assert!(d > 0.0);
    let once = m.clip_lal(&outputs).unwrap();
    let first = &once.encoders[0].as_ref().unwrap()[0];
    assert_eq!(first.packed.as_ref().unwrap()[0].runs.len(), 1);
    let d = max_diff(&logits(&m, &once), &packed);
    assert!(d < 1e-3 * scale, "one run against windows: {d}");
    // The same example prepared without a cached clip packs its keys too: the same logits.
    let mut batch = m
        .prepare(std::slice::from_ref(&example), Padding::Left)
        .unwrap();
    let uncached = m.forward(&mut batch).unwrap();
    assert!(max_diff(&uncached, &logits(&m, &once)) < 1e-5 * scale);
    // In a batch beside a shorter clip (its prefix padded), each item gets its logits alone.
    let short = Example {
        clips: vec![vec![FrameEncoder.encode(&whole[..200]).unwrap()]],
        ..example.clone()
    };
    let both = [example.clone(), short];
    let mut batch = m.prepare(&both, Padding::Left).unwrap();
    let together = m.forward(&mut batch).unwrap();
    for (i, item) in both.iter().enumerate() {
        let mut alone = m
            .prepare(std::slice::from_ref(item), Padding::Left)
            .unwrap();
        let alone = m.forward(&mut alone).unwrap();
        let d = max_diff(&together.narrow(0, i, 1).unwrap(), &alone);
        assert!(d < 1e-5 * scale, "item {i} in a batch: {d}");
    }
}

/// [`FrameEncoder`] that says its rows, so that a clip's memory can be estimated.
struct CountedFrames;

impl AudioEncoder for CountedFrames {
    fn id(&self) -> String {
        FrameEncoder.id()
    }

    fn dim(&self) -> usize {
        D_ENC
    }

    fn encode(&self, samples: &[f32]) -> pal_models::Result<Tensor> {
        FrameEncoder.encode(samples)
    }

    fn window_samples(&self) -> Option<usize> {
        FrameEncoder.window_samples()
    }

    fn rows_for(&self, samples: usize) -> Option<usize> {
        Some(samples.div_ceil(HOP))
    }
}

#[test]
fn a_clip_past_its_seconds_or_memory_is_refused_before_it_is_encoded() {
    let mut m = model(LalRope::None);
    let encoders: Vec<Box<dyn AudioEncoder>> = vec![Box::new(CountedFrames)];
    // One second of audio: 4,000 rows.
    let second = pal_audio::SAMPLE_RATE as usize;
    m.audio_limits = AudioLimits {
        max_seconds: Some(1.0),
        max_bytes: None,
    };
    GrowingClip::encode_whole(&m, &encoders, &audio(second, 1)).unwrap();
    let before = m
        .lal_prefix_computations
        .load(std::sync::atomic::Ordering::Relaxed);
    let message = GrowingClip::encode_whole(&m, &encoders, &audio(second + 40, 1))
        .map(|_| ())
        .expect_err("a clip past max_audio_seconds is refused")
        .to_string();
    assert!(
        message.contains("max_audio_seconds") && message.contains("MiB"),
        "{message}"
    );
    let after = m
        .lal_prefix_computations
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(before, after, "refused before any of it is encoded");

    // The memory limit: half of what a second's audio holds.
    let estimate = limits::audio_bytes(&m, &encoders, second).unwrap();
    m.audio_limits = AudioLimits {
        max_seconds: None,
        max_bytes: Some(estimate / 2),
    };
    let message = GrowingClip::encode_whole(&m, &encoders, &audio(second, 1))
        .map(|_| ())
        .expect_err("a clip past max_audio_mib is refused")
        .to_string();
    assert!(
        message.contains("max_audio_mib") && message.contains("any length"),
        "{message}"
    );
    // Growing clips are checked as they grow.
    let mut clip = GrowingClip::new(&m).unwrap();
    let refused = audio(second, 2)
        .chunks(40)
        .map(|w| clip.push(&m, &encoders, w))
        .find(|r| r.is_err());
    assert!(
        refused.is_some(),
        "a growing clip stops at its memory limit"
    );
}

#[test]
fn the_memory_estimate_bounds_what_a_clip_holds() {
    // Keys without positions: the tiny model's RoPE table (4,096) is shorter than these clips.
    let m = model(LalRope::None);
    let encoders: Vec<Box<dyn AudioEncoder>> = vec![Box::new(CountedFrames)];
    for windows in [300, 700, 1500] {
        let samples = audio(40 * windows + 12, 3);
        let mut clip = GrowingClip::new(&m).unwrap();
        for w in samples[..40 * windows].chunks(40) {
            clip.push(&m, &encoders, w).unwrap();
        }
        let held = clip.bytes();
        let estimate = limits::audio_bytes(&m, &encoders, samples.len()).unwrap();
        assert!(
            held <= estimate && estimate <= 4 * held,
            "{windows} windows: holds {held} bytes, estimated {estimate}"
        );
    }
}
