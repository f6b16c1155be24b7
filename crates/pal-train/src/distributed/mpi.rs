//! The MPI engine (`--features mpi`): `MPI_COMM_WORLD` of a job started by `mpirun` or `srun`.
//! Sums are reduced on rank 0 and broadcast, so every rank gets the same bits and the ranks'
//! weights never drift apart.

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
            TrainError::Distributed("MPI was already initialized in this process".into())
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
    fn broadcast_bytes(&self, bytes: &mut [u8]) -> Result<(), TrainError> {
        self.world.process_at_rank(0).broadcast_into(bytes);
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn engine(&self) -> &'static str {
        "MPI"
    }
}
