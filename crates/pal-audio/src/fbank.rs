//! Kaldi filterbank features, as `torchaudio.compliance.kaldi.fbank` computes them with
//! `dither=0`, `snip_edges=True`, `use_energy=False`: frames of 25 ms every 10 ms, DC offset
//! removed, pre-emphasis 0.97, a window (Povey by default, Hanning for AST/EAT/SSLAM), FFT padded to
//! a power of two, power spectrum, Kaldi mel banks (20 Hz to Nyquist), natural log floored at
//! f32 epsilon.

use crate::spectrum::{hann, PowerSpectrum};

/// Frame window of [`KaldiFbank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowType {
    /// Kaldi's default: a symmetric Hann window raised to 0.85.
    Povey,
    /// A symmetric Hann window (what AST, EAT and SSLAM use).
    Hanning,
}

/// A Kaldi fbank extractor.
#[derive(Debug, Clone)]
pub struct KaldiFbank {
    /// Number of mel bins (128 for AST-family encoders).
    pub num_mel_bins: usize,
    /// Input sample rate.
    pub sample_rate: u32,
    /// Frame window.
    pub window: WindowType,
    /// Frame length in milliseconds.
    pub frame_length_ms: f64,
    /// Frame shift in milliseconds.
    pub frame_shift_ms: f64,
    /// Lowest mel-bank frequency.
    pub low_freq: f64,
    /// Highest mel-bank frequency; `<= 0` means Nyquist plus this value.
    pub high_freq: f64,
    /// Pre-emphasis coefficient.
    pub preemphasis: f64,
}

impl KaldiFbank {
    /// `num_mel_bins` bins at `sample_rate` with Kaldi's defaults otherwise.
    pub fn new(num_mel_bins: usize, sample_rate: u32, window: WindowType) -> Self {
        Self {
            num_mel_bins,
            sample_rate,
            window,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
            low_freq: 20.0,
            high_freq: 0.0,
            preemphasis: 0.97,
        }
    }

    fn frame_length(&self) -> usize {
        (self.sample_rate as f64 * self.frame_length_ms / 1000.0) as usize
    }

    fn frame_shift(&self) -> usize {
        (self.sample_rate as f64 * self.frame_shift_ms / 1000.0) as usize
    }

    /// Number of frames for `n` samples (`snip_edges`: only whole frames).
    pub fn num_frames(&self, n: usize) -> usize {
        let len = self.frame_length();
        if n < len {
            0
        } else {
            1 + (n - len) / self.frame_shift()
        }
    }

    /// Features `(frames, num_mel_bins)` row-major (time first, as torchaudio returns them).
    pub fn compute(&self, samples: &[f32]) -> (Vec<f32>, usize) {
        let len = self.frame_length();
        let shift = self.frame_shift();
        let frames = self.num_frames(samples.len());
        let fft_size = len.next_power_of_two();
        let n_bins = fft_size / 2 + 1;
        let window: Vec<f64> = match self.window {
            WindowType::Hanning => hann(len, false),
            WindowType::Povey => hann(len, false).iter().map(|w| w.powf(0.85)).collect(),
        };
        let banks = self.mel_banks(fft_size);
        let mut fft = PowerSpectrum::new(fft_size);
        let mut frame = vec![0.0f64; len];
        let mut power = vec![0.0f64; n_bins];
        let eps = f32::EPSILON as f64;
        let mut out = Vec::with_capacity(frames * self.num_mel_bins);
        for t in 0..frames {
            let src = &samples[t * shift..t * shift + len];
            let mean = src.iter().map(|&s| s as f64).sum::<f64>() / len as f64;
            for (f, &s) in frame.iter_mut().zip(src) {
                *f = s as f64 - mean;
            }
            for i in (1..len).rev() {
                frame[i] -= self.preemphasis * frame[i - 1];
            }
            frame[0] -= self.preemphasis * frame[0];
            for (f, w) in frame.iter_mut().zip(&window) {
                *f *= w;
            }
            fft.compute(&frame, &mut power);
            for m in 0..self.num_mel_bins {
                let row = &banks[m * n_bins..(m + 1) * n_bins];
                let energy: f64 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
                out.push(energy.max(eps).ln() as f32);
            }
        }
        (out, frames)
    }

    /// Kaldi's triangular mel banks on the `1127 ln(1 + f / 700)` scale, `(bins, fft/2 + 1)` with
    /// the Nyquist column zero. Computed in f32 as torchaudio does: features of AST-family encoders
    /// were trained on those exact weights (f64 banks shift some log energies by ~2e-4).
    fn mel_banks(&self, fft_size: usize) -> Vec<f64> {
        let mel64 = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
        let mel32 = |f: f32| 1127.0f32 * (1.0f32 + f / 700.0f32).ln();
        let nyquist = self.sample_rate as f64 / 2.0;
        let high = if self.high_freq <= 0.0 {
            nyquist + self.high_freq
        } else {
            self.high_freq
        };
        let (mel_low, mel_high) = (mel64(self.low_freq), mel64(high));
        let delta = (mel_high - mel_low) / (self.num_mel_bins + 1) as f64;
        let bin_width = self.sample_rate as f64 / fft_size as f64;
        let n_bins = fft_size / 2 + 1;
        let mut banks = vec![0.0; self.num_mel_bins * n_bins];
        let (mel_low, delta, bin_width) = (mel_low as f32, delta as f32, bin_width as f32);
        for m in 0..self.num_mel_bins {
            let left = mel_low + m as f32 * delta;
            let centre = mel_low + (m as f32 + 1.0) * delta;
            let right = mel_low + (m as f32 + 2.0) * delta;
            for k in 0..fft_size / 2 {
                let f = mel32(k as f32 * bin_width);
                let up = (f - left) / (centre - left);
                let down = (right - f) / (right - centre);
                banks[m * n_bins + k] = up.min(down).max(0.0) as f64;
            }
        }
        banks
    }
}
