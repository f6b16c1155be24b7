#!/usr/bin/env python3
"""PyTorch (eager, CPU) reference for `pal bench modes`: one training step of PLITS or LAL on a
frozen Llama-family LLM with the same shapes and the same mechanism as pal (PAPER.md), so the two
can be timed side by side in one run. Weights are random (timing does not depend on them); only
the connector (PLITS) or the per-layer projectors (LAL) train, the LLM is frozen
(`requires_grad_(False)`, so PyTorch computes no weight gradients for it either).

    python scripts/bench_modes_torch.py --mode lal --batch 4 --audio-tokens 256 --text-tokens 64

Prints one JSON line: {"mode", "step_seconds" and "forward_seconds" (medians), "peak_rss_bytes",
"threads"}.
Needs only `torch`. pal runs it through `pal bench modes --compare-python PYTHON`.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

# SmolLM2-135M shapes.
SMOLLM2 = dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152, theta=100000.0, eps=1e-5)
# Llama-3.2-1B shapes.
LLAMA32_1B = dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256, theta=500000.0, eps=1e-5)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rope_table(positions, head_dim, theta):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = positions[..., None].float() * inv
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]  # (b, 1, n, head_dim)


class Llama(torch.nn.Module):
    """A frozen Llama decoder whose layers can take a per-layer key/value prefix (LAL)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        d, f = c["hidden"], c["intermediate"]
        self.head_dim = d // c["heads"]
        kv = c["kv_heads"] * self.head_dim

        def lin(o, i):
            return torch.nn.Parameter(torch.randn(o, i) / i**0.5)

        self.embed = torch.nn.Parameter(torch.randn(c["vocab"], d) * 0.02)
        self.layers = torch.nn.ModuleList()
        for _ in range(c["layers"]):
            layer = torch.nn.Module()
            layer.ln1 = torch.nn.Parameter(torch.ones(d))
            layer.ln2 = torch.nn.Parameter(torch.ones(d))
            layer.q, layer.k, layer.v, layer.o = lin(d, d), lin(kv, d), lin(kv, d), lin(d, d)
            layer.gate, layer.up, layer.down = lin(f, d), lin(f, d), lin(d, f)
            self.layers.append(layer)
        self.norm = torch.nn.Parameter(torch.ones(d))
        self.requires_grad_(False)

    def forward(self, x, positions, prefixes=None):
        """x: (b, n, d) input embeddings; prefixes: {layer: (k, v)} with (b, kv_heads, Na, hd)."""
        c, hd = self.c, self.head_dim
        b, n, _ = x.shape
        cos, sin = rope_table(positions, hd, c["theta"])
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer.ln1, c["eps"])
            q = (h @ layer.q.T).view(b, n, c["heads"], hd).transpose(1, 2)
            k = (h @ layer.k.T).view(b, n, c["kv_heads"], hd).transpose(1, 2)
            v = (h @ layer.v.T).view(b, n, c["kv_heads"], hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            mask = causal
            if prefixes is not None and i in prefixes:
                pk, pv = prefixes[i]
                k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
                mask = torch.cat([torch.ones(n, pk.shape[2], dtype=torch.bool), causal], 1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            x = x + attn.transpose(1, 2).reshape(b, n, -1) @ layer.o.T
            h = rms_norm(x, layer.ln2, c["eps"])
            x = x + (F.silu(h @ layer.gate.T) * (h @ layer.up.T)) @ layer.down.T
        return rms_norm(x, self.norm, c["eps"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["plits", "lal"], required=True)
    p.add_argument("--shapes", choices=["smollm2-135m", "llama-3.2-1b"], default="smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--audio-tokens", type=int, default=256)
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--d-enc", type=int, default=384)
    p.add_argument("--lal-start", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    c = SMOLLM2 if args.shapes == "smollm2-135m" else LLAMA32_1B
    model = Llama(c)
    d, b, na, nt = c["hidden"], args.batch, args.audio_tokens, args.text_tokens
    frames = torch.randn(b, na, args.d_enc)
    ids = torch.randint(0, c["vocab"], (b, nt))
    lal_layers = list(range(args.lal_start, c["layers"]))
    if args.mode == "plits":
        # MLP connector, as pal's default: Linear(d_enc, d) -> GELU -> Linear(d, d).
        w1 = torch.nn.Parameter(torch.randn(d, args.d_enc) / args.d_enc**0.5)
        b1 = torch.nn.Parameter(torch.zeros(d))
        w2 = torch.nn.Parameter(torch.randn(d, d) / d**0.5)
        b2 = torch.nn.Parameter(torch.zeros(d))
    else:
        # One linear projector per LAL layer (batched), as pal's `projector = "linear"`.
        w = torch.nn.Parameter(torch.randn(len(lal_layers), d, args.d_enc) / args.d_enc**0.5)
        bias = torch.nn.Parameter(torch.zeros(len(lal_layers), 1, d))

    def step():
        text = model.embed[ids]
        if args.mode == "plits":
            audio = F.linear(F.gelu(F.linear(frames, w1, b1)), w2, b2)
            x = torch.cat([audio, text], 1)
            positions = torch.arange(na + nt).expand(b, -1)
            hidden = model(x, positions)[:, na:]
        else:
            hd, kvh = model.head_dim, c["kv_heads"]
            projected = torch.einsum("bne,lde->lbnd", frames, w) + bias[:, None]
            cos, sin = rope_table(torch.arange(na).expand(b, -1), hd, c["theta"])
            prefixes = {}
            for j, i in enumerate(lal_layers):
                layer = model.layers[i]
                h = rms_norm(projected[j], layer.ln1, c["eps"])
                k = (h @ layer.k.T).view(b, na, kvh, hd).transpose(1, 2)
                v = (h @ layer.v.T).view(b, na, kvh, hd).transpose(1, 2)
                prefixes[i] = (rope(k, cos, sin), v)
            positions = torch.arange(na, na + nt).expand(b, -1)
            hidden = model(text, positions, prefixes)
        # Next-token loss on the text rows; the output projection runs on those rows only.
        logits = hidden[:, :-1] @ model.embed.T
        loss = F.cross_entropy(logits.reshape(-1, c["vocab"]), ids[:, 1:].reshape(-1))
        return loss

    times, forwards = [], []
    for s in range(args.steps + 1):
        start = time.perf_counter()
        loss = step()
        forward = time.perf_counter() - start
        loss.backward()
        if s > 0:
            times.append(time.perf_counter() - start)
            forwards.append(forward)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": args.mode, "step_seconds": statistics.median(times),
                      "forward_seconds": statistics.median(forwards),
                      "peak_rss_bytes": peak, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
