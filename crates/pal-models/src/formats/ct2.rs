//! CTranslate2 `model.bin` (the faster-whisper format): a packed little-endian file of named
//! tensors. Layout (version 4 to 6): `u32 version`, `str spec name`, `u32 revision`,
//! `u32 count`, then per variable `str name`, `u8 rank`, `u32 dims[rank]`, `u8 dtype`,
//! `u32 byte count`, the bytes; then `u32 alias count` and `(str alias, str target)` pairs.
//! A `str` is a `u16` length including a trailing NUL, then the bytes. No alignment.
//!
//! [`load_whisper`] renames a Whisper spec's variables to Hugging Face names and splits the fused
//! projections (self-attention `q|k|v`, cross-attention `k|v`) at this boundary, so
//! [`crate::encoders::whisper::Whisper`] loads it like a Hugging Face folder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::error::{ModelError, Result};
use crate::formats::weights::Weights;

/// One variable of a CTranslate2 model.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    /// Shape (row-major).
    pub dims: Vec<usize>,
    /// Values converted to f32.
    pub values: Vec<f32>,
}

/// A parsed CTranslate2 model file.
#[derive(Debug)]
pub struct Ct2Model {
    /// Spec name, e.g. `WhisperSpec`.
    pub spec: String,
    /// Variables by name (aliases resolved).
    pub variables: HashMap<String, Ct2Variable>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.pos + n > self.bytes.len() {
            return Err(ModelError::format(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u16(what)? as usize;
        let raw = self.take(len, what)?;
        match raw.split_last() {
            Some((0, text)) => Ok(String::from_utf8_lossy(text).into_owned()),
            _ => Err(ModelError::format(
                self.path,
                format!(
                    "{what}: string without NUL terminator at offset {}",
                    self.pos
                ),
            )),
        }
    }
}

impl Ct2Model {
    /// Reads and parses a `model.bin`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound(path.to_path_buf()),
            _ => ModelError::io(path, e),
        })?;
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            path,
        };
        let version = r.u32("version")?;
        if !(4..=6).contains(&version) {
            return Err(ModelError::format(
                path,
                format!("CTranslate2 binary version {version} is not supported (4 to 6 are)"),
            ));
        }
        let spec = r.string("spec name")?;
        let _revision = r.u32("spec revision")?;
        let count = r.u32("variable count")?;
        let mut variables = HashMap::new();
        for _ in 0..count {
            let name = r.string("variable name")?;
            let rank = r.u8(&name)? as usize;
            let dims = (0..rank)
                .map(|_| r.u32(&name).map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let dtype = r.u8(&name)?;
            let nbytes = r.u32(&name)? as usize;
            let data = r.take(nbytes, &format!("tensor '{name}'"))?;
            let elems: usize = dims.iter().product();
            let (width, convert): (usize, fn(&[u8]) -> f32) = match dtype {
                0 => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                1 => (1, |b| b[0] as i8 as f32),
                2 => (2, |b| i16::from_le_bytes([b[0], b[1]]) as f32),
                3 => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
                4 => (2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
                5 => (2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                other => {
                    return Err(ModelError::format(
                        path,
                        format!("tensor '{name}': unknown dtype id {other}"),
                    ))
                }
            };
            if nbytes != elems.max(1) * width {
                return Err(ModelError::format(
                    path,
                    format!("tensor '{name}': {nbytes} bytes for shape {dims:?}"),
                ));
            }
            let values = data.chunks_exact(width).map(convert).collect();
            variables.insert(name, Ct2Variable { dims, values });
        }
        let aliases = r.u32("alias count")?;
        for _ in 0..aliases {
            let alias = r.string("alias")?;
            let target = r.string("alias target")?;
            let v = variables
                .get(&target)
                .ok_or_else(|| {
                    ModelError::format(
                        path,
                        format!("alias '{alias}' points to missing '{target}'"),
                    )
                })?
                .clone();
            variables.insert(alias, v);
        }
        if variables.keys().any(|k| k.ends_with("_scale")) {
            return Err(ModelError::format(path, "quantized (int8/int16) CTranslate2 models are not supported; convert with --quantization float16 or float32"));
        }
        Ok(Self { spec, variables })
    }

    fn get(&self, path: &Path, name: &str) -> Result<&Ct2Variable> {
        self.variables
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
            })
    }

    fn scalar(&self, path: &Path, name: &str) -> Result<usize> {
        Ok(self.get(path, name)?.values.first().copied().unwrap_or(0.0) as usize)
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.variables
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    }
}

/// A CTranslate2 Whisper model as a Hugging Face folder would hold it: the `config.json` fields
/// and the weights, renamed and split.
pub struct Ct2Whisper {
    /// What a Hugging Face `config.json` would say (shapes from the tensors, heads from the spec).
    pub config_json: serde_json::Value,
    /// The weights, Hugging Face-named.
    pub weights: Weights,
}

/// Loads a CTranslate2 Whisper `model.bin` as Hugging Face-named weights.
pub fn load_whisper(path: &Path, dtype: DType, device: &Device) -> Result<Ct2Whisper> {
    let m = Ct2Model::read(path)?;
    if m.spec != "WhisperSpec" {
        return Err(ModelError::format(
            path,
            format!("spec '{}' is not a Whisper model", m.spec),
        ));
    }
    let tensor = |v: &Ct2Variable| -> Result<Tensor> {
        Ok(Tensor::from_vec(
            v.values.clone(),
            v.dims.clone(),
            &Device::Cpu,
        )?)
    };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let conv1 = m.get(path, "encoder/conv1/weight")?;
    let (d_model, n_mels) = (conv1.dims[0], conv1.dims[1]);
    let encoder_layers = m.count_layers("encoder");
    let decoder_layers = m.count_layers("decoder");
    let mut put = |hf: String, t: Tensor| {
        out.insert(hf, t);
    };
    // Renames that need no reshaping.
    let mut plain: Vec<(String, String)> = vec![
        (
            "encoder/conv1/weight".into(),
            "model.encoder.conv1.weight".into(),
        ),
        (
            "encoder/conv1/bias".into(),
            "model.encoder.conv1.bias".into(),
        ),
        (
            "encoder/conv2/weight".into(),
            "model.encoder.conv2.weight".into(),
        ),
        (
            "encoder/conv2/bias".into(),
            "model.encoder.conv2.bias".into(),
        ),
        (
            "encoder/position_encodings/encodings".into(),
            "model.encoder.embed_positions.weight".into(),
        ),
        (
            "decoder/embeddings/weight".into(),
            "model.decoder.embed_tokens.weight".into(),
        ),
        (
            "decoder/position_encodings/encodings".into(),
            "model.decoder.embed_positions.weight".into(),
        ),
    ];
    for side in ["encoder", "decoder"] {
        plain.push((
            format!("{side}/layer_norm/gamma"),
            format!("model.{side}.layer_norm.weight"),
        ));
        plain.push((
            format!("{side}/layer_norm/beta"),
            format!("model.{side}.layer_norm.bias"),
        ));
        let layers = if side == "encoder" {
            encoder_layers
        } else {
            decoder_layers
        };
        for i in 0..layers {
            let (c, h) = (
                format!("{side}/layer_{i}"),
                format!("model.{side}.layers.{i}"),
            );
            let mut pairs = vec![
                ("self_attention/layer_norm", "self_attn_layer_norm"),
                ("ffn/layer_norm", "final_layer_norm"),
            ];
            if side == "decoder" {
                pairs.push(("attention/layer_norm", "encoder_attn_layer_norm"));
            }
            for (cn, hn) in pairs {
                plain.push((format!("{c}/{cn}/gamma"), format!("{h}.{hn}.weight")));
                plain.push((format!("{c}/{cn}/beta"), format!("{h}.{hn}.bias")));
            }
            let mut linears = vec![
                ("ffn/linear_0", "fc1"),
                ("ffn/linear_1", "fc2"),
                ("self_attention/linear_1", "self_attn.out_proj"),
            ];
            if side == "decoder" {
                linears.push(("attention/linear_0", "encoder_attn.q_proj"));
                linears.push(("attention/linear_2", "encoder_attn.out_proj"));
            }
            for (cn, hn) in linears {
                plain.push((format!("{c}/{cn}/weight"), format!("{h}.{hn}.weight")));
                plain.push((format!("{c}/{cn}/bias"), format!("{h}.{hn}.bias")));
            }
            // Fused projections: self-attention q|k|v, cross-attention k|v (k has no bias).
            let split = |name: &str, parts: usize| -> Result<Vec<Tensor>> {
                let t = tensor(m.get(path, name)?)?;
                (0..parts)
                    .map(|p| Ok(t.narrow(0, p * d_model, d_model)?))
                    .collect()
            };
            let qkv_w = split(&format!("{c}/self_attention/linear_0/weight"), 3)?;
            let qkv_b = split(&format!("{c}/self_attention/linear_0/bias"), 3)?;
            for (j, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                put(format!("{h}.self_attn.{proj}.weight"), qkv_w[j].clone());
                if j != 1 {
                    put(format!("{h}.self_attn.{proj}.bias"), qkv_b[j].clone());
                }
            }
            if side == "decoder" {
                let kv_w = split(&format!("{c}/attention/linear_1/weight"), 2)?;
                let kv_b = split(&format!("{c}/attention/linear_1/bias"), 2)?;
                put(format!("{h}.encoder_attn.k_proj.weight"), kv_w[0].clone());
                put(format!("{h}.encoder_attn.v_proj.weight"), kv_w[1].clone());
                put(format!("{h}.encoder_attn.v_proj.bias"), kv_b[1].clone());
            }
        }
    }
    for (c, h) in plain {
        put(h, tensor(m.get(path, &c)?)?);
    }
    let ffn_dim = |side: &str| -> Result<usize> {
        Ok(m.get(path, &format!("{side}/layer_0/ffn/linear_0/weight"))?
            .dims[0])
    };
    let config_json = serde_json::json!({
        "num_mel_bins": n_mels,
        "d_model": d_model,
        "encoder_layers": encoder_layers,
        "encoder_attention_heads": m.scalar(path, "encoder/num_heads")?,
        "decoder_layers": decoder_layers,
        "decoder_attention_heads": m.scalar(path, "decoder/num_heads")?,
        "encoder_ffn_dim": ffn_dim("encoder")?,
        "decoder_ffn_dim": ffn_dim("decoder")?,
        "max_source_positions": m.get(path, "encoder/position_encodings/encodings")?.dims[0],
        "max_target_positions": m.get(path, "decoder/position_encodings/encodings")?.dims[0],
        "vocab_size": m.get(path, "decoder/embeddings/weight")?.dims[0],
    });
    let weights = out
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?.to_device(device)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(Ct2Whisper {
        config_json,
        weights: Weights::from_tensors(path, weights, dtype, device),
    })
}
