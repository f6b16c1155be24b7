//! Where a model runs and the type its frozen backbone computes in: what `--device` and
//! `--dtype` name on every command that builds a model. The adapter's parameters are always
//! kept in [`crate::Params::master_dtype`] of the compute type (f32 beside bf16).

use candle_core::{DType, Device, Result};

/// The device a model runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDevice {
    /// The CPU (candle's thread pool).
    #[default]
    Cpu,
    /// A GPU, in a build with the `cuda` feature: GPU 0, or under a multi-process launcher the
    /// GPU of this process's node-local rank ([`local_gpu`]).
    Cuda,
}

impl ComputeDevice {
    /// Opens the device; for CUDA, an error that says what to check when there is none.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => Device::new_cuda(local_gpu()).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "no CUDA device: this pal was built without the `cuda` feature \
                     (scripts/build_cuda.sh), or the driver found no GPU ({e})"
                ))
            }),
        }
    }
}

/// This process's rank among the processes of its node, as the launchers tell it (OpenMPI,
/// MPICH/Hydra, Slurm, torchrun-style `LOCAL_RANK`); 0 when not launched by one.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}

/// The GPU this process uses: its node-local rank modulo the GPUs it can see, so that the ranks
/// of a node spread over its GPUs (and a launcher that gives each rank one GPU through
/// `CUDA_VISIBLE_DEVICES` still works).
pub fn local_gpu() -> usize {
    let rank = local_rank();
    #[cfg(feature = "cuda")]
    if let Ok(count) = candle_core::cuda::cudarc::driver::CudaContext::device_count() {
        return rank % (count.max(1) as usize);
    }
    rank
}

impl ComputeDevice {
    /// Every device, in the order their names are listed.
    pub const ALL: [Self; 2] = [Self::Cpu, Self::Cuda];

    /// The name `--device` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The entry of `all` named `s` (by `name`), or an error that lists the names; `kind` says what
/// is named (`--device`, `--dtype`).
fn by_name<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
    kind: &str,
) -> std::result::Result<T, String> {
    all.iter().copied().find(|&t| name(t) == s).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|&t| name(t)).collect();
        format!("unknown {kind} '{s}' ({})", names.join(" or "))
    })
}

impl std::str::FromStr for ComputeDevice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        by_name(&Self::ALL, Self::name, s, "device")
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The type the frozen LLM and encoders compute in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDtype {
    /// f32 everywhere.
    #[default]
    F32,
    /// bf16 backbone and encoders; f32 adapter parameters, gradients and loss.
    Bf16,
}

impl ComputeDtype {
    /// Every type, in the order their names are listed.
    pub const ALL: [Self; 2] = [Self::F32, Self::Bf16];

    /// The candle type.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for ComputeDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        by_name(&Self::ALL, Self::name, s, "dtype")
    }
}

impl std::fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--device` and `--dtype` read back what they print, and refuse other words naming the
    /// choices.
    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for device in ComputeDevice::ALL {
            assert_eq!(device.to_string().parse::<ComputeDevice>(), Ok(device));
        }
        for dtype in ComputeDtype::ALL {
            assert_eq!(dtype.to_string().parse::<ComputeDtype>(), Ok(dtype));
        }
        let error = "gpu".parse::<ComputeDevice>().unwrap_err();
        assert!(
            error.contains("'gpu'") && error.contains("cpu or cuda"),
            "{error}"
        );
        let error = "fp8".parse::<ComputeDtype>().unwrap_err();
        assert!(
            error.contains("'fp8'") && error.contains("f32 or bf16"),
            "{error}"
        );
    }

    /// Asking a CPU-only build for CUDA says how to get a CUDA build.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_in_a_cpu_build_says_what_to_build() {
        let error = ComputeDevice::Cuda.open().unwrap_err().to_string();
        assert!(error.contains("scripts/build_cuda.sh"), "{error}");
    }
}
