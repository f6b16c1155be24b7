//! Power spectra of frames (real FFT), shared by the Whisper and Kaldi feature extractors.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// A reusable real FFT of a fixed size that returns `|X_k|^2` for `k = 0..=n/2`.
pub(crate) struct PowerSpectrum {
    fft: Arc<dyn RealToComplex<f64>>,
    input: Vec<f64>,
    output: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

impl PowerSpectrum {
    /// An FFT of `n` points.
    pub(crate) fn new(n: usize) -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n);
        let input = fft.make_input_vec();
        let output = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        Self {
            fft,
            input,
            output,
            scratch,
        }
    }

    /// Power spectrum of `frame` (zero-padded to the FFT size) into `out` (`n/2 + 1` bins).
    pub(crate) fn compute(&mut self, frame: &[f64], out: &mut [f64]) {
        self.input.fill(0.0);
        self.input[..frame.len()].copy_from_slice(frame);
        self.fft
            .process_with_scratch(&mut self.input, &mut self.output, &mut self.scratch)
            .expect("buffer sizes come from the plan");
        for (o, c) in out.iter_mut().zip(&self.output) {
            *o = c.norm_sqr();
        }
    }
}

/// Hann window of `n` points; `periodic` as in `torch.hann_window(n, periodic)`.
pub(crate) fn hann(n: usize, periodic: bool) -> Vec<f64> {
    let denom = if periodic { n as f64 } else { (n - 1) as f64 };
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / denom).cos())
        .collect()
}
