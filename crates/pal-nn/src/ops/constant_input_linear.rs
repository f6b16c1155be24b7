use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor,
};

/// `input @ weight^T` where `input` (`rows x in`) is a constant (e.g. frozen-encoder features)
/// and `weight` (`out x in`) is trained: the backward yields only the weight gradient
/// (`grad^T @ input`), never the input-sized gradient candle's matmul would also compute.
pub fn constant_input_linear(input: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, in_dim) = input.dims2()?;
    let (_, w_in) = weight.dims2()?;
    if in_dim != w_in {
        candle_core::bail!(
            "constant_input_linear: input {:?} does not fit weight {:?}",
            input.dims(),
            weight.dims()
        );
    }
    if !weight.track_op() {
        return super::matmul(input, &weight.t()?);
    }
    weight.contiguous()?.apply_op1(ConstantInputMatmul {
        input: input.detach().contiguous()?,
    })
}

struct ConstantInputMatmul {
    input: Tensor,
}

impl ConstantInputMatmul {
    fn bmnk(&self, w_layout: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (m, k) = self.input.dims2()?;
        let (n, _) = w_layout.shape().dims2()?;
        Ok((1, m, n, k))
    }
}

impl CustomOp1 for ConstantInputMatmul {
    fn name(&self) -> &'static str {
        "pal-constant-input-linear"
    }

    fn cpu_fwd(&self, w: &CpuStorage, w_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let bmnk = self.bmnk(w_layout)?;
        let (x_storage, x_layout) = self.input.storage_and_layout();
        let out = match &*x_storage {
            Storage::Cpu(x) => x.matmul(w, bmnk, x_layout, &w_layout.transpose(0, 1)?)?,
            _ => candle_core::bail!("constant_input_linear: input and weight on different devices"),
        };
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let bmnk = self.bmnk(w_layout)?;
        let (x_storage, x_layout) = self.input.storage_and_layout();
        let out = match &*x_storage {
            Storage::Cuda(x) => x.matmul(w, bmnk, x_layout, &w_layout.transpose(0, 1)?)?,
            _ => candle_core::bail!("constant_input_linear: input and weight on different devices"),
        };
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(&self, _w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(super::matmul(&grad.t()?, &self.input)?))
    }
}
