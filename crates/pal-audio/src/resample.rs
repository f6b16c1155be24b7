//! Sample-rate conversion with a windowed-sinc resampler (rubato).

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use crate::{AudioError, AudioErrorKind, Result};

/// `samples` at `from` Hz converted to `to` Hz; the output has `round(len * to / from)` samples,
/// aligned with the input to within one output sample (rubato's sinc resampler starts centred).
pub fn resample(samples: &[f32], from: u32, to: u32, origin: &str) -> Result<Vec<f32>> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let fail = |e: String| AudioError::new(origin, AudioErrorKind::Resample(e));
    let ratio = to as f64 / from as f64;
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: 0.95,
        oversampling_factor: 256,
        interpolation: SincInterpolationType::Linear,
        window: WindowFunction::BlackmanHarris2,
    };
    let chunk = 4096.min(samples.len().max(1));
    let mut resampler =
        SincFixedIn::<f32>::new(ratio, 1.0, params, chunk, 1).map_err(|e| fail(e.to_string()))?;
    let expected = (samples.len() as f64 * ratio).round() as usize;
    let mut out: Vec<f32> = Vec::with_capacity(expected + chunk);
    let mut pos = 0;
    while pos + chunk <= samples.len() {
        let block = resampler
            .process(&[&samples[pos..pos + chunk]], None)
            .map_err(|e| fail(e.to_string()))?;
        out.extend_from_slice(&block[0]);
        pos += chunk;
    }
    // The rest, then zeros until the tail is out.
    let rest = &samples[pos..];
    if !rest.is_empty() {
        let block = resampler
            .process_partial(Some(&[rest]), None)
            .map_err(|e| fail(e.to_string()))?;
        out.extend_from_slice(&block[0]);
    }
    while out.len() < expected {
        let block = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| fail(e.to_string()))?;
        if block[0].is_empty() {
            break;
        }
        out.extend_from_slice(&block[0]);
    }
    out.resize(expected, 0.0);
    Ok(out)
}
