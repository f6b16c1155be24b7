//! AdamW with decoupled weight decay, gradient clipping by global norm, and a linear-warmup
//! cosine learning-rate schedule. The optimizer state is saved with every checkpoint.

use std::collections::{BTreeMap, HashMap};

use candle_core::{backprop::GradStore, Result, Tensor, Var};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named variables.
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every variable that has a gradient in `grads`, at learning rate `lr`.
    pub fn step(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (name, var) in vars {
            let Some(g) = grads.get(name) else { continue };
            let (m, v) = match self.moments.remove(name) {
                Some(mv) => mv,
                None => (var.zeros_like()?, var.zeros_like()?),
            };
            let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.moments.insert(name.clone(), (m, v));
        }
        Ok(())
    }

    /// The state as named tensors (`NAME.m`, `NAME.v`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, (m, v)) in &self.moments {
            out.insert(format!("{name}.m"), m.clone());
            out.insert(format!("{name}.v"), v.clone());
        }
        out
    }

    /// Restores moments from [`Self::state_tensors`] output and the step count.
    pub fn restore(&mut self, step: u64, mut tensors: HashMap<String, Tensor>) -> Result<()> {
        self.step = step;
        self.moments.clear();
        let names: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".m").map(str::to_string))
            .collect();
        for name in names {
            let m = tensors.remove(&format!("{name}.m")).expect("listed");
            let v = tensors.remove(&format!("{name}.v")).ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state for {name} has m but no v"))
            })?;
            self.moments.insert(name, (m, v));
        }
        Ok(())
    }
}

/// The gradients of `vars` in `store`, by name (variables without a gradient are left out).
pub fn named_grads(vars: &BTreeMap<String, Var>, store: &GradStore) -> HashMap<String, Tensor> {
    vars.iter()
        .filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone())))
        .collect()
}

/// Adds `more` into `acc` (gradient accumulation).
pub fn accumulate(acc: &mut HashMap<String, Tensor>, more: HashMap<String, Tensor>) -> Result<()> {
    for (name, g) in more {
        let sum = match acc.remove(&name) {
            Some(a) => (a + g)?,
            None => g,
        };
        acc.insert(name, sum);
    }
    Ok(())
}

/// Scales gradients so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut total = 0.0;
    for g in grads.values() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// Learning rate at `step` (0-based) of `total`: linear warmup over `warmup` steps to `peak`, then
/// cosine decay to `peak * min_ratio`.
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_at(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!(lr_at(50, 100, 10, 1.0, 0.1) < lr_at(30, 100, 10, 1.0, 0.1));
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_bounds_the_norm() {
        let x = Var::from_tensor(&Tensor::new(&[3.0f64, -2.0], &Device::Cpu).unwrap()).unwrap();
        let vars = BTreeMap::from([("x".to_string(), x.clone())]);
        let mut opt = AdamW::new(AdamWConfig::default());
        for _ in 0..500 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = named_grads(&vars, &loss.backward().unwrap());
            opt.step(&vars, &grads, 0.05).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f64>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        let mut g = HashMap::from([(
            "a".to_string(),
            Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap(),
        )]);
        assert_eq!(clip_grad_norm(&mut g, 1.0).unwrap(), 5.0);
        let n = g["a"]
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt();
        assert!((n - 1.0).abs() < 1e-5);
    }
}
