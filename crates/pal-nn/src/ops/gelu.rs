//! The exact (erf) GELU, `x * Phi(x)`, of Whisper's and AST's FFNs and of the connectors' MLPs,
//! with its backward. candle's `gelu_erf` calls a scalar `erf` in f64 per element: encoding an
//! hour of audio with Whisper tiny spent about a tenth of its time there. Here f32 takes
//! Abramowitz and Stegun's 7.1.26 for `erfc` (absolute error under 1.5e-7, the approximation
//! PyTorch's vectorized CPU `erf` uses) with the vectorized `exp` of the softmax kernels, so the
//! loop runs 8 lanes wide; f64 (the gradient tests) keeps the exact `erfc`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};

use super::{contiguous_slice, par_rows, Exp};

/// `x * Phi(x)` (`Phi` the standard normal CDF) elementwise, with a backward. On the CPU in f32
/// and f64 one pass per row; elsewhere candle's `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// The derivative of [`gelu_erf`] at `x`, `Phi(x) + x phi(x)`, elementwise (CPU, f32 and f64);
/// no backward itself.
pub fn gelu_erf_grad(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GeluErfGrad)
}

/// One element's GELU and its derivative.
trait GeluElem: WithDType + Exp {
    fn gelu(self) -> Self;
    fn gelu_grad(self) -> Self;
}

/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `(erfc(|x| / sqrt 2), exp(-x^2 / 2))` in f32: Abramowitz and Stegun 7.1.26, `erfc(z) = t (a1
/// + t (a2 + ...)) exp(-z^2)` with `t = 1 / (1 + p z)`. Branch-free, so it vectorizes.
#[inline(always)]
fn erfc_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // Clamped so that a NaN input never reaches the exponential's integer conversion (its NaN
    // comes back through `x`); past -87 the exponential is 0 anyway.
    let gauss = (-z * z).max(-87.5).exp_fast();
    (poly * gauss, gauss)
}

/// `Phi(x)` from `erfc(|x| / sqrt 2)`: `1 - c/2` above zero, `c/2` below (no cancellation in the
/// negative tail).
#[inline(always)]
fn normal_cdf(x: f32, erfc: f32) -> f32 {
    let half = 0.5 * erfc;
    if x >= 0.0 {
        1.0 - half
    } else {
        half
    }
}

impl GeluElem for f32 {
    #[inline(always)]
    fn gelu(self) -> f32 {
        let (erfc, _) = erfc_and_gauss(self);
        self * normal_cdf(self, erfc)
    }

    #[inline(always)]
    fn gelu_grad(self) -> f32 {
        let (erfc, gauss) = erfc_and_gauss(self);
        normal_cdf(self, erfc) + self * gauss * FRAC_1_SQRT_2PI as f32
    }
}

impl GeluElem for f64 {
    fn gelu(self) -> f64 {
        self * 0.5 * candle_core::cpu::erf::erfc_f64(-self * std::f64::consts::FRAC_1_SQRT_2)
    }

    fn gelu_grad(self) -> f64 {
        let cdf = 0.5 * candle_core::cpu::erf::erfc_f64(-self * std::f64::consts::FRAC_1_SQRT_2);
        cdf + self * (-0.5 * self * self).exp() * FRAC_1_SQRT_2PI
    }
}

vectorized! {
    /// The GELU of every element of `x`, into `out`.
    fn gelu_row[T: GeluElem](out: &mut [T], x: &[T]) = gelu_row_body
}

vectorized! {
    /// The GELU's derivative at every element of `x`, into `out`.
    fn gelu_grad_row[T: GeluElem](out: &mut [T], x: &[T]) = gelu_grad_row_body
}

#[inline(always)]
fn gelu_row_body<T: GeluElem>(out: &mut [T], x: &[T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.gelu();
    }
}

#[inline(always)]
fn gelu_grad_row_body<T: GeluElem>(out: &mut [T], x: &[T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.gelu_grad();
    }
}

/// `row_fn` over the rows (of the last dimension; a 1-D input is one row) of a contiguous
/// storage, spread over the thread pool.
fn map_rows<T: GeluElem>(
    s: &CpuStorage,
    l: &Layout,
    name: &str,
    row_fn: impl Fn(&mut [T], &[T]) + Sync,
) -> Result<Vec<T>> {
    let x: &[T] = contiguous_slice(s, l, name)?;
    let row_len = l.dims().last().copied().unwrap_or(1).max(1);
    let mut out = vec![T::zero(); x.len()];
    par_rows(&mut out, row_len, |r, row| {
        row_fn(row, &x[r * row_len..r * row_len + row.len()])
    });
    Ok(out)
}

/// The GELU (`grad = false`) or its derivative of a CPU storage.
fn gelu_storage(s: &CpuStorage, l: &Layout, grad: bool) -> Result<(CpuStorage, Shape)> {
    let name = if grad { "gelu_erf_grad" } else { "gelu_erf" };
    let out = match (s.dtype(), grad) {
        (DType::F32, false) => CpuStorage::F32(map_rows(s, l, name, gelu_row::<f32>)?),
        (DType::F32, true) => CpuStorage::F32(map_rows(s, l, name, gelu_grad_row::<f32>)?),
        (DType::F64, false) => CpuStorage::F64(map_rows(s, l, name, gelu_row::<f64>)?),
        (DType::F64, true) => CpuStorage::F64(map_rows(s, l, name, gelu_grad_row::<f64>)?),
        (other, _) => candle_core::bail!("{name}: no CPU kernel for {other:?}"),
    };
    Ok((out, l.shape().clone()))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "pal-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        gelu_storage(s, l, false)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((grad * gelu_erf_grad(x)?)?))
    }
}

struct GeluErfGrad;

impl CustomOp1 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "pal-gelu-erf-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        gelu_storage(s, l, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Inputs from -12 to 12 (both tails, zero, and rows long enough for the thread pool).
    fn inputs() -> Result<Tensor> {
        Tensor::arange(-120_000f32, 120_000f32, &Device::Cpu)?
            .affine(1e-4, 0.0)?
            .reshape((60, 4000))
    }

    /// The f32 GELU is within 2e-7 * max(1, |x|) of the exact one (computed in f64), its
    /// derivative within 4e-7 * max(1, |x|) (a few ulp: near zero, where the derivative is 1/2,
    /// the f32 rounding of the approximation's coefficients): well below what a Whisper encoder's
    /// outputs are compared at.
    #[test]
    fn f32_gelu_and_derivative_match_exact_values() -> Result<()> {
        let x = inputs()?;
        let x64 = x.to_dtype(DType::F64)?;
        let scale = x64.abs()?.maximum(1.0)?;
        for (name, fast, exact, bound) in [
            ("gelu", gelu_erf(&x)?, gelu_erf(&x64)?, 2e-7),
            ("derivative", gelu_erf_grad(&x)?, gelu_erf_grad(&x64)?, 4e-7),
        ] {
            let excess = ((fast.to_dtype(DType::F64)? - exact)?.abs()? - (&scale * bound)?)?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(excess <= 0.0, "{name}: error past its bound by {excess}");
        }
        Ok(())
    }

    /// The exact f64 GELU agrees with candle's (the reference the models were tested against).
    #[test]
    fn f64_gelu_matches_candle() -> Result<()> {
        let x = inputs()?.to_dtype(DType::F64)?;
        let err = (gelu_erf(&x)? - x.gelu_erf()?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(err < 1e-12, "error {err}");
        Ok(())
    }

    /// Infinities go to their limits, NaN stays NaN.
    #[test]
    fn f32_gelu_of_special_values() -> Result<()> {
        let x = Tensor::new(&[f32::INFINITY, f32::NAN, 0.0, -0.0], &Device::Cpu)?;
        let y = gelu_erf(&x)?.to_vec1::<f32>()?;
        assert_eq!(y[0], f32::INFINITY);
        assert!(y[1].is_nan());
        assert_eq!((y[2], y[3]), (0.0, 0.0));
        Ok(())
    }
}
