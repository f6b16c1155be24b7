//! Data-parallel training across processes. Every rank holds the whole model and takes the same
//! optimizer step; each rank computes the gradients of its slice of every global batch, and the
//! trainable gradients (token-weighted over all ranks) and the step's loss are summed across
//! ranks before the step. N ranks with batch b are one process with batch N*b.
//!
//! [`Collective`] is what training needs from an engine: [`SingleProcess`] (no communication);
//! with the `mpi` cargo feature [`mpi::MpiWorld`] (OpenMPI or any MPI, launched by `mpirun` or
//! Slurm's `srun`), which sums in host memory; with the `nccl` feature [`nccl::NcclWorld`], which
//! sums GPU gradients on the GPUs and leaves host scalars and the NCCL id to MPI.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};
use pal_nn::compute::ComputeDevice;

use crate::TrainError;

/// A group of training processes.
pub trait Collective {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over all ranks, in place; every rank receives the same values.
    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError>;
    /// Element-wise sum over all ranks, in place; every rank receives the same values.
    fn sum_f64(&self, values: &mut [f64]) -> Result<(), TrainError>;
    /// Copies rank 0's `bytes` to every rank (how NCCL's id reaches the other ranks).
    fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<(), TrainError>;
    /// Ends every rank of the job (after an error on this one), with `code`.
    fn abort(&self, code: i32) -> !;
    /// The engine's name, for logs.
    fn engine(&self) -> &'static str;

    /// Element-wise sum over all ranks of a 1-D f32 tensor on the training device; every rank
    /// gets the same values. By default through host memory with [`Collective::sum_f32`];
    /// NCCL sums on the GPU.
    fn sum_tensor(&self, flat: &Tensor) -> Result<Tensor, TrainError> {
        let mut values = flat.to_vec1::<f32>()?;
        self.sum_f32(&mut values)?;
        Ok(Tensor::from_vec(values, flat.elem_count(), flat.device())?)
    }

    /// Whether gradients go through [`Collective::sum_tensor`] even with one rank. With one
    /// rank there is nothing to sum; NCCL sums anyway, so that a one-GPU run exercises the
    /// device path a multi-GPU run takes.
    fn sums_single_rank(&self) -> bool {
        false
    }
}

/// One process: nothing to communicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _values: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }
    fn sum_f64(&self, _values: &mut [f64]) -> Result<(), TrainError> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut [u8]) -> Result<(), TrainError> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn engine(&self) -> &'static str {
        "single process"
    }
}

/// Sums the trainable gradients over all ranks, in place: one flat f32 buffer on the
/// gradients' device in name order, with zeros for a gradient this rank does not have (a rank
/// whose slice of the batch is empty). Returns the bytes this rank sent.
pub fn sum_gradients(
    collective: &dyn Collective,
    grads: &mut HashMap<String, Tensor>,
    vars: &BTreeMap<String, Var>,
) -> Result<usize, TrainError> {
    if collective.size() == 1 && !collective.sums_single_rank() {
        return Ok(0);
    }
    let parts = vars
        .iter()
        .map(|(name, var)| match grads.get(name) {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all(),
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device()),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    if parts.is_empty() {
        return Ok(0);
    }
    let summed = collective.sum_tensor(&Tensor::cat(&parts, 0)?)?;
    let mut offset = 0;
    for (name, var) in vars {
        let n = var.elem_count();
        let grad = summed
            .narrow(0, offset, n)?
            .reshape(var.shape())?
            .to_dtype(var.dtype())?;
        offset += n;
        grads.insert(name.clone(), grad);
    }
    Ok(offset * 4)
}

/// The job size as the launchers tell it: OpenMPI's mpirun, MPICH/Hydra (PMI), Slurm's srun (a
/// step's task count; not SLURM_NTASKS, which a batch script's own shell also sees).
fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|s| s.parse::<usize>().ok())
}

/// The engine this process was launched under, for training on `device`: MPI when a launcher
/// started several ranks (and pal was built with the `mpi` feature), else a single process; on
/// CUDA in a build with the `nccl` feature, NCCL sums the gradients on the GPUs (MPI still
/// carries the NCCL id and the host scalars). A multi-rank launch of a build without MPI is an
/// error rather than N independent runs.
pub fn from_launcher(device: ComputeDevice) -> Result<Box<dyn Collective>, TrainError> {
    let host = host_collective()?;
    #[cfg(feature = "nccl")]
    if device == ComputeDevice::Cuda {
        return Ok(Box::new(nccl::NcclWorld::new(host)?));
    }
    let _ = device; // only an NCCL build sums on the device
    Ok(host)
}

/// MPI or a single process, as launched.
fn host_collective() -> Result<Box<dyn Collective>, TrainError> {
    let launched = launched_ranks();
    #[cfg(feature = "mpi")]
    {
        if launched.is_some_and(|n| n > 1) || std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() {
            return Ok(Box::new(mpi::MpiWorld::initialize()?));
        }
    }
    if let Some(n) = launched.filter(|&n| n > 1) {
        return Err(TrainError::Distributed(format!(
            "launched as one of {n} ranks, but this pal was built without MPI: build it with `cargo build --release --features mpi` (needs libopenmpi-dev)"
        )));
    }
    Ok(Box::new(SingleProcess))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two ranks in one process: the sum of both ranks' values, as an engine gives it.
    struct PairedRanks(Vec<f32>);

    impl Collective for PairedRanks {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError> {
            for (v, other) in values.iter_mut().zip(&self.0) {
                *v += other;
            }
            Ok(())
        }
        fn sum_f64(&self, _values: &mut [f64]) -> Result<(), TrainError> {
            unreachable!("not used by sum_gradients")
        }
        fn broadcast_bytes(&self, _bytes: &mut [u8]) -> Result<(), TrainError> {
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
        fn engine(&self) -> &'static str {
            "test pair"
        }
    }

    #[test]
    fn gradients_are_summed_by_name_with_zeros_for_a_rank_without_them() {
        let device = Device::Cpu;
        let vars: BTreeMap<String, Var> = [
            ("a.weight", Var::zeros((2, 2), DType::F32, &device).unwrap()),
            ("b.bias", Var::zeros(3, DType::F32, &device).unwrap()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        // This rank has a gradient for `a.weight` only; the other rank has both.
        let mut grads = HashMap::from([(
            "a.weight".to_string(),
            Tensor::new(&[[1f32, 2.], [3., 4.]], &device).unwrap(),
        )]);
        let other = PairedRanks(vec![10., 20., 30., 40., 5., 6., 7.]);
        let bytes = sum_gradients(&other, &mut grads, &vars).unwrap();
        assert_eq!(bytes, 7 * 4);
        assert_eq!(
            grads["a.weight"].to_vec2::<f32>().unwrap(),
            vec![vec![11., 22.], vec![33., 44.]]
        );
        assert_eq!(grads["b.bias"].to_vec1::<f32>().unwrap(), vec![5., 6., 7.]);
        assert_eq!(grads["b.bias"].dims(), &[3]);
    }

    #[test]
    fn one_process_sends_nothing() {
        let device = Device::Cpu;
        let vars = BTreeMap::from([("a".to_string(), Var::zeros(2, DType::F32, &device).unwrap())]);
        let g = Tensor::new(&[1f32, 2.], &device).unwrap();
        let mut grads = HashMap::from([("a".to_string(), g)]);
        assert_eq!(sum_gradients(&SingleProcess, &mut grads, &vars).unwrap(), 0);
        assert_eq!(grads["a"].to_vec1::<f32>().unwrap(), vec![1., 2.]);
    }
}
