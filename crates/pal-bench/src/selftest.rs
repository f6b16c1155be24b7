//! `pal selftest [--device cuda]`: whether pal computes correctly on a device. Every custom op
//! (forward and gradients), a training step of each route (loss and every adapter gradient,
//! through the frozen-layer and LAL-prefix nodes, with checkpointed layers, and gated LAL), and a
//! short greedy generation run on the device in f32 and on the CPU in f64, from the same inputs and
//! weights; each check reports its largest error relative to the reference's largest value.
//! On the CPU it checks pal's fused f32 kernels against the f64 reference.

use candle_core::{DType, Device, Tensor, Var};
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Padding, Route};
use pal_models::text::Segment;
use pal_models::{Llama, LlamaConfig};
use pal_nn::gradcheck::pseudo_random;
use pal_nn::ops::{
    batched_matmul, cross_entropy, frozen_linear, linear_cross_entropy, matmul, rms_norm, rope,
    scaled_masked_softmax,
};
use pal_nn::{attention, causal_mask, Params};
use serde::Serialize;

/// Largest relative error of an f32 op against f64 (a few hundred f32 roundings).
const OP_TOLERANCE: f64 = 1e-4;
/// Largest relative error of a training step's loss and gradients (a 2-layer model, f32).
const STEP_TOLERANCE: f64 = 1e-3;
/// A training step with a bf16 backbone (8-bit mantissa: about 4e-3 per rounding) and f32
/// adapters, against f64; also a step whose backbone products run in bf16 on the CPU.
const BF16_STEP_TOLERANCE: f64 = 5e-2;
/// A bf16 product (inputs rounded to bf16, f32 sums) against f64.
const BF16_PRODUCT_TOLERANCE: f64 = 2e-2;

/// How a check's backbone computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backbone {
    /// In the device's f32.
    F32,
    /// In bf16 tensors (the GPU path; on the CPU correct but slow).
    Bf16,
    /// f32 tensors, products on this CPU kernel in bf16.
    Bf16Products(pal_nn::ops::bf16::Bf16Kernel),
}

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// Largest error relative to the reference's largest absolute value.
    pub error: f64,
    /// The most it may be.
    pub tolerance: f64,
}

impl Check {
    /// Whether the error is within the tolerance.
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// Every check on one device.
#[derive(Debug, Serialize)]
pub struct SelfTest {
    /// The device, as candle names it.
    pub device: String,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The CPU's bf16 product kernels, each checked (`portable` always; `avx2`, `avx512-bf16`,
    /// `amx` where the CPU has them).
    pub bf16_kernels: Vec<String>,
}

impl SelfTest {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    /// The checks as a markdown table.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "pal selftest on {} (f32, and bf16 backbones with f32 adapters) against the CPU (f64); bf16 kernels this CPU has: {}\n\n| check | error | tolerance | |\n|---|---|---|---|\n",
            self.device,
            self.bf16_kernels.join(", ")
        );
        for c in &self.checks {
            let verdict = if c.passed() { "pass" } else { "FAIL" };
            md.push_str(&format!(
                "| {} | {:.2e} | {:.0e} | {verdict} |\n",
                c.name, c.error, c.tolerance
            ));
        }
        let failed = self.checks.iter().filter(|c| !c.passed()).count();
        md.push_str(&format!(
            "\n{} checks, {failed} failed\n",
            self.checks.len()
        ));
        md
    }
}

/// Runs every check on `device`.
pub fn run(device: &Device) -> anyhow::Result<SelfTest> {
    let mut checks = vec![];
    checks.extend(ops(device)?);
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        checks.extend(training_step(device, route, false, false, Backbone::F32)?);
    }
    checks.extend(training_step(
        device,
        Route::Lal,
        true,
        false,
        Backbone::F32,
    )?);
    checks.extend(training_step(
        device,
        Route::Lal,
        false,
        true,
        Backbone::F32,
    )?);
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        checks.extend(training_step(device, route, false, false, Backbone::Bf16)?);
    }
    if device.is_cpu() {
        use pal_nn::ops::bf16::{cpu, Bf16Kernel};
        let chosen = cpu::chosen();
        for kernel in Bf16Kernel::ALL.into_iter().filter(|k| k.available()) {
            checks.push(bf16_product(kernel)?);
            cpu::use_kernel(kernel);
            for route in [Route::Plits, Route::Lal, Route::Pal] {
                let step =
                    training_step(device, route, false, false, Backbone::Bf16Products(kernel));
                checks.extend(step?);
            }
        }
        cpu::use_kernel(chosen);
    }
    checks.push(generation(device)?);
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        checks.push(nccl_gradient_sum(device)?);
    }
    let bf16_kernels = pal_nn::ops::bf16::Bf16Kernel::ALL
        .into_iter()
        .filter(|k| k.available())
        .map(|k| k.name().to_string())
        .collect();
    Ok(SelfTest {
        device: format!("{device:?}"),
        checks,
        bf16_kernels,
    })
}

/// Largest `|a - b|` relative to `max |b|` (at least 1e-6), both brought to the CPU in f64.
fn relative_error(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-6);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

/// An input of an op check: its shape and whether its gradient is compared.
struct Input(&'static [usize], bool);

/// Runs `op` on the device in f32 and on the CPU in f64 and compares its output and, through a
/// fixed random projection of the output, the gradient of every input marked trainable.
fn compare(
    name: &str,
    device: &Device,
    inputs: &[Input],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> anyhow::Result<Vec<Check>> {
    let mut runs = vec![];
    for (device, dtype) in [(device.clone(), DType::F32), (Device::Cpu, DType::F64)] {
        let mut vars = vec![];
        let mut tensors = vec![];
        for (i, Input(shape, trainable)) in inputs.iter().enumerate() {
            let n = shape.iter().product();
            let t = Tensor::from_vec(pseudo_random(n, 17 + i as u64), *shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(&device)?;
            if *trainable {
                let var = Var::from_tensor(&t)?;
                tensors.push(var.as_tensor().clone());
                vars.push(var);
            } else {
                tensors.push(t);
            }
        }
        let y = op(&tensors)?;
        let mut grads = vec![];
        if !vars.is_empty() {
            let r = Tensor::from_vec(pseudo_random(y.elem_count(), 99), y.shape(), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(&device)?;
            let store = (&y * r)?.sum_all()?.backward()?;
            for var in &vars {
                let g = store.get(var.as_tensor());
                grads.push(
                    g.cloned()
                        .ok_or_else(|| anyhow::anyhow!("{name}: no gradient"))?,
                );
            }
        }
        runs.push((y, grads));
    }
    let (device_run, reference) = (&runs[0], &runs[1]);
    let mut checks = vec![Check {
        name: format!("{name}: output"),
        error: relative_error(&device_run.0, &reference.0)?,
        tolerance: OP_TOLERANCE,
    }];
    for (i, (g, r)) in device_run.1.iter().zip(&reference.1).enumerate() {
        checks.push(Check {
            name: format!("{name}: gradient of input {i}"),
            error: relative_error(g, r)?,
            tolerance: OP_TOLERANCE,
        });
    }
    Ok(checks)
}

/// Targets for the cross-entropy checks.
fn targets(rows: usize, vocab: usize, device: &Device) -> candle_core::Result<Tensor> {
    let t: Vec<u32> = (0..rows).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    Tensor::from_vec(t, rows, device)
}

/// The custom ops, forward and gradients.
fn ops(device: &Device) -> anyhow::Result<Vec<Check>> {
    let mut checks = vec![];
    checks.extend(compare(
        "rms_norm",
        device,
        &[Input(&[6, 64], true), Input(&[64], true)],
        |t| rms_norm(&t[0], &t[1], 1e-5),
    )?);
    checks.extend(compare(
        "scaled_masked_softmax",
        device,
        &[Input(&[2, 4, 16], true)],
        |t| scaled_masked_softmax(&t[0], None, 0.5),
    )?);
    checks.extend(compare(
        "rope",
        device,
        &[
            Input(&[2, 4, 8, 16], true),
            Input(&[2, 8, 8], false),
            Input(&[2, 8, 8], false),
        ],
        |t| rope(&t[0], &t[1], &t[2]),
    )?);
    checks.extend(compare(
        "attention (grouped heads, causal)",
        device,
        &[
            Input(&[2, 4, 8, 16], true),
            Input(&[2, 2, 8, 16], true),
            Input(&[2, 2, 8, 16], true),
        ],
        |t| {
            let mask = causal_mask(8, 8, None, t[0].dtype(), t[0].device())?;
            attention(&t[0], &t[1], &t[2], Some(&mask), 0.25)
        },
    )?);
    checks.extend(compare(
        "cross_entropy",
        device,
        &[Input(&[6, 32], true)],
        |t| cross_entropy(&t[0], &targets(6, 32, t[0].device())?),
    )?);
    checks.extend(compare(
        "linear_cross_entropy",
        device,
        &[Input(&[6, 16], true), Input(&[32, 16], false)],
        |t| linear_cross_entropy(&t[0], &t[1], &targets(6, 32, t[0].device())?),
    )?);
    checks.extend(compare(
        "frozen_linear",
        device,
        &[Input(&[5, 16], true), Input(&[24, 16], false)],
        |t| frozen_linear(&t[0], &t[1]),
    )?);
    checks.extend(compare(
        "matmul",
        device,
        &[Input(&[5, 16], false), Input(&[16, 24], false)],
        |t| matmul(&t[0], &t[1]),
    )?);
    checks.extend(compare(
        "batched_matmul",
        device,
        &[Input(&[2, 3, 5, 16], false), Input(&[2, 3, 16, 7], false)],
        |t| batched_matmul(&t[0], &t[1]),
    )?);
    Ok(checks)
}

/// A two-layer model small enough for f64 on the CPU, with SmolLM2's grouped heads.
fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        model_type: "llama".into(),
        vocab_size: 96,
        hidden_size: 48,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        hidden_act: Default::default(),
        sandwich_norms: false,
        embedding_scale: None,
        sliding_window: None,
    }
}

/// The tiny model with one 16-wide encoder on `route`, on `device` in `dtype` (the adapter in
/// its master type, f32 beside bf16); with `gated`,
/// gated LAL with its gates opened to 0.5 (at their initial 0 no gradient would reach the LAL
/// projectors).
fn tiny_model(
    route: Route,
    device: &Device,
    dtype: DType,
    gated: bool,
) -> anyhow::Result<(AudioLlm, Params)> {
    let llm = Llama::seeded(tiny_config(), 5, dtype, device)?;
    let params = Params::new(3, Params::master_dtype(dtype), device);
    let mut attachment = Attachment::new("audio", 16, route);
    attachment.lal.gate = gated;
    let model = AudioLlm::new(llm, &[attachment], &params)?;
    for (name, var) in params.vars() {
        if name.ends_with(".gate") {
            var.set(&(var.ones_like()? * 0.5)?)?;
        }
    }
    Ok((model, params))
}

/// Two examples of different clip and text lengths (`long`: long enough that every product has
/// at least 32 rows).
fn tiny_examples(device: &Device, dtype: DType, long: bool) -> anyhow::Result<Vec<Example>> {
    let lengths: &[(usize, usize)] = if long {
        &[(36, 30), (44, 24)]
    } else {
        &[(6, 9), (10, 5)]
    };
    lengths
        .iter()
        .enumerate()
        .map(|(i, &(frames, text))| {
            let audio = Tensor::from_vec(
                pseudo_random(frames * 16, 40 + i as u64),
                (frames, 16),
                &Device::Cpu,
            )?
            .to_dtype(dtype)?
            .to_device(device)?;
            let ids = (0..text)
                .map(|t| ((t * 11 + i * 5 + 1) % 96) as u32)
                .collect();
            Ok(Example::one_clip(
                vec![Segment::Audio, Segment::Text { ids, trained: true }],
                vec![audio],
            ))
        })
        .collect()
}

/// A `(72, 100) x (100, 90)` product on a bf16 kernel against f64 (both layouts it packs: the
/// forward's and the input gradient's).
fn bf16_product(kernel: pal_nn::ops::bf16::Bf16Kernel) -> anyhow::Result<Check> {
    use pal_nn::ops::bf16::{product_on, Bf16Weight};
    let (m, k, n) = (72, 100, 90);
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let x = f32s(pseudo_random(m * k, 7));
    let w = f32s(pseudo_random(n * k, 8));
    let weights = Bf16Weight::new(&w, n, k);
    let forward = product_on(kernel, &x, m, &weights.forward);
    let g = f32s(pseudo_random(m * n, 9));
    let backward = product_on(kernel, &g, m, &weights.backward);
    let xt = Tensor::from_vec(x, (m, k), &Device::Cpu)?.to_dtype(DType::F64)?;
    let wt = Tensor::from_vec(w, (n, k), &Device::Cpu)?.to_dtype(DType::F64)?;
    let gt = Tensor::from_vec(g, (m, n), &Device::Cpu)?.to_dtype(DType::F64)?;
    let error = relative_error(
        &Tensor::from_vec(forward, (m, n), &Device::Cpu)?,
        &xt.matmul(&wt.t()?)?,
    )?
    .max(relative_error(
        &Tensor::from_vec(backward, (m, k), &Device::Cpu)?,
        &gt.matmul(&wt)?,
    )?);
    Ok(Check {
        name: format!(
            "bf16 product on the {} kernel (x W^T and g W)",
            kernel.name()
        ),
        error,
        tolerance: BF16_PRODUCT_TOLERANCE,
    })
}

/// One training step of `route` with the backbone computing as `backbone` on `device`: the loss
/// and every adapter gradient, against the CPU in f64. The bf16-product step runs longer examples
/// (products of more rows than one tile).
fn training_step(
    device: &Device,
    route: Route,
    checkpointed: bool,
    gated: bool,
    backbone: Backbone,
) -> anyhow::Result<Vec<Check>> {
    let dtype = match backbone {
        Backbone::Bf16 => DType::BF16,
        Backbone::F32 | Backbone::Bf16Products(_) => DType::F32,
    };
    let long = matches!(backbone, Backbone::Bf16Products(_));
    let mut runs = vec![];
    for (device, dtype) in [(device.clone(), dtype), (Device::Cpu, DType::F64)] {
        let (mut model, params) = tiny_model(route, &device, dtype, gated)?;
        if long && dtype == DType::F32 {
            model.llm.hold_bf16()?;
        }
        model.llm.checkpoint_layers = checkpointed;
        let mut batch = model.prepare(&tiny_examples(&device, dtype, long)?, Padding::Right)?;
        let (loss, _) = model.loss(&mut batch)?;
        let grads = loss.backward()?;
        let mut named = vec![];
        for (name, var) in params.vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                named.push((name, g.clone()));
            }
        }
        runs.push((loss, named));
    }
    let tolerance = match backbone {
        Backbone::F32 => STEP_TOLERANCE,
        _ => BF16_STEP_TOLERANCE,
    };
    let label = format!(
        "{route:?} training step{}{}{}",
        if checkpointed {
            " (checkpointed layers)"
        } else {
            ""
        },
        if gated { " (gated)" } else { "" },
        match backbone {
            Backbone::F32 => String::new(),
            Backbone::Bf16 => " (bf16)".into(),
            Backbone::Bf16Products(k) => format!(" (bf16 products, {})", k.name()),
        }
    );
    let (device_run, reference) = (&runs[0], &runs[1]);
    let mut worst = 0f64;
    for ((name, g), (reference_name, r)) in device_run.1.iter().zip(&reference.1) {
        anyhow::ensure!(name == reference_name, "{label}: parameters differ");
        worst = worst.max(relative_error(g, r)?);
    }
    anyhow::ensure!(!device_run.1.is_empty(), "{label}: no adapter gradient");
    Ok(vec![
        Check {
            name: format!("{label}: loss"),
            error: relative_error(&device_run.0, &reference.0)?,
            tolerance,
        },
        Check {
            name: format!("{label}: {} adapter gradients", device_run.1.len()),
            error: worst,
            tolerance,
        },
    ])
}

/// A LAL step's gradients summed by NCCL in a one-rank job (the device path every rank of a
/// multi-GPU run takes: the NCCL id, the communicator on candle's stream, the all-reduce of one
/// flat buffer, the split back into gradients) against the same gradients unsummed: the same
/// bits.
#[cfg(feature = "nccl")]
fn nccl_gradient_sum(device: &Device) -> anyhow::Result<Check> {
    use pal_train::distributed::{nccl::NcclWorld, sum_gradients, SingleProcess};
    let (model, params) = tiny_model(Route::Lal, device, DType::F32, false)?;
    let world = NcclWorld::new(Box::new(SingleProcess))?;
    let micro = [tiny_examples(device, DType::F32, false)?];
    let (grads, _, _) = pal_train::trainer::rank_gradients(&model, &params, &micro, &world)?;
    let mut summed = grads.clone();
    let bytes = sum_gradients(&world, &mut summed, &params.vars())?;
    anyhow::ensure!(bytes > 0, "NCCL: the gradients were not summed");
    let mut worst = 0f64;
    for (name, g) in &grads {
        worst = worst.max(relative_error(&summed[name], g)?);
    }
    Ok(Check {
        name: format!(
            "NCCL all-reduce of a LAL step's {} gradients (one rank)",
            grads.len()
        ),
        error: worst,
        tolerance: 0.0,
    })
}

/// Eight greedy tokens of the tiny PAL model: the share of tokens that differ.
fn generation(device: &Device) -> anyhow::Result<Check> {
    let mut runs = vec![];
    for (device, dtype) in [(device.clone(), DType::F32), (Device::Cpu, DType::F64)] {
        let (model, _) = tiny_model(Route::Pal, &device, dtype, false)?;
        let mut batch = model
            .prepare(&tiny_examples(&device, dtype, false)?[..1], Padding::Left)?
            .detach();
        let hidden =
            model
                .llm
                .forward_embeds(&batch.embeds, Some(&batch.valid), &mut batch.cache)?;
        let n = hidden.dims()[1];
        let mut next = model.llm.logits(&hidden.narrow(1, n - 1, 1)?)?.argmax(2)?;
        let mut tokens = vec![];
        for _ in 0..8 {
            tokens.push(next.flatten_all()?.to_vec1::<u32>()?[0]);
            next = model
                .llm
                .forward(&next, None, &mut batch.cache)?
                .argmax(2)?;
        }
        runs.push(tokens);
    }
    let differ = runs[0].iter().zip(&runs[1]).filter(|(a, b)| a != b).count();
    Ok(Check {
        name: "PAL greedy generation, 8 tokens: share that differ".into(),
        error: differ as f64 / runs[0].len() as f64,
        tolerance: 0.0,
    })
}
