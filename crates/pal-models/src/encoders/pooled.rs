//! Average pooling of an encoder's output frames (`pool = N` in a model config): every `N`
//! consecutive frames become their mean, the last group of a clip whatever it holds. The LLM
//! then keeps `N` times fewer audio keys and values (LAL) or tokens (PLITS): what makes an hour
//! of audio fit in memory. Whisper's 30 s window is 1500 frames, a multiple of 2, 3, 4 and 5, so
//! a long clip pooled whole equals its windows pooled one by one.

use candle_core::Tensor;

use crate::encoders::AudioEncoder;
use crate::error::Result;

/// `frames` `(Na, d)` averaged over groups of `pool` rows (the last group may be shorter).
pub fn pool_frames(frames: &Tensor, pool: usize) -> Result<Tensor> {
    let (na, d) = frames.dims2()?;
    if pool <= 1 || na == 0 {
        return Ok(frames.clone());
    }
    let full = na / pool;
    let mut parts = vec![];
    if full > 0 {
        let whole = frames.narrow(0, 0, full * pool)?.reshape((full, pool, d))?;
        parts.push(whole.mean(1)?);
    }
    let rest = na - full * pool;
    if rest > 0 {
        parts.push(frames.narrow(0, full * pool, rest)?.mean_keepdim(0)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// An encoder whose outputs are pooled (see the module's documentation).
pub struct PooledEncoder {
    inner: Box<dyn AudioEncoder>,
    pool: usize,
}

impl PooledEncoder {
    /// `inner` with its frames averaged `pool` at a time.
    pub fn new(inner: Box<dyn AudioEncoder>, pool: usize) -> Self {
        Self { inner, pool }
    }
}

impl AudioEncoder for PooledEncoder {
    fn id(&self) -> String {
        format!("{}:pool={}", self.inner.id(), self.pool)
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        pool_frames(&self.inner.encode(samples)?, self.pool)
    }

    fn encode_batch(&self, clips: &[&[f32]]) -> Result<Vec<Tensor>> {
        self.inner
            .encode_batch(clips)?
            .iter()
            .map(|t| pool_frames(t, self.pool))
            .collect()
    }

    fn window_samples(&self) -> Option<usize> {
        self.inner.window_samples()
    }

    fn max_samples(&self) -> Option<usize> {
        self.inner.max_samples()
    }

    fn rows_for(&self, samples: usize) -> Option<usize> {
        Some(self.inner.rows_for(samples)?.div_ceil(self.pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn groups_average_and_the_last_may_be_short() {
        let x = Tensor::arange(0f32, 10.0, &Device::Cpu)
            .unwrap()
            .reshape((5, 2))
            .unwrap();
        let pooled = pool_frames(&x, 2).unwrap();
        assert_eq!(
            pooled.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![5.0, 6.0], vec![8.0, 9.0]]
        );
        // Pooled whole = pooled piece by piece when the pieces are multiples of the pool.
        let a = pool_frames(&x.narrow(0, 0, 4).unwrap(), 2).unwrap();
        let b = pool_frames(&x.narrow(0, 4, 1).unwrap(), 2).unwrap();
        let joined = Tensor::cat(&[a, b], 0).unwrap();
        let diff = (joined - pooled).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
