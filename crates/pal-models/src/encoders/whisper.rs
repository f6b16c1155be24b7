//! Whisper (encoder and decoder), loaded from Hugging Face folders or CTranslate2 `model.bin`
//! folders (see [`crate::formats::ct2`]). Weights are named as in Hugging Face checkpoints
//! (`model.encoder.layers.N.self_attn.q_proj.weight`, ...).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pal_audio::WhisperMel;
use pal_nn::causal_mask;
use pal_nn::ops::gelu_erf;
use serde::Deserialize;

use crate::encoders::audio_encoder::AudioEncoder;
use crate::encoders::blocks::{GeluFfn, LayerNorm, MultiHeadAttention};
use crate::encoders::selection::LayerSelection;
use crate::encoders::windows::WindowPolicy;
use crate::error::{ModelError, Result};
use crate::formats::weights::{load_linear, Weights};

/// Whisper's shape.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WhisperConfig {
    /// Mel bins of the input (80, or 128 for large-v3).
    pub num_mel_bins: usize,
    /// Model width.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Encoder heads.
    pub encoder_attention_heads: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Decoder heads.
    pub decoder_attention_heads: usize,
    /// Encoder FFN width.
    pub encoder_ffn_dim: usize,
    /// Decoder FFN width.
    pub decoder_ffn_dim: usize,
    /// Encoder positions (1500 = 30 s).
    pub max_source_positions: usize,
    /// Decoder positions (448).
    pub max_target_positions: usize,
    /// Vocabulary size (51864 for English-only models, 51865+ multilingual).
    pub vocab_size: usize,
}

impl WhisperConfig {
    /// Reads `config.json` of a Hugging Face Whisper folder.
    pub fn from_hf_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| ModelError::format(&path, format!("not a Whisper config: {e}")))
    }

    /// The config from `config.json` fields already parsed (a CTranslate2 model's, see
    /// [`crate::formats::ct2::Ct2Whisper`]); `path` names the source in errors.
    pub fn from_json(value: serde_json::Value, path: &Path) -> Result<Self> {
        serde_json::from_value(value)
            .map_err(|e| ModelError::format(path, format!("not a Whisper config: {e}")))
    }
}

/// One encoder layer (pre-norm self-attention and FFN).
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    /// Norm before attention.
    pub self_attn_layer_norm: LayerNorm,
    /// Self-attention.
    pub self_attn: MultiHeadAttention,
    /// Norm before the FFN.
    pub final_layer_norm: LayerNorm,
    /// FFN.
    pub ffn: GeluFfn,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.self_attn_layer_norm.forward(x)?, mask)?;
        let x = (x + h)?;
        let h = self.ffn.forward(&self.final_layer_norm.forward(&x)?)?;
        Ok((x + h)?)
    }
}

/// The Whisper audio encoder: two convolutions (the second with stride 2), positions, layers.
#[derive(Clone, Debug)]
pub struct WhisperEncoder {
    /// `(d, mels, 3)` and `(d)`.
    pub conv1: (Tensor, Tensor),
    /// `(d, d, 3)` and `(d)`, stride 2.
    pub conv2: (Tensor, Tensor),
    /// `(max_source_positions, d)`.
    pub embed_positions: Tensor,
    /// Transformer layers.
    pub layers: Vec<EncoderLayer>,
    /// Final norm.
    pub layer_norm: LayerNorm,
}

fn load_mha(weights: &Weights, prefix: &str, d: usize, heads: usize) -> Result<MultiHeadAttention> {
    Ok(MultiHeadAttention {
        q: load_linear(weights, &format!("{prefix}.q_proj"), d, d, true)?,
        k: load_linear(weights, &format!("{prefix}.k_proj"), d, d, false)?,
        v: load_linear(weights, &format!("{prefix}.v_proj"), d, d, true)?,
        o: load_linear(weights, &format!("{prefix}.out_proj"), d, d, true)?,
        heads,
    })
}

fn load_ffn(weights: &Weights, prefix: &str, d: usize, ffn: usize) -> Result<GeluFfn> {
    Ok(GeluFfn {
        fc1: load_linear(weights, &format!("{prefix}.fc1"), ffn, d, true)?,
        fc2: load_linear(weights, &format!("{prefix}.fc2"), d, ffn, true)?,
    })
}

const LN_EPS: f64 = 1e-5;

impl WhisperEncoder {
    /// Loads the encoder weights (`model.encoder.*`).
    pub fn load(c: &WhisperConfig, weights: &Weights) -> Result<Self> {
        let d = c.d_model;
        let p = "model.encoder";
        let conv = |name: &str, inp: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                weights.get(&format!("{p}.{name}.weight"), &[d, inp, 3])?,
                weights.get(&format!("{p}.{name}.bias"), &[d])?,
            ))
        };
        let layers = (0..c.encoder_layers)
            .map(|i| {
                let l = format!("{p}.layers.{i}");
                Ok(EncoderLayer {
                    self_attn_layer_norm: LayerNorm::load(
                        weights,
                        &format!("{l}.self_attn_layer_norm"),
                        d,
                        LN_EPS,
                    )?,
                    self_attn: load_mha(
                        weights,
                        &format!("{l}.self_attn"),
                        d,
                        c.encoder_attention_heads,
                    )?,
                    final_layer_norm: LayerNorm::load(
                        weights,
                        &format!("{l}.final_layer_norm"),
                        d,
                        LN_EPS,
                    )?,
                    ffn: load_ffn(weights, &l, d, c.encoder_ffn_dim)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: conv("conv1", c.num_mel_bins)?,
            conv2: conv("conv2", d)?,
            embed_positions: weights.get(
                &format!("{p}.embed_positions.weight"),
                &[c.max_source_positions, d],
            )?,
            layers,
            layer_norm: LayerNorm::load(weights, &format!("{p}.layer_norm"), d, LN_EPS)?,
        })
    }

    /// Most mel frames one pass accepts (3000 = 30 s).
    pub fn max_frames(&self) -> usize {
        self.embed_positions.dims()[0] * 2
    }

    /// Encodes log-mel features `(batch, mels, frames)` into `(batch, frames / 2, d)`, returning the
    /// hidden state chosen by `layer`. Any even number of frames up to [`Self::max_frames`] works: a
    /// short clip need not be padded to 30 s (positions are sliced).
    pub fn forward(&self, mel: &Tensor, layer: LayerSelection) -> Result<Tensor> {
        self.forward_padded(mel, None, layer)
    }

    /// [`Self::forward`] of a batch of clips padded with zeros to a common length:
    /// `frames[b]` (even) is clip `b`'s real length. Between the convolutions, positions past a
    /// clip's end are zeroed (as the convolution's own zero padding would be for that clip
    /// alone), and attention does not see them, so each clip's first `frames[b] / 2` tokens are
    /// what it gets encoded alone.
    pub fn forward_padded(
        &self,
        mel: &Tensor,
        frames: Option<&[usize]>,
        layer: LayerSelection,
    ) -> Result<Tensor> {
        let (batch, _, padded) = mel.dims3()?;
        if padded > self.max_frames() || padded < 2 {
            return Err(ModelError::Unsupported(format!(
                "Whisper encoder takes 2..={} mel frames, got {padded}",
                self.max_frames()
            )));
        }
        // Frame masks (1 inside a clip, 0 past its end) and the attention mask over tokens.
        let masks = match frames {
            Some(frames) if frames.iter().any(|&f| f < padded) => {
                let keep = |len: usize, total: usize| -> Vec<f32> {
                    (0..batch)
                        .flat_map(|b| {
                            let end = frames[b].div_ceil(len);
                            (0..total).map(move |t| if t < end { 1.0 } else { 0.0 })
                        })
                        .collect()
                };
                let device = mel.device();
                let dtype = mel.dtype();
                let frame_mask = Tensor::from_vec(keep(1, padded), (batch, 1, padded), device)?
                    .to_dtype(dtype)?;
                let tokens = padded / 2;
                let token_keep = keep(2, tokens);
                let blocked = pal_nn::attention::mask_value(dtype) as f32;
                let additive: Vec<f32> = token_keep
                    .iter()
                    .map(|&k| if k > 0.0 { 0.0 } else { blocked })
                    .collect();
                let attention_mask =
                    Tensor::from_vec(additive, (batch, 1, 1, tokens), device)?.to_dtype(dtype)?;
                Some((frame_mask, attention_mask))
            }
            _ => None,
        };
        let mut x = gelu_erf(
            &mel.conv1d(&self.conv1.0, 1, 1, 1, 1)?
                .broadcast_add(&self.conv1.1.reshape((1, (), 1))?)?,
        )?;
        if let Some((frame_mask, _)) = &masks {
            x = x.broadcast_mul(frame_mask)?;
        }
        let x = gelu_erf(
            &x.conv1d(&self.conv2.0, 1, 2, 1, 1)?
                .broadcast_add(&self.conv2.1.reshape((1, (), 1))?)?,
        )?;
        let x = x.transpose(1, 2)?;
        let tokens = x.dims()[1];
        let mut x = x.broadcast_add(&self.embed_positions.narrow(0, 0, tokens)?)?;
        let attention_mask = masks.as_ref().map(|(_, a)| a);
        let total = self.layers.len();
        layer.validate(total)?;
        let mut states = vec![];
        if layer.wants(0, total) {
            states.push(x.clone());
        }
        for (i, l) in self
            .layers
            .iter()
            .enumerate()
            .take(layer.layers_needed(total))
        {
            x = l.forward(&x, attention_mask)?;
            let index = i + 1;
            if index == total {
                x = self.layer_norm.forward(&x)?;
            }
            if layer.wants(index, total) {
                states.push(x.clone());
            }
        }
        layer.combine(states)
    }
}

/// One decoder layer: causal self-attention, cross-attention over the audio, FFN.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// Norm before self-attention.
    pub self_attn_layer_norm: LayerNorm,
    /// Causal self-attention.
    pub self_attn: MultiHeadAttention,
    /// Norm before cross-attention.
    pub encoder_attn_layer_norm: LayerNorm,
    /// Cross-attention over the encoder output.
    pub encoder_attn: MultiHeadAttention,
    /// Norm before the FFN.
    pub final_layer_norm: LayerNorm,
    /// FFN.
    pub ffn: GeluFfn,
}

/// Cached keys/values of the decoder: self-attention grows per step, cross-attention is fixed.
#[derive(Clone, Debug, Default)]
pub struct DecoderCache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

/// The Whisper text decoder.
#[derive(Clone, Debug)]
pub struct WhisperDecoder {
    /// `(vocab, d)`, also the output projection.
    pub embed_tokens: Tensor,
    /// `(max_target_positions, d)`.
    pub embed_positions: Tensor,
    /// Layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub layer_norm: LayerNorm,
}

impl WhisperDecoder {
    /// Loads the decoder weights (`model.decoder.*`).
    pub fn load(c: &WhisperConfig, weights: &Weights) -> Result<Self> {
        let d = c.d_model;
        let p = "model.decoder";
        let layers = (0..c.decoder_layers)
            .map(|i| {
                let l = format!("{p}.layers.{i}");
                let heads = c.decoder_attention_heads;
                Ok(DecoderLayer {
                    self_attn_layer_norm: LayerNorm::load(
                        weights,
                        &format!("{l}.self_attn_layer_norm"),
                        d,
                        LN_EPS,
                    )?,
                    self_attn: load_mha(weights, &format!("{l}.self_attn"), d, heads)?,
                    encoder_attn_layer_norm: LayerNorm::load(
                        weights,
                        &format!("{l}.encoder_attn_layer_norm"),
                        d,
                        LN_EPS,
                    )?,
                    encoder_attn: load_mha(weights, &format!("{l}.encoder_attn"), d, heads)?,
                    final_layer_norm: LayerNorm::load(
                        weights,
                        &format!("{l}.final_layer_norm"),
                        d,
                        LN_EPS,
                    )?,
                    ffn: load_ffn(weights, &l, d, c.decoder_ffn_dim)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embed_tokens: weights.get(&format!("{p}.embed_tokens.weight"), &[c.vocab_size, d])?,
            embed_positions: weights.get(
                &format!("{p}.embed_positions.weight"),
                &[c.max_target_positions, d],
            )?,
            layers,
            layer_norm: LayerNorm::load(weights, &format!("{p}.layer_norm"), d, LN_EPS)?,
        })
    }

    /// An empty cache.
    pub fn new_cache(&self) -> DecoderCache {
        DecoderCache {
            self_kv: vec![None; self.layers.len()],
            cross_kv: vec![None; self.layers.len()],
            len: 0,
        }
    }

    /// Most tokens (prompt + output) the decoder takes.
    pub fn max_tokens(&self) -> usize {
        self.embed_positions.dims()[0]
    }

    /// Logits `(batch, n, vocab)` for `tokens` `(batch, n)` continuing `cache`, attending to
    /// `audio` (`(batch, frames, d)`, the encoder output; its keys/values are cached on first use).
    pub fn forward(
        &self,
        tokens: &Tensor,
        audio: &Tensor,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        let (b, n) = tokens.dims2()?;
        if cache.len + n > self.max_tokens() {
            return Err(ModelError::Unsupported(format!(
                "Whisper decoder takes at most {} tokens",
                self.max_tokens()
            )));
        }
        let d = self.embed_tokens.dims()[1];
        let emb = self
            .embed_tokens
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, n, d))?;
        let mut x = emb.broadcast_add(&self.embed_positions.narrow(0, cache.len, n)?)?;
        let keys = cache.len + n;
        let mask = if n > 1 {
            Some(causal_mask(n, keys, None, x.dtype(), x.device())?)
        } else {
            None
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.self_attn_layer_norm.forward(&x)?;
            let (k, v) = layer.self_attn.keys_values(&h)?;
            let (k, v) = match &cache.self_kv[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            let attn = layer.self_attn.attend(&h, &k, &v, mask.as_ref())?;
            cache.self_kv[i] = Some((k, v));
            x = (x + attn)?;
            let h = layer.encoder_attn_layer_norm.forward(&x)?;
            if cache.cross_kv[i].is_none() {
                cache.cross_kv[i] = Some(layer.encoder_attn.keys_values(audio)?);
            }
            let (ck, cv) = cache.cross_kv[i].as_ref().expect("set above");
            x = (&x + layer.encoder_attn.attend(&h, ck, cv, None)?)?;
            x = (&x + layer.ffn.forward(&layer.final_layer_norm.forward(&x)?)?)?;
        }
        cache.len += n;
        let x = self.layer_norm.forward(&x)?;
        Ok(x.broadcast_matmul(&self.embed_tokens.t()?)?)
    }
}

/// A Whisper model: the encoder, and the decoder when loaded for transcription.
#[derive(Clone, Debug)]
pub struct Whisper {
    /// Shape.
    pub config: WhisperConfig,
    /// Audio encoder.
    pub encoder: WhisperEncoder,
    /// Text decoder (absent when only the encoder was loaded).
    pub decoder: Option<WhisperDecoder>,
}

impl Whisper {
    /// Builds the model from Hugging Face-named weights; `with_decoder` loads the decoder too.
    pub fn load(config: WhisperConfig, weights: &Weights, with_decoder: bool) -> Result<Self> {
        let encoder = WhisperEncoder::load(&config, weights)?;
        let decoder = if with_decoder {
            Some(WhisperDecoder::load(&config, weights)?)
        } else {
            None
        };
        Ok(Self {
            config,
            encoder,
            decoder,
        })
    }

    /// Loads a Hugging Face Whisper folder (config.json + safetensors) or a CTranslate2 folder
    /// (model.bin), in `dtype` on `device`.
    pub fn from_folder(
        folder: &Path,
        with_decoder: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !folder.is_dir() {
            return Err(ModelError::NotFound(folder.to_path_buf()));
        }
        if folder.join("model.bin").exists() && !folder.join("model.safetensors").exists() {
            let bin = folder.join("model.bin");
            let ct2 = crate::formats::ct2::load_whisper(&bin, dtype, device)?;
            let config = WhisperConfig::from_json(ct2.config_json, &bin)?;
            return Self::load(config, &ct2.weights, with_decoder);
        }
        let config = WhisperConfig::from_hf_folder(folder)?;
        let weights = Weights::from_hf_folder(folder, dtype, device)?;
        Self::load(config, &weights, with_decoder)
    }

    /// The decoder, or an error saying the model was loaded without it.
    pub fn decoder(&self) -> Result<&WhisperDecoder> {
        self.decoder.as_ref().ok_or_else(|| {
            ModelError::Unsupported("this Whisper model was loaded without its decoder".into())
        })
    }
}

/// What greedy Whisper decoding needs from the tokenizer and generation config.
#[derive(Clone)]
pub struct WhisperTokenizer {
    /// The text tokenizer (byte-level BPE).
    pub inner: tokenizers::Tokenizer,
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// Language and task tokens for multilingual models (`<|en|>`, `<|transcribe|>`).
    pub language_task: Vec<u32>,
    /// Tokens never generated.
    pub suppress: Vec<u32>,
    /// Tokens not generated first.
    pub suppress_begin: Vec<u32>,
}

impl WhisperTokenizer {
    /// Loads `tokenizer.json` and the suppression lists of a Hugging Face folder
    /// (`generation_config.json`) or a CTranslate2 folder (`config.json`). `language` applies to
    /// multilingual models only (vocabulary of 51865 or more).
    pub fn from_folder(folder: &Path, config: &WhisperConfig, language: &str) -> Result<Self> {
        let path = folder.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::NotFound(path));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::format(&path, format!("not a valid tokenizer.json: {e}")))?;
        let id = |t: &str| -> Result<u32> {
            inner
                .token_to_id(t)
                .ok_or_else(|| ModelError::format(&path, format!("token {t} is missing")))
        };
        let eot = id("<|endoftext|>")?;
        let sot = id("<|startoftranscript|>")?;
        let no_timestamps = id("<|notimestamps|>")?;
        // English-only models have no language tokens in their prompt.
        let language_task = if config.vocab_size >= 51865 {
            vec![id(&format!("<|{language}|>"))?, id("<|transcribe|>")?]
        } else {
            vec![]
        };
        let read_ids = |file: &str, keys: &[&str]| -> Result<Vec<Vec<u32>>> {
            let p = folder.join(file);
            if !p.exists() {
                return Ok(vec![vec![]; keys.len()]);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::format(&p, e))?;
            Ok(keys
                .iter()
                .map(|k| {
                    json.get(*k)
                        .and_then(|v| v.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_u64())
                                .map(|x| x as u32)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect())
        };
        let (suppress, suppress_begin) = if folder.join("generation_config.json").exists() {
            let mut v = read_ids(
                "generation_config.json",
                &["suppress_tokens", "begin_suppress_tokens"],
            )?;
            (std::mem::take(&mut v[0]), std::mem::take(&mut v[1]))
        } else {
            let mut v = read_ids("config.json", &["suppress_ids", "suppress_ids_begin"])?;
            (std::mem::take(&mut v[0]), std::mem::take(&mut v[1]))
        };
        Ok(Self {
            inner,
            eot,
            sot,
            no_timestamps,
            language_task,
            suppress,
            suppress_begin,
        })
    }

    /// The decoder prompt for transcription without timestamps.
    pub fn prompt(&self) -> Vec<u32> {
        let mut p = vec![self.sot];
        p.extend(&self.language_task);
        p.push(self.no_timestamps);
        p
    }

    /// Text of generated tokens (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text_ids: Vec<u32> = ids.iter().copied().filter(|&t| t < self.eot).collect();
        self.inner.decode(&text_ids, true).map_err(|e| {
            ModelError::Unsupported(format!("Whisper tokenizer failed to decode: {e}"))
        })
    }
}

/// Whisper's encoder as an [`AudioEncoder`].
pub struct WhisperAudioEncoder {
    encoder: WhisperEncoder,
    mel: WhisperMel,
    /// Which hidden state to return.
    pub layer: LayerSelection,
    /// Encode the clip's real length (positions sliced) instead of padding every window to 30 s.
    pub real_length: bool,
    /// Long-clip policy.
    pub windows: WindowPolicy,
    /// Identity of the weights (e.g. the model folder name).
    pub model_id: String,
}

impl WhisperAudioEncoder {
    /// Wraps a loaded encoder.
    pub fn new(encoder: WhisperEncoder, n_mels: usize, model_id: String) -> Self {
        Self {
            encoder,
            mel: WhisperMel::new(n_mels),
            layer: LayerSelection::Last,
            real_length: true,
            windows: WindowPolicy::default(),
            model_id,
        }
    }

    /// The underlying encoder.
    pub fn encoder(&self) -> &WhisperEncoder {
        &self.encoder
    }

    fn device(&self) -> &Device {
        self.encoder.embed_positions.device()
    }
}

impl AudioEncoder for WhisperAudioEncoder {
    fn id(&self) -> String {
        format!(
            "whisper:{}:{:?}:real_length={}:mels={}",
            self.model_id,
            self.layer,
            self.real_length,
            self.mel.n_mels()
        )
    }

    fn dim(&self) -> usize {
        self.encoder.embed_positions.dims()[1]
    }

    fn window_samples(&self) -> Option<usize> {
        Some(self.encoder.max_frames() * 160)
    }

    fn max_samples(&self) -> Option<usize> {
        Some(self.encoder.max_frames() * 160 * self.windows.max_windows)
    }

    /// Per window, one token per 320 samples (two mel frames), or the whole window's tokens
    /// without `real_length`.
    fn rows_for(&self, samples: usize) -> Option<usize> {
        let window = self.encoder.max_frames() * 160;
        let whole = samples / window;
        let rest = samples % window;
        let per_window = window / 320;
        let tail = match (rest, self.real_length) {
            (0, _) => 0,
            (r, true) => r.div_ceil(320),
            (_, false) => per_window,
        };
        Some(whole * per_window + tail)
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        Ok(self
            .encode_batch(&[samples])?
            .pop()
            .expect("one clip in, one out"))
    }

    /// Every window of every clip in one padded pass (see [`WhisperEncoder::forward_padded`]).
    fn encode_batch(&self, clips: &[&[f32]]) -> Result<Vec<Tensor>> {
        let window = self.encoder.max_frames() * 160;
        let n_mels = self.mel.n_mels();
        // (clip, mel values, frames) of every window.
        let mut windows: Vec<(usize, Vec<f32>, usize)> = vec![];
        for (c, samples) in clips.iter().enumerate() {
            for chunk in self.windows.split(samples, window)? {
                let mut padded = chunk.to_vec();
                let length = if self.real_length {
                    // Whole encoder tokens: a multiple of 2 frames (320 samples).
                    chunk.len().div_ceil(320).max(1) * 320
                } else {
                    window
                };
                padded.resize(length, 0.0);
                let (feats, frames) = self.mel.compute(&padded, false);
                windows.push((c, feats, frames));
            }
        }
        let longest = windows.iter().map(|w| w.2).max().unwrap_or(2);
        let mut batch = vec![0f32; windows.len() * n_mels * longest];
        for (w, (_, feats, frames)) in windows.iter().enumerate() {
            for m in 0..n_mels {
                let row = (w * n_mels + m) * longest;
                batch[row..row + frames].copy_from_slice(&feats[m * frames..(m + 1) * frames]);
            }
        }
        let dtype = self.encoder.embed_positions.dtype();
        let mel = Tensor::from_vec(batch, (windows.len(), n_mels, longest), self.device())?
            .to_dtype(dtype)?;
        let frames: Vec<usize> = windows.iter().map(|w| w.2).collect();
        let out = self
            .encoder
            .forward_padded(&mel, Some(&frames), self.layer)?;
        let mut per_clip: Vec<Vec<Tensor>> = vec![vec![]; clips.len()];
        for (w, (c, _, frames)) in windows.iter().enumerate() {
            per_clip[*c].push(out.get(w)?.narrow(0, 0, frames / 2)?);
        }
        per_clip
            .into_iter()
            .map(|parts| Ok(Tensor::cat(&parts, 0)?.contiguous()?))
            .collect()
    }
}
