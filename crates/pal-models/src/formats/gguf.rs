//! GGUF files (llama.cpp's format): typed metadata access and the tensors, dequantized and
//! renamed to Hugging Face names at this boundary. The model config is read from the metadata by
//! [`crate::llm::LlamaConfig::from_gguf`], the tokenizer by [`crate::text::Tokenizer::from_gguf`].

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::formats::weights::Weights;

/// An opened GGUF file: its metadata and tensor directory.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl GgufFile {
    /// Reads the header, metadata and tensor directory of a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound(path.to_path_buf()),
            _ => ModelError::io(path, e),
        })?;
        let content = Content::read(&mut BufReader::new(file))
            .map_err(|e| ModelError::format(path, format!("not a valid GGUF file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    /// The file's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds a tensor of this GGUF name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A string-array metadata value.
    pub fn strings_of(&self, key: &str) -> Result<Vec<String>> {
        match self.required(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| v.to_string().cloned())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| ModelError::format(&self.path, format!("{key}: {e}"))),
            _ => Err(ModelError::format(
                &self.path,
                format!("{key} is not an array"),
            )),
        }
    }

    /// The metadata value under `key`.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// The metadata value under `key`, or an error naming the file and the key.
    pub fn required(&self, key: &str) -> Result<&Value> {
        self.metadata(key).ok_or_else(|| {
            ModelError::format(&self.path, format!("metadata key '{key}' is missing"))
        })
    }

    /// An integer metadata value.
    pub fn usize_of(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map(|x| x as usize)
            .map_err(|e| ModelError::format(&self.path, format!("metadata key '{key}': {e}")))
    }

    /// A floating-point metadata value.
    pub fn f64_of(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|e| ModelError::format(&self.path, format!("metadata key '{key}': {e}")))
    }

    /// A string metadata value.
    pub fn string_of(&self, key: &str) -> Result<String> {
        let v = self.required(key)?;
        v.to_string()
            .cloned()
            .map_err(|e| ModelError::format(&self.path, format!("metadata key '{key}': {e}")))
    }

    /// The architecture (`general.architecture`): `llama`, `qwen2` or `qwen3`.
    pub fn architecture(&self) -> Result<String> {
        self.string_of("general.architecture")
    }

    /// One tensor by its GGUF name, dequantized to f32.
    pub fn dequantize(&self, name: &str, device: &Device) -> Result<Tensor> {
        let file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let q = self
            .content
            .tensor(&mut BufReader::new(file), name, device)
            .map_err(|e| ModelError::format(&self.path, format!("tensor '{name}': {e}")))?;
        q.dequantize(device)
            .map_err(|e| ModelError::format(&self.path, format!("tensor '{name}': {e}")))
    }

    /// The stored type and shape of the tensor with Hugging Face name `hf_name`, if present.
    pub fn stored_type(&self, hf_name: &str) -> Result<Option<(GgmlDType, Vec<usize>)>> {
        let arch = self.architecture()?;
        Ok(self.content.tensor_infos.iter().find_map(|(name, info)| {
            (hf_tensor_name(name, &arch).as_deref() == Some(hf_name))
                .then(|| (info.ggml_dtype, info.shape.dims().to_vec()))
        }))
    }

    /// All tensors, dequantized to `dtype` and renamed to Hugging Face names. With
    /// `rotary_heads = Some((query heads, key/value heads))` (the `llama` architecture), q/k
    /// projections are un-permuted from llama.cpp's rotary layout back to the Hugging Face one.
    pub fn weights(
        &self,
        rotary_heads: Option<(usize, usize)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Weights> {
        Ok(self
            .weights_beside_quantized(rotary_heads, dtype, device, false)?
            .0)
    }

    /// [`Self::weights`] for a model that will hold its quantized matrices as stored (`--weights
    /// quantized`): with `as_stored`, each matrix in a quantized type is read once and returned
    /// as stored (rows un-permuted as [`Self::quantized_tensors`] does), and the weights hold a
    /// zero-stride stand-in of its shape in its place, so that its f32 form never exists.
    /// Whoever asks must put the stored form in every stand-in's place. Without, every weight
    /// is dequantized (as [`Self::weights`]).
    pub fn weights_beside_quantized(
        &self,
        rotary_heads: Option<(usize, usize)>,
        dtype: DType,
        device: &Device,
        as_stored: bool,
    ) -> Result<(Weights, HashMap<String, QTensor>)> {
        let file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut reader = BufReader::new(file);
        let (mut tensors, mut stored) = (HashMap::new(), HashMap::new());
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let arch = self.architecture()?;
        for name in names {
            let Some(hf_name) = hf_tensor_name(name, &arch) else {
                continue;
            };
            let bad = |e: candle_core::Error| {
                ModelError::format(&self.path, format!("tensor '{name}': {e}"))
            };
            let info = &self.content.tensor_infos[name];
            let quantized = !matches!(
                info.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            );
            if quantized && info.shape.rank() == 2 && as_stored {
                let q = self.read_stored(&mut reader, name, &hf_name, rotary_heads)?;
                let stand_in = Tensor::zeros((), dtype, device)?.broadcast_as(q.shape())?;
                tensors.insert(hf_name.clone(), stand_in);
                stored.insert(hf_name, q);
                continue;
            }
            let q = self
                .content
                .tensor(&mut reader, name, &Device::Cpu)
                .map_err(bad)?;
            let mut t = q.dequantize(&Device::Cpu).map_err(bad)?;
            if let Some(heads) = permuted_heads(&hf_name, rotary_heads) {
                t = unpermute_rotary(&t, heads)?;
            }
            tensors.insert(hf_name, t.to_dtype(dtype)?.to_device(device)?);
        }
        let weights = Weights::from_tensors(&self.path, tensors, dtype, device);
        Ok((weights, stored))
    }
}

impl GgufFile {
    /// The tensors stored in a quantized type (not f32, f16 or bf16), as stored (no
    /// dequantization), renamed to Hugging Face names; q/k projections get their rows
    /// un-permuted as in [`GgufFile::weights`]. Inference multiplies these directly.
    pub fn quantized_tensors(
        &self,
        rotary_heads: Option<(usize, usize)>,
    ) -> Result<HashMap<String, QTensor>> {
        let file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut reader = BufReader::new(file);
        let mut out = HashMap::new();
        let arch = self.architecture()?;
        for (name, info) in &self.content.tensor_infos {
            let Some(hf_name) = hf_tensor_name(name, &arch) else {
                continue;
            };
            if matches!(
                info.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            ) {
                continue;
            }
            let q = self.read_stored(&mut reader, name, &hf_name, rotary_heads)?;
            out.insert(hf_name, q);
        }
        Ok(out)
    }

    /// Tensor `name` (Hugging Face name `hf_name`) as stored, its rows un-permuted where
    /// llama.cpp permuted them ([`permuted_heads`]).
    fn read_stored(
        &self,
        reader: &mut BufReader<File>,
        name: &str,
        hf_name: &str,
        rotary_heads: Option<(usize, usize)>,
    ) -> Result<QTensor> {
        let bad =
            |e: candle_core::Error| ModelError::format(&self.path, format!("tensor '{name}': {e}"));
        let mut q = self
            .content
            .tensor(reader, name, &Device::Cpu)
            .map_err(bad)?;
        if let Some(heads) = permuted_heads(hf_name, rotary_heads) {
            let rows = q.shape().dims()[0];
            q = pal_nn::ops::QuantizedWeight::permute_rows(q, &unpermuted_rows(rows, heads))
                .map_err(bad)?;
        }
        Ok(q)
    }
}

/// The heads of a tensor that llama.cpp stores with its rotary halves interleaved: the q or k
/// projection (by its Hugging Face name), when the file is of the `llama` architecture
/// (`rotary_heads = Some((query heads, key/value heads))`, see
/// [`crate::llm::LlamaConfig::gguf_rotary_heads`]).
fn permuted_heads(hf_name: &str, rotary_heads: Option<(usize, usize)>) -> Option<usize> {
    match rotary_heads {
        Some((q_heads, _)) if hf_name.ends_with("q_proj.weight") => Some(q_heads),
        Some((_, kv_heads)) if hf_name.ends_with("k_proj.weight") => Some(kv_heads),
        _ => None,
    }
}

/// The row order that undoes llama.cpp's rotary permutation of `rows = heads * head_dim` rows
/// (the same reordering as [`unpermute_rotary`]): row `(h, t, i)` of the result is row
/// `(h, i, t)` of the file, `t` in 0..2, `i` in 0..head_dim / 2.
fn unpermuted_rows(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for t in 0..2 {
            for i in 0..half {
                order.push(h * 2 * half + i * 2 + t);
            }
        }
    }
    order
}

/// Hugging Face name of a llama.cpp tensor name in a file of architecture `arch`; `None` for
/// tensors pal does not use. (Gemma's norms keep their Gemma names: `ffn_norm` is its
/// `pre_feedforward_layernorm`, `post_attention_norm` its `post_attention_layernorm`; the GGUF
/// converter stored them as `1 + w`, the factor they multiply by.)
pub fn hf_tensor_name(gguf_name: &str, arch: &str) -> Option<String> {
    let direct = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let gemma = arch == "gemma3";
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's rotary permutation of a q or k projection `(heads * head_dim, in)`.
fn unpermute_rotary(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}
