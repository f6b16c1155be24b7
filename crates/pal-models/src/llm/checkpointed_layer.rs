//! Activation checkpointing of one decoder layer: the output is computed outside the graph and
//! attached to it by a [`CheckpointedLayer`] op over the layer's trainable inputs (the hidden
//! states and, for LAL layers, the audio keys/values), which reruns the layer's forward with
//! gradient tracking in backward. Only the layer's input is kept, never its activations. Only for
//! frozen LLM weights: a trainable weight inside the layer would lose its gradient.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, Var};
use pal_nn::ops::Precomputed;

use crate::error::{ModelError, Result};
use crate::llm::cache::{KeyValuePrefix, LayerCache};
use crate::llm::config::LlamaConfig;
use crate::llm::layer::DecoderLayer;

/// `layer` on `x` with activation checkpointing (see the module docs).
pub fn forward(
    layer: &DecoderLayer,
    config: &LlamaConfig,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    cache: &mut LayerCache,
) -> Result<Tensor> {
    if !layer.is_frozen() {
        return Err(ModelError::Unsupported(
            "activation checkpointing needs frozen LLM weights (an adapter-only stage)".into(),
        ));
    }
    let detached_prefix = cache.prefix.as_ref().map(|p| KeyValuePrefix {
        packed: p.packed.clone(),
        k: p.k.detach(),
        v: p.v.detach(),
        valid: p.valid.clone(),
        stacked: None,
        own_softmax: p.own_softmax,
    });
    let mut scratch = LayerCache::with_prefix(detached_prefix);
    let y = layer.forward(config, &x.detach(), cos, sin, mask, &mut scratch)?;
    cache.k = scratch.k;
    cache.v = scratch.v;
    let (pk, pv, valid) = match &cache.prefix {
        Some(p) => (p.k.clone(), p.v.clone(), Some(p.valid.clone())),
        None => {
            let dummy = Tensor::zeros(1, x.dtype(), x.device())?;
            (dummy.clone(), dummy, None)
        }
    };
    let op = CheckpointedLayer {
        layer: layer.clone(),
        config: config.clone(),
        output: Precomputed::new("checkpointed layer", y),
        cos: cos.clone(),
        sin: sin.clone(),
        mask: mask.cloned(),
        prefix_valid: valid,
        own_softmax: cache.prefix.as_ref().is_some_and(|p| p.own_softmax),
    };
    Ok(x.apply_op3(&pk, &pv, op)?)
}

/// The graph node of a checkpointed layer: inputs `(hidden, prefix keys, prefix values)`, output
/// the layer's output. Forward hands over the output computed outside the graph; backward
/// reruns the layer with gradient tracking and returns the inputs' gradients.
struct CheckpointedLayer {
    layer: DecoderLayer,
    config: LlamaConfig,
    output: Precomputed,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    prefix_valid: Option<Tensor>,
    /// The prefix has its own softmax (see [`KeyValuePrefix::own_softmax`]).
    own_softmax: bool,
}

impl CustomOp3 for CheckpointedLayer {
    fn name(&self) -> &'static str {
        "pal-checkpointed-layer"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        pk: &Tensor,
        pv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let xv = Var::from_tensor(x)?;
        let (pkv, pvv) = (Var::from_tensor(pk)?, Var::from_tensor(pv)?);
        let prefix = self.prefix_valid.as_ref().map(|valid| KeyValuePrefix {
            packed: None,
            k: pkv.as_tensor().clone(),
            v: pvv.as_tensor().clone(),
            valid: valid.clone(),
            stacked: None,
            own_softmax: self.own_softmax,
        });
        let mut cache = LayerCache::with_prefix(prefix);
        let y = self
            .layer
            .forward(
                &self.config,
                xv.as_tensor(),
                &self.cos,
                &self.sin,
                self.mask.as_ref(),
                &mut cache,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let grads = (y * grad)?.sum_all()?.backward()?;
        let has_prefix = self.prefix_valid.is_some();
        Ok((
            grads.get(xv.as_tensor()).cloned(),
            if has_prefix {
                grads.get(pkv.as_tensor()).cloned()
            } else {
                None
            },
            if has_prefix {
                grads.get(pvv.as_tensor()).cloned()
            } else {
                None
            },
        ))
    }
}
