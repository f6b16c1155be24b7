//! A named store of trainable parameters (candle `Var`s) with deterministic initialisation, and
//! safetensors save/load. Adapter weights (projectors, connectors, LoRA) live here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::gradcheck::pseudo_random;
use crate::Linear;

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Uniform in `[-bound, bound]`.
    Uniform(f64),
}

/// Trainable parameters by name. The value of a new parameter depends only on the store's seed
/// and its name, so the order in which modules are built does not matter.
pub struct Params {
    vars: Mutex<BTreeMap<String, Var>>,
    seed: u64,
    dtype: DType,
    device: Device,
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Params {
    /// The type trained parameters are kept in for a model computing in `compute`: f32 master
    /// copies for a half-precision (bf16, f16) backbone, whose rounding would swallow small
    /// optimizer updates; else `compute` itself (f32, or f64 for gradient checks).
    pub fn master_dtype(compute: DType) -> DType {
        match compute {
            DType::BF16 | DType::F16 => DType::F32,
            other => other,
        }
    }

    /// The type parameters are created in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device parameters are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty store.
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            vars: Mutex::new(BTreeMap::new()),
            seed,
            dtype,
            device: device.clone(),
        }
    }

    /// The parameter `name`, created with `init` if it does not exist yet.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let mut vars = self.vars.lock().expect("params lock");
        if let Some(v) = vars.get(name) {
            if v.dims() != shape {
                candle_core::bail!(
                    "parameter {name} has shape {:?}, requested {shape:?}",
                    v.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let n: usize = shape.iter().product();
        let values: Vec<f64> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Uniform(bound) => pseudo_random(n, self.seed ^ name_hash(name))
                .iter()
                .map(|u| u * bound)
                .collect(),
        };
        let t = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    /// A trainable linear layer `in_dim -> out_dim` named `{name}.weight` / `{name}.bias`, with
    /// PyTorch's default initialisation (uniform in `±1/sqrt(in_dim)`).
    pub fn linear(&self, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = self.get(
            &format!("{name}.weight"),
            &[out_dim, in_dim],
            Init::Uniform(bound),
        )?;
        let bias = if bias {
            Some(self.get(&format!("{name}.bias"), &[out_dim], Init::Uniform(bound))?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }

    /// Makes an existing tensor a trainable parameter named `name` (for tuning pretrained
    /// weights); returns the `Var`'s tensor, which must replace the original in the model.
    pub fn adopt(&self, name: &str, tensor: &Tensor) -> Result<Tensor> {
        let mut vars = self.vars.lock().expect("params lock");
        if let Some(v) = vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let var = Var::from_tensor(&tensor.to_dtype(self.dtype)?)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    /// All parameters, by name.
    pub fn vars(&self) -> BTreeMap<String, Var> {
        self.vars.lock().expect("params lock").clone()
    }

    /// Total number of trainable scalars.
    pub fn count(&self) -> usize {
        self.vars
            .lock()
            .expect("params lock")
            .values()
            .map(|v| v.elem_count())
            .sum()
    }

    /// Writes all parameters to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, path)
    }

    /// Sets every existing parameter from a safetensors file; a missing or mis-shaped tensor is an
    /// error naming it, and so is a tensor in the file that no parameter has.
    pub fn load(&self, path: &Path) -> Result<()> {
        let loaded = candle_core::safetensors::load(path, &self.device)?;
        let vars = self.vars.lock().expect("params lock");
        for (name, var) in vars.iter() {
            let t = loaded.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: parameter {name} is missing", path.display()))
            })?;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "{}: parameter {name} has shape {:?}, the model needs {:?}",
                    path.display(),
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(self.dtype)?)?;
        }
        if let Some(extra) = loaded.keys().find(|k| !vars.contains_key(*k)) {
            candle_core::bail!(
                "{}: tensor {extra} belongs to no parameter of this model",
                path.display()
            );
        }
        Ok(())
    }
}
