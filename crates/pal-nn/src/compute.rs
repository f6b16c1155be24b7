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

/// The type the frozen LLM and encoders compute in (`--dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDtype {
    /// bf16 where the hardware multiplies it fastest, f32 elsewhere: on the CPU, bf16
    /// products when it has AMX; on a GPU, f32.
    #[default]
    Auto,
    /// f32 everywhere.
    F32,
    /// bf16 backbone and encoders; f32 adapter parameters, gradients and loss. On the CPU: the
    /// frozen backbone's products in bf16 with f32 accumulation, everything else in f32.
    Bf16,
}

/// What a model computes in, once `--dtype` meets a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    /// The candle type of the frozen backbone's tensors.
    pub dtype: DType,
    /// Whether the frozen backbone's products run in bf16 on the CPU's kernels
    /// ([`crate::ops::bf16`]), its tensors staying f32.
    pub bf16_products: bool,
    /// Whether inference holds LAL prefixes (a clip's audio keys and values) packed in bf16 and
    /// attends over them on the CPU's bf16 kernel ([`crate::ops::bf16::prefix`]): half the
    /// memory of f32 and half the bytes each decoded token reads, which bound a long
    /// recording's cost. Wherever a bf16 kernel exists (AVX2's included) unless `--dtype f32`.
    pub bf16_prefix: bool,
}

impl ComputeDtype {
    /// Every type, in the order their names are listed.
    pub const ALL: [Self; 3] = [Self::Auto, Self::F32, Self::Bf16];

    /// What this means on `device`. On the CPU, `bf16` means bf16 products on a bf16 product
    /// instruction (AVX512-BF16 or AMX; without one, f32: widened bf16 would be slower and no
    /// more exact), and `auto` means bf16 products where they are faster than f32: on AMX
    /// (pal's AVX512-BF16 kernel is not, on the CPUs measured: `docs/bench/matmul.md`). Both
    /// hold LAL prefixes in bf16 wherever a bf16 kernel exists ([`Precision::bf16_prefix`]).
    pub fn precision(self, device: ComputeDevice) -> Precision {
        use crate::ops::bf16::{cpu, prefix, Bf16Kernel};
        let products = match self {
            Self::Auto => cpu::chosen() == Bf16Kernel::Amx,
            _ => cpu::chosen() >= Bf16Kernel::Avx512,
        };
        match (self, device) {
            (Self::F32, _) | (Self::Auto, ComputeDevice::Cuda) => Precision {
                dtype: DType::F32,
                bf16_products: false,
                bf16_prefix: false,
            },
            (Self::Bf16, ComputeDevice::Cuda) => Precision {
                dtype: DType::BF16,
                bf16_products: false,
                bf16_prefix: false,
            },
            (Self::Bf16 | Self::Auto, ComputeDevice::Cpu) => Precision {
                dtype: DType::F32,
                bf16_products: products,
                bf16_prefix: prefix::available(),
            },
        }
    }

    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl Precision {
    /// In words, for logs and reports: `f32`, `bf16`, or `f32 with bf16 products (amx)`.
    pub fn describe(&self) -> String {
        if self.bf16_products {
            format!(
                "f32 with bf16 products ({})",
                crate::ops::bf16::cpu::chosen().name()
            )
        } else if self.dtype == DType::BF16 {
            "bf16".into()
        } else {
            "f32".into()
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
            error.contains("'fp8'") && error.contains("auto or f32 or bf16"),
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
