//! Fine-tuning the LLM itself: LoRA adapters on a layer's linear layers, or every weight made
//! trainable (registered by its Hugging Face name).

use crate::error::{ModelError, Result};
use crate::llm::decoder::Llama;
use crate::llm::layer::{FFN_LINEARS, LINEAR_NAMES};

impl Llama {
    /// Attaches LoRA adapters (rank `rank`, scale `alpha / rank`) to the `targets` of every layer;
    /// their parameters are created in `params` as `llm.layers.N.TARGET.lora_a` / `lora_b`
    /// (`B` starts at zero). With `frozen_ffn`, FFN targets are refused.
    pub fn attach_lora(
        &mut self,
        params: &pal_nn::Params,
        rank: usize,
        alpha: f64,
        targets: &[String],
        frozen_ffn: bool,
    ) -> Result<()> {
        for t in targets {
            if !LINEAR_NAMES.contains(&t.as_str()) {
                return Err(ModelError::Unsupported(format!(
                    "unknown LoRA target '{t}' (one of {})",
                    LINEAR_NAMES.join(", ")
                )));
            }
            if frozen_ffn && FFN_LINEARS.contains(&t.as_str()) {
                return Err(ModelError::Unsupported(format!(
                    "LoRA target '{t}' is an FFN weight, but the model config sets frozen_ffn"
                )));
            }
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for t in targets {
                let linear = layer.linear_mut(t).expect("checked above");
                let (out, inp) = linear.weight.dims2()?;
                let name = format!("llm.layers.{i}.{t}");
                let bound = 1.0 / (inp as f64).sqrt();
                let a = params.get(
                    &format!("{name}.lora_a"),
                    &[rank, inp],
                    pal_nn::Init::Uniform(bound),
                )?;
                let b = params.get(&format!("{name}.lora_b"), &[out, rank], pal_nn::Init::Zeros)?;
                linear.lora = Some(pal_nn::Lora {
                    a,
                    b,
                    scale: alpha / rank as f64,
                });
            }
        }
        Ok(())
    }

    /// Makes every LLM weight trainable (registered in `params` as `llm.` + its Hugging Face
    /// name), except the FFN weights when `frozen_ffn` is set.
    pub fn make_trainable(&mut self, params: &pal_nn::Params, frozen_ffn: bool) -> Result<()> {
        let tied = self.config.tie_word_embeddings;
        self.embed_tokens = params.adopt("llm.model.embed_tokens.weight", &self.embed_tokens)?;
        if tied {
            self.lm_head.weight = self.embed_tokens.clone();
        } else {
            self.lm_head.weight = params.adopt("llm.lm_head.weight", &self.lm_head.weight)?;
        }
        self.norm = params.adopt("llm.model.norm.weight", &self.norm)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("llm.model.layers.{i}");
            layer.input_layernorm = params.adopt(
                &format!("{p}.input_layernorm.weight"),
                &layer.input_layernorm,
            )?;
            // Named as in the model's own checkpoints: with sandwich norms (Gemma) the FFN's
            // pre-norm is `pre_feedforward_layernorm`, the attention output's norm
            // `post_attention_layernorm`.
            let pre_ffn = match self.config.sandwich_norms {
                true => "pre_feedforward_layernorm",
                false => "post_attention_layernorm",
            };
            layer.post_attention_layernorm = params.adopt(
                &format!("{p}.{pre_ffn}.weight"),
                &layer.post_attention_layernorm,
            )?;
            if let Some(n) = &layer.attention_output_norm {
                layer.attention_output_norm =
                    Some(params.adopt(&format!("{p}.post_attention_layernorm.weight"), n)?);
            }
            if let Some(n) = &layer.ffn_output_norm {
                layer.ffn_output_norm =
                    Some(params.adopt(&format!("{p}.post_feedforward_layernorm.weight"), n)?);
            }
            if let Some(n) = &layer.q_norm {
                layer.q_norm = Some(params.adopt(&format!("{p}.self_attn.q_norm.weight"), n)?);
            }
            if let Some(n) = &layer.k_norm {
                layer.k_norm = Some(params.adopt(&format!("{p}.self_attn.k_norm.weight"), n)?);
            }
            for t in LINEAR_NAMES {
                if frozen_ffn && FFN_LINEARS.contains(t) {
                    continue;
                }
                let group = if FFN_LINEARS.contains(t) {
                    "mlp"
                } else {
                    "self_attn"
                };
                let linear = layer.linear_mut(t).expect("known target");
                linear.weight = params.adopt(&format!("{p}.{group}.{t}.weight"), &linear.weight)?;
                if let Some(b) = &linear.bias {
                    linear.bias = Some(params.adopt(&format!("{p}.{group}.{t}.bias"), b)?);
                }
            }
        }
        Ok(())
    }
}
