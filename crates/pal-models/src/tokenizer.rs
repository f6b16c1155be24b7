//! Text tokenizer with the special tokens and chat template that generation needs.

use std::path::Path;

use crate::error::{ModelError, Result};

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

    /// Text of `ids`, without special tokens when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Unsupported(format!("tokenizer failed to decode: {e}")))
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
