//! The NCCL engine (`--features nccl`, a CUDA build): the gradients are summed on the GPUs by
//! NCCL's all-reduce, on the stream candle computes them on, so they never visit host memory.
//! The loss and token counts (host scalars) and the NCCL id go through the host engine: MPI
//! under `mpirun`/`srun`, nothing for one process. Each rank uses its node-local GPU
//! ([`pal_nn::compute::ComputeDevice::open`]).

use std::cell::OnceCell;
use std::ffi::c_char;

use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};

use super::Collective;
use crate::TrainError;

/// NCCL for the gradients, `host` for everything else.
pub struct NcclWorld {
    host: Box<dyn Collective>,
    id: Id,
    // Made on the first sum, on the stream of the device the gradients live on (every rank sums
    // at its first step, so the ranks join together).
    comm: OnceCell<Comm>,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Distributed(format!(
        "NCCL {what} failed: {e:?} (is libnccl.so.2 on LD_LIBRARY_PATH, and does every rank have a GPU of its own?)"
    ))
}

impl NcclWorld {
    /// Rank 0 creates the NCCL id and `host` broadcasts it.
    pub fn new(host: Box<dyn Collective>) -> Result<Self, TrainError> {
        let mut bytes = [0u8; 128];
        if host.rank() == 0 {
            let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
            for (b, &c) in bytes.iter_mut().zip(id.internal()) {
                *b = c as u8;
            }
        }
        host.broadcast_bytes(&mut bytes)?;
        Ok(Self {
            host,
            id: Id::uninit(bytes.map(|b| b as c_char)),
            comm: OnceCell::new(),
        })
    }

    fn comm(&self, device: &CudaDevice) -> Result<&Comm, TrainError> {
        if self.comm.get().is_none() {
            let comm = Comm::from_rank(device.cuda_stream(), self.rank(), self.size(), self.id)
                .map_err(|e| nccl_error("ncclCommInitRank", e))?;
            let _ = self.comm.set(comm);
        }
        Ok(self.comm.get().expect("set above"))
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn size(&self) -> usize {
        self.host.size()
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError> {
        self.host.sum_f32(values)
    }
    fn sum_f64(&self, values: &mut [f64]) -> Result<(), TrainError> {
        self.host.sum_f64(values)
    }
    fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<(), TrainError> {
        self.host.broadcast_bytes(bytes)
    }
    fn abort(&self, code: i32) -> ! {
        self.host.abort(code)
    }
    fn engine(&self) -> &'static str {
        "NCCL"
    }

    fn sum_tensor(&self, flat: &Tensor) -> Result<Tensor, TrainError> {
        let Device::Cuda(device) = flat.device() else {
            return self.host.sum_tensor(flat);
        };
        let flat = flat.contiguous()?;
        let (storage, layout) = flat.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            unreachable!("a tensor on a CUDA device has CUDA storage")
        };
        let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
        let values = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut summed = device.alloc_zeros::<f32>(end - start)?;
        self.comm(device)?
            .all_reduce(&values, &mut summed, &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
        let summed = CudaStorage::wrap_cuda_slice(summed, device.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(summed),
            flat.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }

    fn sums_single_rank(&self) -> bool {
        true
    }
}
