use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor,
};

use super::bf16::{self, Bf16Weight};

/// `x @ weight^T` for a frozen `weight` (`out x in`): the backward yields only the input gradient.
///
/// The weight is held inside the op, not as a graph input, so backprop never computes (nor stores)
/// a weight-sized gradient. candle's own `matmul` would compute `x^T @ grad` for the weight even
/// when it is a constant.
///
/// A stacked weight `(groups, out, in)` applies group `g` to `x[g]` (`x` is `(groups, rows, in)`):
/// one batched matmul for several frozen layers at once.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    frozen_linear_with(x, weight, None)
}

/// [`frozen_linear`] whose products (forward, and the input gradient) run in bf16 when the
/// weight also has a bf16 form and `x` is f32 on the CPU (the result stays f32): every product,
/// whatever its rows, so that a product's precision never depends on the batch it is in.
pub fn frozen_linear_with(
    x: &Tensor,
    weight: &Tensor,
    bf16: Option<&Bf16Weight>,
) -> Result<Tensor> {
    if weight.rank() == 3 {
        return frozen_grouped_linear(x, weight);
    }
    let (out_dim, in_dim) = weight.dims2()?;
    let dims = x.dims().to_vec();
    if dims.last() != Some(&in_dim) {
        candle_core::bail!(
            "frozen_linear: input {:?} does not fit weight {:?}",
            dims,
            weight.dims()
        );
    }
    // All rows as one matrix product (a batched product of small blocks is much slower).
    let rows = x.elem_count() / in_dim;
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let bf16 = bf16.filter(|_| x.device().is_cpu() && x.dtype() == DType::F32);
    if !x.track_op() {
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = out_dim;
        return match bf16 {
            Some(w) => bf16_product(&x2, &w.forward)?.reshape(out_dims),
            None => super::matmul(&x2, &weight.t()?)?.reshape(out_dims),
        };
    }
    let y = x2.apply_op1(FrozenMatmul {
        weight: weight.contiguous()?,
        bf16: bf16.cloned(),
    })?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = out_dim;
    y.reshape(out_dims)
}

fn frozen_grouped_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (groups, _, in_dim) = weight.dims3()?;
    let (xg, _, x_in) = x.dims3()?;
    if xg != groups || x_in != in_dim {
        candle_core::bail!(
            "frozen_linear: input {:?} does not fit stacked weight {:?}",
            x.dims(),
            weight.dims()
        );
    }
    if !x.track_op() {
        return x.matmul(&weight.transpose(1, 2)?);
    }
    x.contiguous()?.apply_op1(FrozenMatmul {
        weight: weight.contiguous()?,
        bf16: None,
    })
}

/// `x2 @ W^T` for a contiguous f32 `(rows, k)` `x2` on the CPU, on the bf16 kernels.
fn bf16_product(x2: &Tensor, w: &bf16::PackedWeight) -> Result<Tensor> {
    let rows = x2.dims()[0];
    let x2 = x2.contiguous()?;
    let (storage, layout) = x2.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("bf16 product: the input is not on the CPU");
    };
    let x = super::contiguous_slice::<f32>(cpu, layout, "bf16 product")?;
    let y = bf16::product(x, rows, w);
    Tensor::from_vec(y, (rows, w.n), x2.device())
}

/// The op behind [`frozen_linear`]: input `(rows, in)` with weight `(out, in)`, or input
/// `(groups, rows, in)` with weight `(groups, out, in)`; with the weight's bf16 form, its
/// products in bf16.
struct FrozenMatmul {
    weight: Tensor,
    bf16: Option<Bf16Weight>,
}

impl FrozenMatmul {
    fn bmnk(&self, layout: &Layout) -> Result<(usize, usize, usize, usize)> {
        let dims = layout.shape().dims();
        let (groups, m, k) = match *dims {
            [m, k] => (1, m, k),
            [g, m, k] => (g, m, k),
            _ => candle_core::bail!("frozen_linear: input must be 2D or 3D"),
        };
        let n = self.weight.dims()[self.weight.rank() - 2];
        Ok((groups, m, n, k))
    }

    fn out_shape(&self, bmnk: (usize, usize, usize, usize)) -> Shape {
        if self.weight.rank() == 3 {
            Shape::from((bmnk.0, bmnk.1, bmnk.2))
        } else {
            Shape::from((bmnk.1, bmnk.2))
        }
    }

    fn weight_t(&self, layout: &Layout) -> Result<Layout> {
        let r = layout.dims().len();
        layout.transpose(r - 2, r - 1)
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "pal-frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let bmnk = self.bmnk(layout)?;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let w_t = self.weight_t(w_layout)?;
        if let Some(w) = &self.bf16 {
            let x = super::contiguous_slice::<f32>(storage, layout, "frozen_linear")?;
            let y = bf16::product(x, bmnk.1, &w.forward);
            return Ok((CpuStorage::F32(y), self.out_shape(bmnk)));
        }
        let out = match &*w_storage {
            // pal's column-split product for f32/f64; candle's for other types (bf16).
            Storage::Cpu(w)
                if bmnk.0 == 1
                    && self.weight.rank() == 2
                    && matches!(storage.dtype(), DType::F32 | DType::F64) =>
            {
                super::batched_matmul::matmul_cpu(storage, layout, w, &w_t)?.0
            }
            Storage::Cpu(w) => storage.matmul(w, bmnk, layout, &w_t)?,
            _ => candle_core::bail!("frozen_linear: weight and input on different devices"),
        };
        Ok((out, self.out_shape(bmnk)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let bmnk = self.bmnk(layout)?;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let w_t = self.weight_t(w_layout)?;
        let out = match &*w_storage {
            Storage::Cuda(w) => storage.matmul(w, bmnk, layout, &w_t)?,
            _ => candle_core::bail!("frozen_linear: weight and input on different devices"),
        };
        Ok((out, self.out_shape(bmnk)))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if grad.rank() == 2 && self.weight.rank() == 2 {
            return Ok(Some(input_grad(grad, &self.weight, self.bf16.as_ref())?));
        }
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `g W`, the input gradient of `x W^T` for a 2-D `g` `(rows, out)`: on the bf16 kernels when
/// the weight has a bf16 form and `g` is f32 on the CPU.
pub fn input_grad(g: &Tensor, weight: &Tensor, bf16: Option<&Bf16Weight>) -> Result<Tensor> {
    let usable = g.device().is_cpu() && g.dtype() == DType::F32;
    match bf16.filter(|_| usable) {
        Some(w) => bf16_product(g, &w.backward),
        None => super::matmul(g, weight),
    }
}
