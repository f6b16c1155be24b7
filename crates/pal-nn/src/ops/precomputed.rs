use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Result, Shape, Storage, Tensor};

/// The output of a graph node whose forward ran before the node was applied, outside the graph
/// (nodes with a written-out backward: checkpointed and frozen layers, the LAL prefix, the loss).
/// The node's op forward hands it over to candle, once.
pub struct Precomputed {
    name: &'static str,
    output: Mutex<Option<Tensor>>,
}

impl Precomputed {
    /// Holds `output` for the node `name` (named in errors).
    pub fn new(name: &'static str, output: Tensor) -> Self {
        Self {
            name,
            output: Mutex::new(Some(output)),
        }
    }

    fn take(&self) -> Result<Tensor> {
        self.output
            .lock()
            .expect("precomputed output lock")
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: output used twice", self.name)))?
            .contiguous()
    }

    /// The output as a CPU op forward returns it.
    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, y.shape().clone())),
            _ => candle_core::bail!("{}: output on another device", self.name),
        }
    }

    /// The output as a CUDA op forward returns it.
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, y.shape().clone())),
            _ => candle_core::bail!("{}: output on another device", self.name),
        }
    }
}
