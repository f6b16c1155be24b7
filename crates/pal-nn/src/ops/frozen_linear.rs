use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor,
};

/// `x @ weight^T` for a frozen `weight` (`out x in`): the backward yields only the input gradient.
///
/// The weight is held inside the op, not as a graph input, so backprop never computes (nor stores)
/// a weight-sized gradient. candle's own `matmul` would compute `x^T @ grad` for the weight even
/// when it is a constant.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let dims = x.dims().to_vec();
    if dims.last() != Some(&in_dim) {
        candle_core::bail!(
            "frozen_linear: input {:?} does not fit weight {:?}",
            dims,
            weight.dims()
        );
    }
    if !x.track_op() {
        return x.broadcast_matmul(&weight.t()?);
    }
    let rows = x.elem_count() / in_dim;
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let y = x2.apply_op1(FrozenMatmul {
        weight: weight.contiguous()?,
    })?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = out_dim;
    y.reshape(out_dims)
}

struct FrozenMatmul {
    weight: Tensor,
}

impl FrozenMatmul {
    fn bmnk(&self, layout: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (m, k) = layout.shape().dims2()?;
        let (n, _) = self.weight.dims2()?;
        Ok((1, m, n, k))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "pal-frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let bmnk = self.bmnk(layout)?;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let w_t = w_layout.transpose(0, 1)?;
        let out = match &*w_storage {
            Storage::Cpu(w) => storage.matmul(w, bmnk, layout, &w_t)?,
            _ => candle_core::bail!("frozen_linear: weight and input on different devices"),
        };
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let bmnk = self.bmnk(layout)?;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let w_t = w_layout.transpose(0, 1)?;
        let out = match &*w_storage {
            Storage::Cuda(w) => storage.matmul(w, bmnk, layout, &w_t)?,
            _ => candle_core::bail!("frozen_linear: weight and input on different devices"),
        };
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}
