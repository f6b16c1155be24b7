#!/usr/bin/env python3
"""Golden fixtures for pal's LLM parity tests, made with PyTorch + transformers.

Run once (needs `pip install torch transformers safetensors gguf`), commit the output; CI never
needs torch. Usage:

    python3 scripts/make_llm_fixtures.py [--gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf]

Writes crates/pal-models/tests/fixtures/:
  tiny-llama/ tiny-qwen2/ tiny-qwen3/   random tiny models (config.json, model.safetensors)
                                        + golden.safetensors (input_ids, attention_mask, logits)
  smollm2-golden.safetensors, smollm2-golden.json   (with --gguf) logits and token ids from the
                                        real SmolLM2-135M-Instruct GGUF, dequantized by transformers
  tiny-gemma3/                          a tiny random Gemma 3 (text) folder and its logits
  gemma3-golden.safetensors, gemma3-golden.json     (with --gemma3-gguf) the same from the real
                                        Gemma 3 270M Q4_K_M GGUF (`pal fetch gemma3-270m`)
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "crates", "pal-models", "tests", "fixtures")


def tiny_models():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from transformers import Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5)
    yield "tiny-llama", LlamaForCausalLM(LlamaConfig(
        **common, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}))
    yield "tiny-qwen2", Qwen2ForCausalLM(Qwen2Config(
        **common, rope_theta=1000000.0, tie_word_embeddings=True))
    yield "tiny-qwen3", Qwen3ForCausalLM(Qwen3Config(
        **common, head_dim=32, rope_theta=1000000.0, tie_word_embeddings=True))


def make_tiny():
    torch.manual_seed(0)
    for name, model in tiny_models():
        write_tiny(name, model)


def write_tiny(name, model):
    """Saves `model` as a Hugging Face folder under fixtures/NAME with its logits on a batch of 3
    with right padding (pad id 0, masked out)."""
    input_ids = torch.tensor([[5, 17, 33, 2, 90, 41, 7],
                              [8, 9, 10, 11, 0, 0, 0],
                              [60, 61, 0, 0, 0, 0, 0]])
    attention_mask = (torch.arange(7)[None, :] < torch.tensor([[7], [4], [2]])).long()
    model = model.float().eval()
    # Random init leaves norms at one (Gemma's at zero, of its 1 + w): perturb them so the
    # parity test sees their weights.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
    out_dir = os.path.join(ROOT, name)
    model.save_pretrained(out_dir, safe_serialization=True)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    save_file({"input_ids": input_ids.to(torch.int64), "attention_mask": attention_mask,
               "logits": logits.contiguous()}, os.path.join(out_dir, "golden.safetensors"))
    for extra in ("generation_config.json",):
        path = os.path.join(out_dir, extra)
        if os.path.exists(path):
            os.remove(path)
    print("wrote", out_dir)


def make_tiny_gemma3():
    """A tiny random Gemma 3 (text-only, as transformers writes it): norms stored as w of
    (1 + w), q/k norms, before and after norms around attention and FFN, GELU-tanh, embeddings
    scaled by sqrt(d), tied output, and two sliding-window layers (window 4, shorter than the
    batch's 7 positions, RoPE base 10,000) before a global one (base 1,000,000)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        max_position_embeddings=128, rms_norm_eps=1e-6, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        tie_word_embeddings=True, pad_token_id=0)
    write_tiny("tiny-gemma3", Gemma3ForCausalLM(config))


def make_smollm2(gguf_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    texts = ["Hello, world!", "The year 2025 had 365 days.", "  spaces\tand\nnewlines ",
             "naïve café 東京", prompt]
    save_file({"input_ids": ids[0].to(torch.int64).contiguous(),
               "last_logits": logits[-1].contiguous(),
               "head_logits": logits[:, :256].contiguous()},
              os.path.join(ROOT, "smollm2-golden.safetensors"))
    with open(os.path.join(ROOT, "smollm2-golden.json"), "w") as f:
        json.dump({"prompt": prompt,
                   "encodings": [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids}
                                 for t in texts]}, f, indent=1, ensure_ascii=False)
    print("wrote smollm2 golden; argmax of last position:", int(logits[-1].argmax()),
          repr(tok.decode([int(logits[-1].argmax())])))


def make_gemma3(gguf_path):
    """Gemma 3 270M (base): logits of a plain-text prompt longer than the sliding window (512),
    so that the local layers' window is checked, and the tokenizer on a few texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    prompt = sentence * 48 + "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids  # with <bos>, as pal's Gemma template adds it
    assert ids.shape[1] > 600, ids.shape
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    texts = ["Hello, world!", "The year 2025 had 365 days.", "  spaces\tand\nnewlines ",
             "naïve café 東京", "<start_of_turn>user\nHi<end_of_turn>\n\n\n", "ünïcödé 🎵 ok"]
    save_file({"input_ids": ids[0].to(torch.int64).contiguous(),
               "last_logits": logits[-1].contiguous(),
               "rows_logits": logits[::64, :512].contiguous()},
              os.path.join(ROOT, "gemma3-golden.safetensors"))
    with open(os.path.join(ROOT, "gemma3-golden.json"), "w") as f:
        json.dump({"prompt": prompt,
                   "encodings": [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids}
                                 for t in texts]}, f, indent=1, ensure_ascii=False)
    print("wrote gemma3 golden; argmax of last position:", int(logits[-1].argmax()),
          repr(tok.decode([int(logits[-1].argmax())])))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--gemma3-gguf", help="path of gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--only-gemma3", action="store_true", help="skip the other fixtures")
    parser.add_argument("--only-tiny-gemma3", action="store_true",
                        help="write only the tiny Gemma 3 folder")
    args = parser.parse_args()
    if args.only_tiny_gemma3:
        make_tiny_gemma3()
    elif not args.only_gemma3:
        make_tiny()
        make_tiny_gemma3()
    if args.gguf:
        make_smollm2(args.gguf)
    if args.gemma3_gguf:
        make_gemma3(args.gemma3_gguf)
