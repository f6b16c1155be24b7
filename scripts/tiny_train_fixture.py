#!/usr/bin/env python3
"""Write a tiny, self-contained training job for `pal train` that needs no fetched model: a
random 4-layer Llama as a Hugging Face folder (width 64, a word-level tokenizer of 64 words, a
ChatML template), a feature shard set of synthetic spoken-digit records with random features
(an external encoder, `kind = "shards"`), and for LAL and PLITS a model config and a 10-step
curriculum of batch 8.

It is what `scripts/gpu_check.sh` trains on a GPU machine, where no model can be fetched: the
CUDA build against the NCCL build (one rank) against the CPU, adapters compared. About 150 KB;
carry it along. Needs numpy and safetensors (the test venv has both):

    python scripts/tiny_train_fixture.py OUT_DIR
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from write_shards import DIGITS, ShardSetWriter  # noqa: E402

SPECIAL = ["<|im_start|>", "<|im_end|>", "[UNK]"]
WORDS = ["system", "user", "assistant", "Which", "digit", "is", "spoken", "?", "You", "are", "a",
         "helpful", "assistant", ".", "Say", "the"] + DIGITS
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, DIM, TOKENS, RECORDS = 64, 4, 4, 2, 128, 64, 32, 8, 48
TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{{ message['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer(folder):
    vocab = {}
    for word in SPECIAL + WORDS:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= VOCAB
    added = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for t in SPECIAL]
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                   "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
                   "post_processor": None, "decoder": None,
                   "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "chat_template": TEMPLATE}, f)


def llm(folder, rng):
    os.makedirs(folder, exist_ok=True)
    head = HIDDEN // HEADS
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                   "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
                   "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                   "num_key_value_heads": KV_HEADS, "head_dim": head, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "max_position_embeddings": 512,
                   "tie_word_embeddings": True, "hidden_act": "silu"}, f)

    def w(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(VOCAB, HIDDEN),
               "model.norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(HEADS * head, HIDDEN),
            p + "self_attn.k_proj.weight": w(KV_HEADS * head, HIDDEN),
            p + "self_attn.v_proj.weight": w(KV_HEADS * head, HIDDEN),
            p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * head),
            p + "mlp.gate_proj.weight": w(FFN, HIDDEN),
            p + "mlp.up_proj.weight": w(FFN, HIDDEN),
            p + "mlp.down_proj.weight": w(HIDDEN, FFN),
            p + "input_layernorm.weight": np.ones(HIDDEN, np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        })
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    tokenizer(folder)


def shards(folder, rng):
    writer = ShardSetWriter(folder, "tiny", "random-32", DIM, "f32", 0.02)
    for i in range(RECORDS):
        messages = [{"role": "user", "content": "Which digit is spoken?"},
                    {"role": "assistant", "content": DIGITS[i % 10]}]
        feats = rng.standard_normal((TOKENS, DIM)).astype(np.float32)
        writer.add({"audio": f"synthetic/{i}.wav", "origin": f"synthetic:{i + 1}",
                    "messages": messages}, [feats])
    writer.close()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    llm(os.path.join(out, "llm"), rng)
    shards(os.path.join(out, "feats"), rng)
    for route in ["lal", "plits"]:
        lal = "lal = { start = 1 }\n" if route == "lal" else ""
        with open(os.path.join(out, f"{route}.toml"), "w") as f:
            f.write(f'seed = 1\n[llm]\npath = "llm"\n[[encoders]]\nname = "tiny"\n'
                    f'kind = "shards"\npath = "feats"\nroute = "{route}"\n{lal}')
        with open(os.path.join(out, f"train-{route}.toml"), "w") as f:
            f.write(f'model = "{route}.toml"\noutput = "run-{route}"\nseed = 3\n'
                    'checkpoint_every = 5\n[[stages]]\nname = "projectors"\n'
                    'shards = [{ path = "feats" }]\nsteps = 10\nlr = 1e-3\nbatch_size = 8\n'
                    'warmup_steps = 2\n')
    print(f"{out}: tiny LLM, {RECORDS} records of {TOKENS}x{DIM} features, "
          "train-lal.toml and train-plits.toml")


if __name__ == "__main__":
    main()
