//! Text tokenizer with the special tokens and chat template that generation needs, from a Hugging
//! Face folder (`tokenizer.json`, `tokenizer_config.json`) or a GGUF file's metadata.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;

/// A `tokenizers` tokenizer plus what generation needs around it.
#[derive(Clone)]
pub struct Tokenizer {
    /// The underlying tokenizer (vocabulary, pre-tokenizer, decoder).
    pub inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token text, if the model has one.
    pub bos_token: Option<String>,
    /// End-of-sequence token text, if the model has one.
    pub eos_token: Option<String>,
    /// Token ids that end generation (eos and the model's end-of-turn tokens).
    pub stop_token_ids: Vec<u32>,
    /// Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    /// `inner` with special-token matching off (made on first use by [`Self::encode_text`]).
    plain: std::sync::OnceLock<tokenizers::Tokenizer>,
}

/// End-of-turn tokens of common chat formats: a generation stops at any of them that the
/// vocabulary has, in addition to the configured eos.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<end_of_turn>",
];

impl Tokenizer {
    /// Assembles a tokenizer; stop tokens are the eos ids plus known end-of-turn tokens.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        eos_ids: &[u32],
        chat_template: Option<String>,
    ) -> Self {
        let mut stop_token_ids: Vec<u32> = eos_ids.to_vec();
        let named = eos_token
            .iter()
            .map(|s| s.as_str())
            .chain(END_OF_TURN.iter().copied());
        for token in named {
            if let Some(id) = inner.token_to_id(token) {
                if !stop_token_ids.contains(&id) {
                    stop_token_ids.push(id);
                }
            }
        }
        Self {
            inner,
            bos_token,
            eos_token,
            stop_token_ids,
            chat_template,
            plain: std::sync::OnceLock::new(),
        }
    }

    /// Loads `tokenizer.json`, `tokenizer_config.json` (special tokens, chat template),
    /// `chat_template.jinja` and `generation_config.json` (eos ids) from a Hugging Face folder.
    pub fn from_hf_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::NotFound(path));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::format(&path, format!("not a valid tokenizer.json: {e}")))?;
        let config = read_json_opt(&folder.join("tokenizer_config.json"))?;
        let token_text = |key: &str| -> Option<String> {
            let v = config.as_ref()?.get(key)?;
            v.as_str().map(str::to_string).or_else(|| {
                v.get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
        };
        let template_file = folder.join("chat_template.jinja");
        let chat_template = if template_file.exists() {
            Some(
                std::fs::read_to_string(&template_file)
                    .map_err(|e| ModelError::io(&template_file, e))?,
            )
        } else {
            config
                .as_ref()
                .and_then(|c| c.get("chat_template"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
        };
        let mut eos_ids = Vec::new();
        if let Some(gen) = read_json_opt(&folder.join("generation_config.json"))? {
            match gen.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eos_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                }
                _ => {}
            }
        }
        Ok(Self::new(
            inner,
            token_text("bos_token"),
            token_text("eos_token"),
            &eos_ids,
            chat_template,
        ))
    }

    /// Token ids of `text`; special-token text (like `<|im_start|>`) maps to its single id.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Unsupported(format!("tokenizer failed to encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of text a person wrote: a special token's spelling in it (`<|im_end|>`) is
    /// ordinary characters, never the control token. Only the chat template places those.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut plain = self.inner.clone();
            plain.set_encode_special_tokens(true);
            plain
        });
        let enc = plain
            .encode(text, false)
            .map_err(|e| ModelError::Unsupported(format!("tokenizer failed to encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The first special token whose spelling `text` contains, if any.
    pub fn special_token_in(&self, text: &str) -> Option<String> {
        self.inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .find(|t| text.contains(t.as_str()))
    }

    /// Text of `ids`, without special tokens when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Unsupported(format!("tokenizer failed to decode: {e}")))
    }

    /// The token that ends an answer: the stop token the chat template writes after a turn
    /// (`<end_of_turn>` for Gemma, whose file names `<eos>` as its eos), else the first stop
    /// token.
    pub fn answer_end_id(&self) -> Option<u32> {
        let template = self
            .chat_template
            .as_deref()
            .unwrap_or(crate::text::chat_template::CHATML);
        self.stop_token_ids
            .iter()
            .copied()
            .find(|&id| {
                self.inner
                    .id_to_token(id)
                    .is_some_and(|t| !t.is_empty() && template.contains(t.as_str()))
            })
            .or_else(|| self.stop_token_ids.first().copied())
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// Regex of the Llama 3 ("llama-bpe") pre-tokenizer.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Regex of the Qwen2 pre-tokenizer.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// The tokenizer and chat template from a GGUF file's metadata: GPT-2 style byte-level BPE
    /// (`gpt2`: Llama 3, SmolLM2, Qwen) or SentencePiece BPE (`llama`: Gemma).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.string_of("tokenizer.ggml.model")?;
        let tokens = file.strings_of("tokenizer.ggml.tokens")?;
        let token_types: Vec<i32> = match file.metadata("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let inner = match model.as_str() {
            "gpt2" => byte_level_bpe(file, &tokens, &token_types)?,
            "llama" => sentencepiece_bpe(file, &tokens, &token_types)?,
            other => {
                return Err(ModelError::format(
                    file.path(),
                    format!("tokenizer model '{other}' is not supported from GGUF (gpt2 and llama are); use a Hugging Face folder with tokenizer.json"),
                ))
            }
        };
        let id_text = |key: &str| -> Option<(u32, String)> {
            let id = file.metadata(key)?.to_u32().ok()?;
            Some((id, tokens.get(id as usize)?.clone()))
        };
        let bos = id_text("tokenizer.ggml.bos_token_id");
        let eos = id_text("tokenizer.ggml.eos_token_id");
        // A base model's file carries no template: its family's, where pal has one.
        let template = file.string_of("tokenizer.chat_template").ok().or_else(|| {
            let arch = file.architecture().ok()?;
            crate::text::chat_template::family_template(&arch).map(str::to_string)
        });
        let eos_ids: Vec<u32> = eos.iter().map(|(id, _)| *id).collect();
        Ok(Self::new(
            inner,
            bos.map(|b| b.1),
            eos.map(|e| e.1),
            &eos_ids,
            template,
        ))
    }
}

/// GPT-2 style byte-level BPE from a GGUF file's vocabulary and merges; control (3) and
/// user-defined (4) tokens are matched whole, as special tokens.
fn byte_level_bpe(
    file: &GgufFile,
    tokens: &[String],
    token_types: &[i32],
) -> Result<tokenizers::Tokenizer> {
    let merges: Vec<(String, String)> = file
        .strings_of("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
            (a.to_string(), b.to_string())
        })
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::format(file.path(), format!("BPE vocabulary: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let pre = file
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
        .zip(token_types)
        .filter(|(_, ty)| **ty == 3 || **ty == 4)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    inner
        .add_special_tokens(special)
        .map_err(|e| ModelError::format(file.path(), format!("special tokens: {e}")))?;
    Ok(inner)
}

/// SentencePiece BPE (llama.cpp's `llama` tokenizer model: Gemma) from a GGUF file's vocabulary
/// and scores: spaces become `▁`, pieces merge pairwise, the merge whose result scores highest
/// first (so every pair of pieces that joins into a piece is a merge, ranked by that piece's
/// score), characters outside the vocabulary fall back to `<0xNN>` byte tokens. Control tokens
/// (3) are special; user-defined ones (4: runs of newlines, tabs, markup) are matched whole but
/// are text, kept when special tokens are skipped.
fn sentencepiece_bpe(
    file: &GgufFile,
    tokens: &[String],
    token_types: &[i32],
) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f32> = match file.metadata("tokenizer.ggml.scores") {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
        _ => {
            return Err(ModelError::format(
                file.path(),
                "tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs it)",
            ))
        }
    };
    if scores.len() != tokens.len() || token_types.len() != tokens.len() {
        return Err(ModelError::format(
            file.path(),
            format!(
                "tokenizer.ggml: {} tokens, {} scores, {} types",
                tokens.len(),
                scores.len(),
                token_types.len()
            ),
        ));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Normal tokens (1) are what merges make; byte tokens (6) and the rest are not merged.
    let mergeable = |id: u32| token_types[id as usize] == 1;
    let mut ranked: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !mergeable(id as u32) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if mergeable(l) && mergeable(r) {
                    ranked.push((scores[id], l, r, left.to_string(), right.to_string()));
                }
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = ranked.into_iter().map(|m| (m.3, m.4)).collect();
    let unk = file
        .metadata("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens.get(id as usize).cloned());
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let bpe = bpe
        .build()
        .map_err(|e| ModelError::format(file.path(), format!("BPE vocabulary: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let space =
        Replace::new(" ", "▁").map_err(|e| ModelError::Unsupported(format!("normalizer: {e}")))?;
    inner
        .with_normalizer(Some(space))
        .map_err(|e| ModelError::Unsupported(format!("normalizer: {e}")))?;
    let unspace = tokenizers::decoders::DecoderWrapper::Replace(
        Replace::new("▁", " ").map_err(|e| ModelError::Unsupported(format!("decoder: {e}")))?,
    );
    inner.with_decoder(Some(DecoderSequence::new(vec![
        unspace,
        ByteFallback::default().into(),
        Fuse::default().into(),
    ])));
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(token_types)
            .filter(|(_, t)| **t == ty)
            .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    inner
        .add_special_tokens(added(3, true))
        .map_err(|e| ModelError::format(file.path(), format!("special tokens: {e}")))?;
    inner
        .add_tokens(added(4, false))
        .map_err(|e| ModelError::format(file.path(), format!("user-defined tokens: {e}")))?;
    Ok(inner)
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
