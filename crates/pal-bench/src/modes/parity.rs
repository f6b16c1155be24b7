//! The parity check made before PyTorch is timed: pal runs one training step and writes its
//! frozen LLM weights, the adapter, the inputs, the loss and the adapter's gradients to a
//! safetensors file; `scripts/bench_modes_torch.py --parity FILE` loads them into its own model,
//! runs its step and compares. Timing two programs is only fair once both compute the same thing.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pal_models::audio_llm::{Padding, Route};
use pal_models::llm::layer::LINEAR_NAMES;
use pal_models::text::Segment;
use pal_nn::Params;
use serde::{Deserialize, Serialize};

use super::measure::{examples, model};
use super::Setup;

/// What the reference script reports of one comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parity {
    /// `plits` or `lal`.
    pub mode: String,
    /// pal's loss.
    pub loss_pal: f64,
    /// PyTorch's loss on the same weights and inputs.
    pub loss_torch: f64,
    /// |loss_torch - loss_pal| / |loss_pal|.
    pub loss_relative_error: f64,
    /// The largest, over the adapter's tensors, of max|g_pal - g_torch| / max|g_torch| (PyTorch
    /// in f32).
    pub gradient_relative_error: f64,
    /// The tensor where that is.
    pub worst_gradient: String,
    /// The same measure of pal's gradients against PyTorch's step in f64.
    pub pal_error_vs_f64: f64,
    /// The same measure of PyTorch's f32 gradients against its step in f64: f32 rounding alone.
    pub torch_error_vs_f64: f64,
    /// Adapter tensors compared.
    pub gradients_compared: usize,
    /// The losses within 1e-4 (relative) and pal's gradients within 2e-3 of the f64 step, or no
    /// further from it than twice PyTorch's f32 gradients.
    pub ok: bool,
}

/// Runs one training step of `route` at `na` encoder tokens and writes everything the reference
/// needs to repeat it to `path`: `llm.*` (frozen weights under their on-disk names), `adapter.*`
/// and `grad.*` (each trainable tensor and its gradient, under pal's names), `frames`, `ids`,
/// `loss`.
pub fn write_step(setup: &Setup, route: Route, na: usize, path: &Path) -> anyhow::Result<()> {
    let params = Params::new(0, DType::F32, &Device::Cpu);
    let model = model(setup, route, &params)?;
    let llm = &model.llm;
    let examples = examples(setup, llm.config.vocab_size, setup.batch, na, true)?;
    let mut batch = model.prepare(&examples, Padding::Right)?;
    let (loss, _) = model.loss(&mut batch)?;
    let grads = loss.backward()?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("llm.embed_tokens".into(), llm.embed_tokens.clone());
    tensors.insert("llm.norm".into(), llm.norm.clone());
    tensors.insert("llm.lm_head".into(), llm.lm_head.weight.clone());
    for (i, layer) in llm.layers.iter().enumerate() {
        anyhow::ensure!(
            layer.q_norm.is_none() && layer.linears().iter().all(|l| l.bias.is_none()),
            "the parity check covers Llama layers without biases or q/k norms"
        );
        let p = format!("llm.layers.{i}");
        tensors.insert(
            format!("{p}.input_layernorm"),
            layer.input_layernorm.clone(),
        );
        tensors.insert(
            format!("{p}.post_attention_layernorm"),
            layer.post_attention_layernorm.clone(),
        );
        for (name, linear) in LINEAR_NAMES.iter().zip(layer.linears()) {
            tensors.insert(format!("{p}.{name}"), linear.weight.clone());
        }
    }
    for (name, var) in params.vars() {
        // Parameters of a route not taken (none today) get no gradient and are not compared.
        if let Some(grad) = grads.get(var.as_tensor()) {
            tensors.insert(format!("adapter.{name}"), var.as_tensor().clone());
            tensors.insert(format!("grad.{name}"), grad.clone());
        }
    }
    let frames: Vec<&Tensor> = examples.iter().map(|e| &e.first_clip()[0]).collect();
    tensors.insert("frames".into(), Tensor::stack(&frames, 0)?);
    let ids: Vec<i64> = examples
        .iter()
        .flat_map(|e| match &e.segments[1] {
            Segment::Text { ids, .. } => ids.iter().map(|&t| t as i64).collect(),
            _ => vec![],
        })
        .collect();
    tensors.insert(
        "ids".into(),
        Tensor::from_vec(ids, (setup.batch, setup.text_tokens), &Device::Cpu)?,
    );
    tensors.insert("loss".into(), loss.detach().reshape(1)?);
    for t in tensors.values_mut() {
        if t.dtype() != DType::I64 {
            *t = t.to_dtype(DType::F32)?.contiguous()?;
        }
    }
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}
