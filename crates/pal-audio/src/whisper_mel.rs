//! Whisper's log-mel spectrogram, as Hugging Face's `WhisperFeatureExtractor` computes it:
//! 16 kHz input, 400-point periodic Hann window, hop 160, centred frames with reflect padding,
//! power spectrum, Slaney mel filters (0..8 kHz), `log10(max(x, 1e-10))`, floor at `max - 8`,
//! then `(x + 4) / 4`. The last STFT frame is dropped, so `N` samples give `N / 160` frames.

use crate::spectrum::{hann, PowerSpectrum};

/// Samples in Whisper's 30 s window.
pub const WHISPER_WINDOW_SAMPLES: usize = 480_000;
const N_FFT: usize = 400;
const HOP: usize = 160;

/// A Whisper log-mel feature extractor for 80 or 128 mel bins.
pub struct WhisperMel {
    n_mels: usize,
    filters: Vec<f64>,
    /// Per mel bin, the frequency bins its filter is non-zero over (from its first non-zero
    /// weight to its last): a filter spans a few of the 201 bins, and the zeros outside would
    /// add nothing to its sum.
    spans: Vec<std::ops::Range<usize>>,
    window: Vec<f64>,
}

impl WhisperMel {
    /// An extractor with `n_mels` bins (80 for Whisper up to v2, 128 for v3).
    pub fn new(n_mels: usize) -> Self {
        let filters = slaney_mel_filters(n_mels, N_FFT, 16_000, 0.0, 8_000.0);
        let n_bins = N_FFT / 2 + 1;
        let spans = filters
            .chunks(n_bins)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |l| l + 1);
                first..last.max(first)
            })
            .collect();
        Self {
            n_mels,
            filters,
            spans,
            window: hann(N_FFT, true),
        }
    }

    /// Number of mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Features of 16 kHz `samples`, `(n_mels, frames)` row-major, with `frames = len / 160`.
    /// With `pad_to_window`, the clip is first zero-padded (or cut) to 30 s, as Whisper expects.
    pub fn compute(&self, samples: &[f32], pad_to_window: bool) -> (Vec<f32>, usize) {
        let mut x: Vec<f64> = samples.iter().map(|&s| s as f64).collect();
        if pad_to_window {
            x.resize(WHISPER_WINDOW_SAMPLES, 0.0);
        }
        let n = x.len();
        let frames = n / HOP;
        if frames == 0 {
            return (vec![], 0);
        }
        // Centre the frames: reflect-pad by N_FFT / 2 on both sides (edge sample not repeated).
        let half = N_FFT / 2;
        let reflect = |i: isize| -> f64 {
            let n = n as isize;
            let mut j = i;
            if n == 1 {
                return x[0];
            }
            while j < 0 || j >= n {
                j = if j < 0 { -j } else { 2 * (n - 1) - j };
            }
            x[j as usize]
        };
        let n_bins = N_FFT / 2 + 1;
        let mut fft = PowerSpectrum::new(N_FFT);
        let mut frame = vec![0.0f64; N_FFT];
        let mut power = vec![0.0f64; n_bins];
        let mut out = vec![0.0f64; self.n_mels * frames];
        for t in 0..frames {
            let start = (t * HOP) as isize - half as isize;
            for (k, f) in frame.iter_mut().enumerate() {
                *f = reflect(start + k as isize) * self.window[k];
            }
            fft.compute(&frame, &mut power);
            for (m, span) in self.spans.iter().enumerate() {
                let row = &self.filters[m * n_bins..(m + 1) * n_bins];
                let energy: f64 = row[span.clone()]
                    .iter()
                    .zip(&power[span.clone()])
                    .map(|(w, p)| w * p)
                    .sum();
                out[m * frames + t] = energy.max(1e-10).log10();
            }
        }
        let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let feats = out
            .iter()
            .map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32)
            .collect();
        (feats, frames)
    }
}

fn hz_to_mel_slaney(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    if hz < 1000.0 {
        hz / f_sp
    } else {
        15.0 + (hz / 1000.0).ln() / (6.4f64.ln() / 27.0)
    }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    if mel < 15.0 {
        mel * f_sp
    } else {
        1000.0 * ((mel - 15.0) * (6.4f64.ln() / 27.0)).exp()
    }
}

/// Slaney-normalised triangular mel filters `(n_mels, n_fft / 2 + 1)` on the Slaney mel scale
/// (the same as librosa's default and transformers' `mel_filter_bank(norm="slaney")`).
fn slaney_mel_filters(
    n_mels: usize,
    n_fft: usize,
    sample_rate: u32,
    f_min: f64,
    f_max: f64,
) -> Vec<f64> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| i as f64 * (sample_rate as f64 / 2.0) / (n_bins - 1) as f64)
        .collect();
    let (mel_min, mel_max) = (hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max));
    let points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz_slaney(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut filters = vec![0.0; n_mels * n_bins];
    for m in 0..n_mels {
        let (left, centre, right) = (points[m], points[m + 1], points[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let up = (f - left) / (centre - left);
            let down = (right - f) / (right - centre);
            filters[m * n_bins + k] = up.min(down).max(0.0) * norm;
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each filter's span holds all its non-zero weights, so its sum over the span is the sum
    /// over all 201 bins bit for bit (the features do not move).
    #[test]
    fn filter_spans_give_the_full_sums() {
        let n_bins = N_FFT / 2 + 1;
        let power: Vec<f64> = (0..n_bins)
            .map(|i| ((i * 7919) % 997) as f64 / 13.0)
            .collect();
        for n_mels in [80, 128] {
            let mel = WhisperMel::new(n_mels);
            for (m, span) in mel.spans.iter().enumerate() {
                let row = &mel.filters[m * n_bins..(m + 1) * n_bins];
                let full: f64 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
                let spanned: f64 = row[span.clone()]
                    .iter()
                    .zip(&power[span.clone()])
                    .map(|(w, p)| w * p)
                    .sum();
                assert_eq!(full.to_bits(), spanned.to_bits(), "mel bin {m} of {n_mels}");
                assert!(span.len() < n_bins / 4, "mel bin {m} spans {span:?}");
            }
        }
    }
}
