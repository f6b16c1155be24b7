//! Sample-rate conversion with a windowed-sinc resampler (rubato), whole ([`resample`]) or as
//! the input arrives ([`StreamResampler`]): both give the same samples, bit for bit.

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use crate::{AudioError, AudioErrorKind, Result};

/// Input samples per resampler call.
const CHUNK: usize = 4096;

/// Output samples held back until the input ends: the last full chunk may produce one more
/// sample than the whole input's length allows, which the end cuts.
const HELD_BACK: usize = 2;

/// `samples` at `from` Hz converted to `to` Hz; the output has `round(len * to / from)` samples,
/// aligned with the input to within one output sample (rubato's sinc resampler starts centred).
pub fn resample(samples: &[f32], from: u32, to: u32, origin: &str) -> Result<Vec<f32>> {
    let mut stream = StreamResampler::new(from, to, origin);
    let mut out = stream.push(samples)?;
    out.extend(stream.finish()?);
    Ok(out)
}

/// A resampler fed piece by piece: [`Self::push`] returns what is ready, [`Self::finish`] the
/// rest. The pieces joined equal [`resample`] of the whole input.
pub struct StreamResampler {
    from: u32,
    to: u32,
    origin: String,
    resampler: Option<SincFixedIn<f32>>,
    /// Input not yet resampled (less than a chunk once the resampler exists).
    pending: Vec<f32>,
    /// Output not yet returned (see [`HELD_BACK`]).
    held: Vec<f32>,
    /// Input samples pushed.
    taken: usize,
    /// Output samples returned.
    given: usize,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz; `origin` names the input in errors.
    pub fn new(from: u32, to: u32, origin: &str) -> Self {
        Self {
            from,
            to,
            origin: origin.to_string(),
            resampler: None,
            pending: vec![],
            held: vec![],
            taken: 0,
            given: 0,
        }
    }

    fn fail(&self, e: impl ToString) -> AudioError {
        AudioError::new(self.origin.clone(), AudioErrorKind::Resample(e.to_string()))
    }

    fn ratio(&self) -> f64 {
        self.to as f64 / self.from as f64
    }

    fn make(&self, chunk: usize) -> Result<SincFixedIn<f32>> {
        let params = SincInterpolationParameters {
            sinc_len: 128,
            f_cutoff: 0.95,
            oversampling_factor: 256,
            interpolation: SincInterpolationType::Linear,
            window: WindowFunction::BlackmanHarris2,
        };
        SincFixedIn::<f32>::new(self.ratio(), 1.0, params, chunk, 1).map_err(|e| self.fail(e))
    }

    /// Takes more input; returns the output it completes.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        self.taken += samples.len();
        if self.from == self.to {
            self.given += samples.len();
            return Ok(samples.to_vec());
        }
        self.pending.extend_from_slice(samples);
        if self.resampler.is_none() && self.pending.len() >= CHUNK {
            self.resampler = Some(self.make(CHUNK)?);
        }
        let Some(resampler) = &mut self.resampler else {
            return Ok(vec![]);
        };
        let mut done = 0;
        while done + CHUNK <= self.pending.len() {
            let block = resampler
                .process(&[&self.pending[done..done + CHUNK]], None)
                .map_err(|e| {
                    AudioError::new(self.origin.clone(), AudioErrorKind::Resample(e.to_string()))
                })?;
            self.held.extend_from_slice(&block[0]);
            done += CHUNK;
        }
        self.pending.drain(..done);
        let ready = self.held.len().saturating_sub(HELD_BACK);
        self.given += ready;
        Ok(self.held.drain(..ready).collect())
    }

    /// Ends the input; returns the rest of the output (in all, `round(len * to / from)`).
    pub fn finish(mut self) -> Result<Vec<f32>> {
        if self.from == self.to {
            return Ok(vec![]);
        }
        let expected = (self.taken as f64 * self.ratio()).round() as usize;
        let mut out = std::mem::take(&mut self.held);
        let pending = std::mem::take(&mut self.pending);
        let mut resampler = match self.resampler.take() {
            Some(r) => r,
            // Shorter than a chunk: one call over all of it, as its own chunk.
            None => {
                let mut r = self.make(pending.len().max(1))?;
                if !pending.is_empty() {
                    let block = r.process(&[&pending], None).map_err(|e| self.fail(e))?;
                    out.extend_from_slice(&block[0]);
                }
                return self.tail(r, out, expected);
            }
        };
        if !pending.is_empty() {
            let block = resampler
                .process_partial(Some(&[&pending]), None)
                .map_err(|e| self.fail(e))?;
            out.extend_from_slice(&block[0]);
        }
        self.tail(resampler, out, expected)
    }

    /// Zeros through `resampler` until the output reaches `expected`, then cut to it.
    fn tail(
        &self,
        mut resampler: SincFixedIn<f32>,
        mut out: Vec<f32>,
        expected: usize,
    ) -> Result<Vec<f32>> {
        while self.given + out.len() < expected {
            let block = resampler
                .process_partial::<&[f32]>(None, None)
                .map_err(|e| self.fail(e))?;
            if block[0].is_empty() {
                break;
            }
            out.extend_from_slice(&block[0]);
        }
        out.resize(expected.saturating_sub(self.given), 0.0);
        Ok(out)
    }
}
