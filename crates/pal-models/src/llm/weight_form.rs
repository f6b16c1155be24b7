//! The form a frozen LLM's linear weights are held in at inference (`--weights`). Decoding
//! multiplies one row per sequence by every weight, so its speed is the bytes it reads: a GGUF
//! file's Q4_1 weights are a sixth of their f32 form. A prefill of many rows is compute-bound:
//! pal's own kernels (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K) are faster than f32 there too with
//! AVX-512 VNNI; with AVX2 only, and on candle's kernels (the other types), f32 is faster.
//!
//! - `f32`: every weight dequantized to f32 (what training uses).
//! - `auto` (the default): a GGUF file's quantized weights as stored, for every product where
//!   pal's kernels run with AVX-512 VNNI, and for products of up to [`DECODE_ROWS`] rows
//!   (decoding) otherwise; f32 for the rest (a prefill with AVX2 only, or on candle's types).
//!   The f32 copy stays, for training through the frozen layers. A safetensors model stays in
//!   its f32 form.
//! - `quantized`: the quantized weights for every product, and no f32 copy of them, token
//!   embeddings looked up in the quantized table: the least memory. A safetensors model is
//!   quantized to Q8_0 at load.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use pal_nn::ops::QuantizedWeight;
use pal_nn::QuantizedForm;

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;
use crate::llm::decoder::Llama;
use crate::llm::layer::{FFN_LINEARS, LINEAR_NAMES};

/// Products of up to this many rows use quantized weights on candle's kernels in the `auto`
/// form.
pub const DECODE_ROWS: usize = 16;

/// How frozen linear weights are held at inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightForm {
    /// Quantized wherever pal's kernels are fastest, an f32 copy held (see the module docs).
    #[default]
    Auto,
    /// f32 only.
    F32,
    /// Quantized only.
    Quantized,
}

impl std::str::FromStr for WeightForm {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "quantized" => Ok(Self::Quantized),
            other => Err(format!(
                "unknown weight form '{other}' (auto, f32, quantized)"
            )),
        }
    }
}

impl std::fmt::Display for WeightForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Quantized => "quantized",
        })
    }
}

/// What [`apply`] did: how many linear weights are held in which quantized type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightsInUse {
    /// The form asked for.
    pub form: WeightForm,
    /// Quantized type (`Q4_1`, ...) and how many linear weights are held in it.
    pub quantized: BTreeMap<String, usize>,
    /// Linear weights held only in f32.
    pub f32_only: usize,
    /// Quantized weights used for decoding only (up to [`DECODE_ROWS`] rows), f32 beyond.
    pub decode_only: usize,
}

impl std::fmt::Display for WeightsInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.quantized.is_empty() {
            return write!(f, "f32");
        }
        let types: Vec<String> = self
            .quantized
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        match self.form {
            WeightForm::Quantized => write!(f, "quantized ({})", types.join(", ")),
            _ if self.decode_only == 0 => write!(f, "{} for every product", types.join(", ")),
            _ => write!(
                f,
                "{}; {} of them for up to {DECODE_ROWS} rows (decoding), f32 for more",
                types.join(", "),
                self.decode_only
            ),
        }?;
        if self.f32_only > 0 {
            write!(f, "; {} linear weights f32 only", self.f32_only)?;
        }
        Ok(())
    }
}

/// Holds `llm`'s frozen linear weights in `form`, reading quantized ones from `source` (the
/// `.gguf` file or model folder the model was loaded from). Trainable or LoRA-less weights alike
/// keep their f32 tensor unless the form is `quantized`; a trainable weight is never quantized.
pub fn apply(llm: &mut Llama, source: &Path, form: WeightForm) -> Result<WeightsInUse> {
    if left_as_is(llm, form) {
        return Ok(WeightsInUse {
            form,
            ..Default::default()
        });
    }
    let from_file = if source.extension().is_some_and(|e| e == "gguf") {
        let file = GgufFile::open(source)?;
        Some(file.quantized_tensors(llm.config.gguf_rotary_heads())?)
    } else {
        None
    };
    hold(llm, from_file, source, form)
}

/// [`apply`] with the file's quantized tensors already read (`from_file`, by Hugging Face name;
/// `None` for a safetensors model). Each tensor it holds is taken out of `from_file`.
pub(crate) fn hold(
    llm: &mut Llama,
    mut from_file: Option<HashMap<String, QTensor>>,
    source: &Path,
    form: WeightForm,
) -> Result<WeightsInUse> {
    let mut used = WeightsInUse {
        form,
        ..Default::default()
    };
    if left_as_is(llm, form) || (from_file.is_none() && form == WeightForm::Auto) {
        return Ok(used);
    }
    let mut attach = |name: &str, linear: &mut pal_nn::Linear| -> Result<()> {
        if linear.weight.is_variable() {
            used.f32_only += 1;
            return Ok(());
        }
        let bad = |e: candle_core::Error| ModelError::format(source, format!("{name}: {e}"));
        let weight = match from_file.as_mut().and_then(|tensors| tensors.remove(name)) {
            Some(q) => QuantizedWeight::from_qtensor(q).map_err(bad)?,
            None if form == WeightForm::Quantized => {
                Some(QuantizedWeight::quantize(&linear.weight, GgmlDType::Q8_0).map_err(bad)?)
            }
            None => None,
        };
        let Some(weight) = weight else {
            used.f32_only += 1;
            return Ok(());
        };
        if weight.dims() != (linear.dims().1, linear.dims().0) {
            return Err(ModelError::format(
                source,
                format!(
                    "{name}: quantized {:?}, f32 {:?}",
                    weight.dims(),
                    linear.weight.dims()
                ),
            ));
        }
        *used
            .quantized
            .entry(format!("{:?}", weight.dtype()))
            .or_default() += 1;
        if form == WeightForm::Quantized {
            // Nothing reads the f32 weight any more: a zero-stride stand-in of its shape frees it.
            let (inp, out) = linear.dims();
            linear.weight = Tensor::zeros((), DType::F32, &candle_core::Device::Cpu)?
                .broadcast_as((out, inp))?;
        }
        let max_rows = if form == WeightForm::Quantized || weight.fast_at_any_rows() {
            usize::MAX
        } else {
            DECODE_ROWS
        };
        if max_rows != usize::MAX {
            used.decode_only += 1;
        }
        linear.quantized = Some(QuantizedForm {
            weight: Arc::new(weight),
            max_rows,
            f32_held: form != WeightForm::Quantized,
        });
        Ok(())
    };
    for (i, layer) in llm.layers.iter_mut().enumerate() {
        for name in LINEAR_NAMES {
            let block = if FFN_LINEARS.contains(name) {
                "mlp"
            } else {
                "self_attn"
            };
            let linear = layer
                .linear_mut(name)
                .expect("every LoRA target is a linear layer");
            attach(&format!("model.layers.{i}.{block}.{name}.weight"), linear)?;
        }
    }
    let head = match llm.config.tie_word_embeddings {
        true => "model.embed_tokens.weight",
        false => "lm_head.weight",
    };
    attach(head, &mut llm.lm_head)?;
    if form == WeightForm::Quantized {
        quantized_embeddings(llm, from_file.as_mut(), source)?;
        release_freed_memory();
    }
    every_stand_in_held(llm, source)?;
    Ok(used)
}

/// Whether `form` leaves `llm`'s weights as they are: f32 asked for, or a model that is not f32
/// on the CPU.
fn left_as_is(llm: &Llama, form: WeightForm) -> bool {
    form == WeightForm::F32 || !llm.device().is_cpu() || llm.dtype() != DType::F32
}

/// Whether `t` is a zero-stride stand-in for a weight held in another form (one value broadcast).
fn is_stand_in(t: &Tensor) -> bool {
    t.elem_count() > 1 && t.stride().iter().all(|&s| s == 0)
}

/// An error naming the first weight that is a stand-in ([`GgufFile::weights_beside_quantized`])
/// with no quantized form in its place: it would multiply by zeros.
fn every_stand_in_held(llm: &mut Llama, source: &Path) -> Result<()> {
    let unheld = |name: String| {
        ModelError::format(
            source,
            format!("{name}: loaded for a quantized form that does not hold it"),
        )
    };
    for (i, layer) in llm.layers.iter_mut().enumerate() {
        for name in LINEAR_NAMES {
            let linear = layer
                .linear_mut(name)
                .expect("every LoRA target is a linear layer");
            if is_stand_in(&linear.weight) && linear.quantized.is_none() {
                return Err(unheld(format!("layer {i} {name}")));
            }
        }
    }
    if is_stand_in(&llm.lm_head.weight) && llm.lm_head.quantized.is_none() {
        return Err(unheld("the output layer".into()));
    }
    if is_stand_in(&llm.embed_tokens) && llm.embed_quantized.is_none() {
        return Err(unheld("the token embeddings".into()));
    }
    Ok(())
}

/// Looks token embeddings up in the file's quantized table (the output layer's, when tied), and
/// frees the f32 table: the same values, a quarter of the bytes or less (Gemma 3 270M's 262k x
/// 640 table is 671 MB in f32). Kept in f32 where candle holds the type (it would dequantize the
/// whole table per lookup).
fn quantized_embeddings(
    llm: &mut Llama,
    from_file: Option<&mut HashMap<String, QTensor>>,
    source: &Path,
) -> Result<()> {
    let table = match llm.config.tie_word_embeddings {
        true => llm.lm_head.quantized.as_ref().map(|q| q.weight.clone()),
        false => match from_file.and_then(|t| t.remove("model.embed_tokens.weight")) {
            Some(q) => QuantizedWeight::from_qtensor(q)
                .map_err(|e| ModelError::format(source, format!("token embeddings: {e}")))?
                .map(Arc::new),
            None => None,
        },
    };
    let dims = llm.embed_tokens.dims2()?;
    if let Some(table) = table.filter(|t| t.reads_rows() && t.dims() == dims) {
        llm.embed_tokens =
            Tensor::zeros((), DType::F32, &candle_core::Device::Cpu)?.broadcast_as(dims)?;
        llm.embed_quantized = Some(table);
    }
    Ok(())
}

/// Hands memory freed by dropping the f32 weights back to the system: glibc keeps freed blocks
/// of these sizes in its heap, so the process would go on holding them.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
