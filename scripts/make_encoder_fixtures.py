#!/usr/bin/env python3
"""Golden fixtures for pal's encoder tests: tiny random Whisper and AST models saved with
transformers, their outputs on fixed inputs, and the Whisper one also converted to CTranslate2
(needs `pip install ctranslate2`). Run once with torch + transformers; commit the output.

    python3 scripts/make_encoder_fixtures.py

Writes crates/pal-models/tests/fixtures/{tiny-whisper, tiny-whisper-ct2, tiny-ast}/.
"""
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(__file__), "..", "crates", "pal-models", "tests", "fixtures")


def perturb_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=128, num_mel_bins=80, d_model=64, encoder_layers=2,
                        encoder_attention_heads=4, decoder_layers=2, decoder_attention_heads=4,
                        encoder_ffn_dim=96, decoder_ffn_dim=96, max_source_positions=1500,
                        max_target_positions=64, decoder_start_token_id=1, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(cfg).eval()
    perturb_norms(model)
    out = os.path.join(ROOT, "tiny-whisper")
    model.save_pretrained(out, safe_serialization=True)
    # A deterministic input that the Rust test recomputes (so it need not be stored):
    # mel[c, t] = 0.5 sin(0.37 c + 0.011 t (1 + c / 80)), computed in float64.
    c = torch.arange(80, dtype=torch.float64)[:, None]
    t = torch.arange(3000, dtype=torch.float64)[None, :]
    mel = (0.5 * torch.sin(0.37 * c + 0.011 * t * (1 + c / 80))).float()[None]
    tokens = torch.tensor([[1, 5, 9, 17, 100]])
    with torch.no_grad():
        enc = model.model.encoder(mel, output_hidden_states=True)
        logits = model(input_features=mel, decoder_input_ids=tokens).logits
        # Real-length encoding: the first 200 frames only, positions 0..99.
        short = model.model.encoder.embed_positions.weight[:100]
        x = torch.nn.functional.gelu(model.model.encoder.conv1(mel[:, :, :200]))
        x = torch.nn.functional.gelu(model.model.encoder.conv2(x)).permute(0, 2, 1) + short
        for layer in model.model.encoder.layers:
            o = layer(x, attention_mask=None)
            x = o[0] if isinstance(o, tuple) else o
        x = model.model.encoder.layer_norm(x)
    save_file({"tokens": tokens, "encoder_out": enc.last_hidden_state.contiguous(),
               "hidden_1": enc.hidden_states[1].contiguous(), "logits": logits.contiguous(),
               "short_out": x.contiguous()},
              os.path.join(out, "golden.safetensors"))
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    print("wrote", out)
    ct2_out = os.path.join(ROOT, "tiny-whisper-ct2")
    shutil.rmtree(ct2_out, ignore_errors=True)
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        print("ctranslate2 not installed: skipping the CTranslate2 fixture")
        return
    # The converter needs a tokenizer next to the model; reuse nothing real: a byte-level BPE
    # with the tiny vocabulary is enough for it to run.
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"t{i}": i for i in range(128)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(os.path.join(out, "tokenizer.json"))
    subprocess.run(["ct2-transformers-converter", "--model", out, "--output_dir", ct2_out,
                    "--quantization", "float16"], check=True,
                   env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]})
    os.remove(os.path.join(out, "tokenizer.json"))
    for extra in ("vocabulary.json", "vocabulary.txt", "tokenizer.json"):
        p = os.path.join(ct2_out, extra)
        if os.path.exists(p) and extra != "vocabulary.txt":
            os.remove(p)
    print("wrote", ct2_out)


def ast():
    from transformers import ASTConfig, ASTModel
    torch.manual_seed(1)
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    patch_size=16, frequency_stride=10, time_stride=10, max_length=128,
                    num_mel_bins=128, layer_norm_eps=1e-12)
    model = ASTModel(cfg).eval()
    perturb_norms(model)
    out = os.path.join(ROOT, "tiny-ast")
    model.save_pretrained(out, safe_serialization=True)
    fbank = torch.randn(1, 128, 128)
    with torch.no_grad():
        o = model(fbank, output_hidden_states=True)
    save_file({"fbank": fbank, "last_hidden_state": o.last_hidden_state.contiguous(),
               "hidden_1": o.hidden_states[1].contiguous()},
              os.path.join(out, "golden.safetensors"))
    print("wrote", out)


if __name__ == "__main__":
    whisper()
    ast()
