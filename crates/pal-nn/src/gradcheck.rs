//! Finite-difference gradient checking, used by the tests of every op and model that trains.

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

/// The worst disagreement found by [`check_gradients`].
#[derive(Debug, Clone, Copy)]
pub struct GradCheckReport {
    /// Largest `|analytic - numeric| / max(1, |numeric|)` over all checked elements.
    pub max_error: f64,
    /// Number of input elements checked.
    pub checked: usize,
}

/// Compares the backward of `f` with central finite differences, in f64.
///
/// `f` maps the inputs to a tensor of any shape; the checked scalar is `sum(f(x) * r)` for a fixed
/// pseudo-random `r`, so every output element contributes with a different weight. At most
/// `max_elements` elements of each input are perturbed (spread over the whole input).
pub fn check_gradients<F>(
    f: F,
    inputs: &[Tensor],
    eps: f64,
    max_elements: usize,
) -> Result<GradCheckReport>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(DType::F64)?))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let weights = pseudo_random_like(&out)?;
    let loss = (&out * &weights)?.sum_all()?;
    let grads: GradStore = loss.backward()?;

    let scalar =
        |xs: &[Tensor]| -> Result<f64> { (f(xs)? * &weights)?.sum_all()?.to_scalar::<f64>() };
    let mut max_error = 0f64;
    let mut checked = 0;
    for (i, var) in vars.iter().enumerate() {
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => vec![0.0; var.elem_count()],
        };
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let step = (base.len() / max_elements.max(1)).max(1);
        for idx in (0..base.len()).step_by(step) {
            let eval_at = |delta: f64| -> Result<f64> {
                let mut data = base.clone();
                data[idx] += delta;
                let t = Tensor::from_vec(data, var.shape(), var.device())?;
                let mut xs: Vec<Tensor> = tensors.iter().map(|t| t.detach()).collect();
                xs[i] = t;
                scalar(&xs)
            };
            let numeric = (eval_at(eps)? - eval_at(-eps)?) / (2.0 * eps);
            let err = (analytic[idx] - numeric).abs() / numeric.abs().max(1.0);
            max_error = max_error.max(err);
            checked += 1;
        }
    }
    Ok(GradCheckReport { max_error, checked })
}

/// A deterministic tensor in [-1, 1) with the shape of `t` (f64).
pub fn pseudo_random_like(t: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(pseudo_random(t.elem_count(), 0x5eed), t.shape(), t.device())
}

/// `n` deterministic values in [-1, 1) from a SplitMix64 stream.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
}
