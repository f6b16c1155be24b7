//! Jinja chat templates (as shipped in tokenizer_config.json or GGUF metadata), rendered with
//! minijinja plus Python-compatible string methods.

use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// ChatML, used when a model ships no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turns (`<start_of_turn>user ... <end_of_turn>`, the model's turn named `model`, a
/// system message folded into the first user turn), used for a Gemma 3 GGUF file or folder that
/// ships no template (the base model): pal trains adapters on the base model in the format its
/// instruction-tuned sibling reads, whose control tokens are in the same vocabulary.
pub const GEMMA_TURNS: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// The template a model of family `model_type` (as [`crate::llm::LlamaConfig`] names it) gets
/// when its file or folder ships none: Gemma's turns for Gemma 3; none for the others (the
/// renderer then falls back to ChatML).
pub fn family_template(model_type: &str) -> Option<&'static str> {
    (model_type == "gemma3").then_some(GEMMA_TURNS)
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are exposed to the template as in transformers.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat".to_string(), source.to_string())
            .map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// The template of a tokenizer, or ChatML if it has none.
    pub fn for_tokenizer(tokenizer: &crate::text::tokenizer::Tokenizer) -> Result<Self> {
        let source = tokenizer.chat_template.as_deref().unwrap_or(CHATML);
        Self::new(
            source,
            tokenizer.bos_token.as_deref(),
            tokenizer.eos_token.as_deref(),
        )
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}
