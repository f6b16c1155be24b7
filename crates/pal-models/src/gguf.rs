//! GGUF files (llama.cpp's format): config from metadata, tensors dequantized and renamed to
//! Hugging Face names, and the tokenizer and chat template from metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{ModelError, Result};
use crate::llama::{LlamaConfig, RopeScaling};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// Regex of the Llama 3 ("llama-bpe") pre-tokenizer.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Regex of the Qwen2 pre-tokenizer.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

    /// The metadata value under `key`.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.metadata(key).ok_or_else(|| {
            ModelError::format(&self.path, format!("metadata key '{key}' is missing"))
        })
    }

    fn usize_of(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map(|x| x as usize)
            .map_err(|e| ModelError::format(&self.path, format!("metadata key '{key}': {e}")))
    }

    fn f64_of(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|e| ModelError::format(&self.path, format!("metadata key '{key}': {e}")))
    }

    fn string_of(&self, key: &str) -> Result<String> {
        let v = self.required(key)?;
        v.to_string()
            .cloned()
            .map_err(|e| ModelError::format(&self.path, format!("metadata key '{key}': {e}")))
    }

    /// The architecture (`general.architecture`): `llama`, `qwen2` or `qwen3`.
    pub fn architecture(&self) -> Result<String> {
        self.string_of("general.architecture")
    }

    /// The model config, from `{arch}.*` metadata keys.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        let (attention_bias, qk_norm) = match arch.as_str() {
            "llama" => (false, false),
            "qwen2" => (true, false),
            "qwen3" => (false, true),
            other => {
                return Err(ModelError::format(
                    &self.path,
                    format!("architecture '{other}' is not supported (llama, qwen2, qwen3 are)"),
                ))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = self.usize_of(&key("embedding_length"))?;
        let heads = self.usize_of(&key("attention.head_count"))?;
        let vocab_size = match self.usize_of(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => match self.required("tokenizer.ggml.tokens")? {
                Value::Array(a) => a.len(),
                _ => {
                    return Err(ModelError::format(
                        &self.path,
                        "tokenizer.ggml.tokens is not an array",
                    ))
                }
            },
        };
        let rope_scaling = match self.content.tensor_infos.get("rope_freqs.weight") {
            Some(_) => {
                let factors = self.dequantize("rope_freqs.weight", &Device::Cpu)?;
                Some(RopeScaling::Factors {
                    factors: factors.to_dtype(DType::F64)?.to_vec1::<f64>()?,
                })
            }
            None => None,
        };
        Ok(LlamaConfig {
            model_type: arch.clone(),
            vocab_size,
            hidden_size,
            intermediate_size: self.usize_of(&key("feed_forward_length"))?,
            num_hidden_layers: self.usize_of(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .usize_of(&key("attention.head_count_kv"))
                .unwrap_or(heads),
            head_dim: self
                .usize_of(&key("attention.key_length"))
                .unwrap_or(hidden_size / heads),
            rms_norm_eps: self.f64_of(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: self.f64_of(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: self.usize_of(&key("context_length")).unwrap_or(4096),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias,
            qk_norm,
        })
    }

    fn dequantize(&self, name: &str, device: &Device) -> Result<Tensor> {
        let file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let q = self
            .content
            .tensor(&mut BufReader::new(file), name, device)
            .map_err(|e| ModelError::format(&self.path, format!("tensor '{name}': {e}")))?;
        q.dequantize(device)
            .map_err(|e| ModelError::format(&self.path, format!("tensor '{name}': {e}")))
    }

    /// All tensors, dequantized to `dtype` and renamed to Hugging Face names. For the `llama`
    /// architecture, q/k projections are un-permuted from llama.cpp's rotary layout back to the
    /// Hugging Face one.
    pub fn weights(&self, config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Weights> {
        let file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut reader = BufReader::new(file);
        let mut tensors = HashMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let Some(hf_name) = hf_tensor_name(name) else {
                continue;
            };
            let q = self
                .content
                .tensor(&mut reader, name, &Device::Cpu)
                .map_err(|e| ModelError::format(&self.path, format!("tensor '{name}': {e}")))?;
            let mut t = q
                .dequantize(&Device::Cpu)
                .map_err(|e| ModelError::format(&self.path, format!("tensor '{name}': {e}")))?;
            if config.model_type == "llama" {
                if hf_name.ends_with("q_proj.weight") {
                    t = unpermute_rotary(&t, config.num_attention_heads)?;
                } else if hf_name.ends_with("k_proj.weight") {
                    t = unpermute_rotary(&t, config.num_key_value_heads)?;
                }
            }
            tensors.insert(hf_name, t.to_dtype(dtype)?.to_device(device)?);
        }
        Ok(Weights::from_tensors(&self.path, tensors, dtype, device))
    }

    /// The tokenizer (GPT-2 style byte-level BPE) and chat template from metadata.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let model = self.string_of("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::format(
                &self.path,
                format!("tokenizer model '{model}' is not supported from GGUF (gpt2 BPE is); use a Hugging Face folder with tokenizer.json"),
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
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
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
                (a.to_string(), b.to_string())
            })
            .collect();
        let token_types: Vec<i32> = match self.metadata("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::format(&self.path, format!("BPE vocabulary: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = self
            .string_of("tokenizer.ggml.pre")
            .unwrap_or_else(|_| "default".into());
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_PATTERN)?,
            "qwen2" => split_then_bytes(QWEN2_PATTERN)?,
            "smollm" | "starcoder" => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            _ => byte_level.into(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched as whole special tokens.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, ty)| **ty == 3 || **ty == 4)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| ModelError::format(&self.path, format!("special tokens: {e}")))?;
        let id_text = |key: &str| -> Option<(u32, String)> {
            let id = self.metadata(key)?.to_u32().ok()?;
            Some((id, tokens.get(id as usize)?.clone()))
        };
        let bos = id_text("tokenizer.ggml.bos_token_id");
        let eos = id_text("tokenizer.ggml.eos_token_id");
        let template = self.string_of("tokenizer.chat_template").ok();
        let eos_ids: Vec<u32> = eos.iter().map(|(id, _)| *id).collect();
        Ok(Tokenizer::new(
            inner,
            bos.map(|b| b.1),
            eos.map(|e| e.1),
            &eos_ids,
            template,
        ))
    }
}

fn split_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| ModelError::Unsupported(format!("pre-tokenizer regex: {e}")))?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// Hugging Face name of a llama.cpp tensor name; `None` for tensors pal does not use.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
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
    let hf = match part {
        "attn_norm" => "input_layernorm",
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
