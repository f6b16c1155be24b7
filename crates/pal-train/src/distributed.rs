//! Data-parallel training across processes. Every rank holds the whole model and takes the same
//! optimizer step; each rank computes the gradients of its slice of every global batch, and the
//! trainable gradients (token-weighted over all ranks) and the step's loss are summed across
//! ranks before the step. N ranks with batch b are one process with batch N*b.
//!
//! [`Collective`] is what training needs from an engine: [`SingleProcess`] (no communication),
//! and with the `mpi` cargo feature [`mpi_engine::MpiWorld`] (OpenMPI or any MPI, launched by
//! `mpirun` or Slurm's `srun`). Sums are reduced on rank 0 and broadcast, so every rank gets the
//! same bits and the ranks' weights never drift apart.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

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
    /// Ends every rank of the job (after an error on this one), with `code`.
    fn abort(&self, code: i32) -> !;
    /// The engine's name, for logs.
    fn engine(&self) -> &'static str;
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
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn engine(&self) -> &'static str {
        "single process"
    }
}

/// Sums the trainable gradients over all ranks, in place: one flat buffer in name order, with
/// zeros for a gradient this rank does not have (a rank whose slice of the batch is empty).
/// Returns the bytes this rank sent.
pub fn sum_gradients(
    collective: &dyn Collective,
    grads: &mut HashMap<String, Tensor>,
    vars: &BTreeMap<String, Var>,
) -> Result<usize, TrainError> {
    if collective.size() == 1 {
        return Ok(0);
    }
    let mut flat: Vec<f32> = Vec::new();
    for (name, var) in vars {
        match grads.get(name) {
            Some(g) => flat.extend(g.flatten_all()?.to_vec1::<f32>()?),
            None => flat.extend(std::iter::repeat_n(0.0, var.elem_count())),
        }
    }
    collective.sum_f32(&mut flat)?;
    let mut offset = 0;
    for (name, var) in vars {
        let n = var.elem_count();
        let values = flat[offset..offset + n].to_vec();
        offset += n;
        grads.insert(
            name.clone(),
            Tensor::from_vec(values, var.shape(), var.device())?,
        );
    }
    Ok(flat.len() * 4)
}

/// The engine this process was launched under: MPI when a launcher started several ranks (and
/// pal was built with the `mpi` feature), else a single process. A multi-rank launch of a build
/// without MPI is an error rather than N independent runs.
pub fn from_launcher() -> Result<Box<dyn Collective>, TrainError> {
    // The job size as the launchers tell it: OpenMPI's mpirun, MPICH/Hydra (PMI), Slurm's srun
    // (a step's task count; not SLURM_NTASKS, which a batch script's own shell also sees).
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|s| s.parse::<usize>().ok());
    #[cfg(feature = "mpi")]
    {
        if launched.is_some_and(|n| n > 1) || std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() {
            return Ok(Box::new(mpi_engine::MpiWorld::initialize()?));
        }
    }
    if let Some(n) = launched.filter(|&n| n > 1) {
        return Err(TrainError::Config(
            std::path::PathBuf::new(),
            format!(
                "launched as one of {n} ranks, but this pal was built without MPI: build it with `cargo build --release --features mpi` (needs libopenmpi-dev)"
            ),
        ));
    }
    Ok(Box::new(SingleProcess))
}

/// The MPI engine (`--features mpi`).
#[cfg(feature = "mpi")]
pub mod mpi_engine {
    use mpi::collective::SystemOperation;
    use mpi::traits::*;

    use super::Collective;
    use crate::TrainError;

    /// `MPI_COMM_WORLD`.
    pub struct MpiWorld {
        // Finalizes MPI when dropped; kept for the life of the run.
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
    }

    impl MpiWorld {
        /// Initializes MPI (once per process).
        pub fn initialize() -> Result<Self, TrainError> {
            let universe = mpi::initialize().ok_or_else(|| {
                TrainError::Config(
                    std::path::PathBuf::new(),
                    "MPI was already initialized in this process".into(),
                )
            })?;
            let world = universe.world();
            Ok(Self {
                _universe: universe,
                world,
            })
        }

        fn sum<T: Equivalence + Copy + Default>(&self, values: &mut [T]) {
            let root = self.world.process_at_rank(0);
            if self.world.rank() == 0 {
                let mut total = vec![T::default(); values.len()];
                root.reduce_into_root(&values[..], &mut total[..], SystemOperation::sum());
                values.copy_from_slice(&total);
            } else {
                root.reduce_into(&values[..], SystemOperation::sum());
            }
            root.broadcast_into(values);
        }
    }

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError> {
            self.sum(values);
            Ok(())
        }
        fn sum_f64(&self, values: &mut [f64]) -> Result<(), TrainError> {
            self.sum(values);
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn engine(&self) -> &'static str {
            "MPI"
        }
    }
}
