#!/usr/bin/env python3
"""PyTorch reference for `pal bench modes`: one training step of PLITS or LAL on a frozen
Llama-family LLM with the same shapes, mechanism (PAPER.md) and loss as pal, so the two can be
timed side by side in one run. Written as a PyTorch user would write it: `nn.Linear` modules
(one per LAL layer), `F.rms_norm`, `F.scaled_dot_product_attention` with GQA, the frozen LLM
under `requires_grad_(False)` (no weight gradients for it), and optionally `torch.compile`.

Timing (random weights; the values do not change the time):

    python scripts/bench_modes_torch.py --mode lal --batch 4 --audio-tokens 256 --text-tokens 64 \
        [--compile] [--autocast] [--device cuda] [--dtype bf16]

prints one JSON line: {"mode", "step_seconds" and "forward_seconds" (medians of forward +
backward, and of the forward; no optimizer step, as on pal's side), "peak_rss_bytes",
"threads", "torch", "compiled", "device", "dtype", and on CUDA "peak_gpu_bytes"}. With
`--dtype bf16` the frozen LLM and the activations are bf16, the adapter (what trains) stays f32
with its output cast to bf16, and the loss is computed in f32: the mixed precision the GPU
issue asks of pal.

Parity (before timing): `--parity FILE` loads the weights, inputs, loss and adapter gradients
that pal wrote for one step (`pal bench modes --compare-python`), runs the same step in f32 and
again in f64 (the exact answer, to f32's eyes), and prints {"parity": {"loss_pal",
"loss_torch", "loss_relative_error", "gradient_relative_error" (pal against PyTorch f32: the
largest over the adapter's tensors of max|g_a - g_b| / max|g_b|), "pal_error_vs_f64",
"torch_error_vs_f64", "ok"}}. ok when the losses agree to 1e-4 and pal's gradients are within
2e-3 of the f64 step, or no further from it than twice PyTorch's own f32 gradients (through 30
layers of backward, f32 rounding alone reaches 1e-3 on the first layers' projectors: on one AMD
EPYC, LAL's worst tensor had pal at 1.1e-3 to 1.2e-3 and PyTorch's f32 at 5.1e-4 to 8.4e-4 from
one run to another, PyTorch's own f32 loss moving in its seventh digit between runs).

Needs only `torch`. pal runs it through `pal bench modes --compare-python PYTHON`, with the same
allocator settings as pal's (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_).
"""
import argparse
import json
import math
import mmap
import resource
import statistics
import struct
import time

import torch
import torch.nn.functional as F

# SmolLM2-135M shapes.
SMOLLM2 = dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152, theta=100000.0, eps=1e-5)
# Llama-3.2-1B shapes, with its "llama3" RoPE scaling (as pal's config of these shapes has it).
LLAMA32_1B = dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256, theta=500000.0, eps=1e-5,
                  rope_llama3=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original=8192))

LOSS_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 2e-3


def read_safetensors(path):
    """A safetensors file as {name: tensor} (F32 and I64 only), without the safetensors package."""
    dtypes = {"F32": torch.float32, "I64": torch.int64}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        # Mapped copy-on-write: the weights are read in place, not copied (gigabytes at 1B).
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        count = (end - start) // dtype.itemsize
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=8 + n + start)
        out[name] = flat.reshape(info["shape"])
    return out


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rope_table(positions, head_dim, theta, dtype=torch.float32, llama3=None):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if llama3 is not None:
        # Wavelengths below original / high_freq_factor keep their frequency, those above
        # original / low_freq_factor are divided by the factor, and those between blend the two.
        old, factor = llama3["original"], llama3["factor"]
        low, high = llama3["low_freq_factor"], llama3["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen < old / high, inv, torch.where(wavelen > old / low, inv / factor, blended))
    inv = inv.to(torch.float32).to(positions.device)
    freqs = positions[..., None].float() * inv
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)  # (b, 1, n, head_dim)


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f, hd = c["hidden"], c["intermediate"], c["hidden"] // c["heads"]
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.input_layernorm = torch.nn.Parameter(torch.ones(d))
        self.post_attention_layernorm = torch.nn.Parameter(torch.ones(d))
        self.q_proj, self.o_proj = lin(d, d), lin(d, d)
        self.k_proj, self.v_proj = lin(d, c["kv_heads"] * hd), lin(d, c["kv_heads"] * hd)
        self.gate_proj, self.up_proj, self.down_proj = lin(d, f), lin(d, f), lin(f, d)


class Llama(torch.nn.Module):
    """A frozen Llama decoder whose layers can take a per-layer key/value prefix (LAL)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.head_dim = c["hidden"] // c["heads"]
        self.embed_tokens = torch.nn.Embedding(c["vocab"], c["hidden"])
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = torch.nn.Parameter(torch.ones(c["hidden"]))
        self.lm_head = torch.nn.Linear(c["hidden"], c["vocab"], bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as SmolLM2 and Llama-3.2-1B
        self.requires_grad_(False)

    def norm_of(self, x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, self.c["eps"])

    def keys_values(self, layer, h, cos, sin):
        b, n, _ = h.shape
        k = layer.k_proj(h).view(b, n, self.c["kv_heads"], self.head_dim).transpose(1, 2)
        v = layer.v_proj(h).view(b, n, self.c["kv_heads"], self.head_dim).transpose(1, 2)
        return rope(k, cos, sin), v

    def forward(self, x, positions, prefixes=None):
        """x: (b, n, d) input embeddings; prefixes: {layer: (k, v)} with (b, kv_heads, Na, hd)."""
        c, hd = self.c, self.head_dim
        b, n, _ = x.shape
        cos, sin = rope_table(positions, hd, c["theta"], x.dtype, c.get("rope_llama3"))
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        for i, layer in enumerate(self.layers):
            h = self.norm_of(x, layer.input_layernorm)
            q = rope(layer.q_proj(h).view(b, n, c["heads"], hd).transpose(1, 2), cos, sin)
            k, v = self.keys_values(layer, h, cos, sin)
            mask = causal
            if prefixes is not None and i in prefixes:
                pk, pv = prefixes[i]
                k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
                mask = torch.cat([torch.ones(n, pk.shape[2], dtype=torch.bool, device=x.device), causal], 1)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            x = x + layer.o_proj(attn.transpose(1, 2).reshape(b, n, -1))
            h = self.norm_of(x, layer.post_attention_layernorm)
            x = x + layer.down_proj(F.silu(layer.gate_proj(h)) * layer.up_proj(h))
        return self.norm_of(x, self.norm)


class Adapter(torch.nn.Module):
    """What trains: PLITS's MLP connector (Linear-GELU-Linear, pal's default), or one linear
    projector per LAL layer (pal's `projector = "linear"`)."""

    def __init__(self, mode, c, d_enc, lal_layers):
        super().__init__()
        d = c["hidden"]
        if mode == "plits":
            self.fc1, self.fc2 = torch.nn.Linear(d_enc, d), torch.nn.Linear(d, d)
        else:
            self.lal_layers = lal_layers
            self.proj = torch.nn.ModuleList(torch.nn.Linear(d_enc, d) for _ in lal_layers)

    def pal_names(self):
        """This module's parameters under pal's names (`audio.connector.mlp.fc1.weight`, ...)."""
        if hasattr(self, "fc1"):
            return {f"audio.connector.mlp.{n}": p for n, p in self.named_parameters()}
        return {
            f"audio.lal.layers.{i}.proj.{n}": p
            for i, proj in zip(self.lal_layers, self.proj)
            for n, p in proj.named_parameters()
        }


def make_step(mode, model, adapter, frames, ids, autocast=False):
    c = model.c
    b, na, nt = frames.shape[0], frames.shape[1], ids.shape[1]
    dtype = model.norm.dtype  # the frozen LLM's (the adapter may be f32 beside a bf16 LLM)

    def step():
        # autocast: the products in bf16 (as a PyTorch user trains in mixed precision on a
        # CPU with AMX or AVX512-BF16); the loss below in f32.
        with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, targets = forward()
        return F.cross_entropy(logits.float().reshape(-1, c["vocab"]), targets.reshape(-1))

    def forward():
        text = model.embed_tokens(ids)
        if mode == "plits":
            audio = adapter.fc2(F.gelu(adapter.fc1(frames))).to(dtype)
            positions = torch.arange(na + nt, device=ids.device).expand(b, -1)
            # The last audio row predicts the first text token, as in pal's batches.
            hidden = model(torch.cat([audio, text], 1), positions)[:, na - 1 : -1]
            targets = ids
        else:
            positions = torch.arange(na, device=ids.device).expand(b, -1)
            cos, sin = rope_table(positions, model.head_dim, c["theta"], dtype, c.get("rope_llama3"))
            prefixes = {}
            for i, proj in zip(adapter.lal_layers, adapter.proj):
                layer = model.layers[i]
                h = model.norm_of(proj(frames).to(dtype), layer.input_layernorm)
                prefixes[i] = model.keys_values(layer, h, cos, sin)
            positions = torch.arange(na, na + nt, device=ids.device).expand(b, -1)
            hidden = model(text, positions, prefixes)[:, :-1]
            targets = ids[:, 1:]
        # The output projection runs on the predicting rows only.
        return model.lm_head(hidden), targets

    return step


def worst_error(grads, reference):
    """The largest over tensors of max|g - ref| / max|ref|, and where it is."""
    errors = {
        name: float((grads[name].double() - ref.double()).abs().max() / ref.abs().max().clamp_min(1e-30))
        for name, ref in reference.items()
    }
    name = max(errors, key=errors.get)
    return errors[name], name


def parity(path, mode, c, args):
    """Loads pal's step (weights, inputs, loss, gradients) and compares it with this one, in f32
    and in f64."""
    t = read_safetensors(path)
    frames, ids = t["frames"], t["ids"]
    c = dict(c, layers=sum(1 for k in t if k.endswith(".input_layernorm") and k.startswith("llm.layers.")))
    model = Llama(c)
    lal_layers = list(range(args.lal_start, c["layers"]))
    adapter = Adapter(mode, c, frames.shape[2], lal_layers)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(t["llm.embed_tokens"])
        model.norm.copy_(t["llm.norm"])
        if not torch.equal(t["llm.lm_head"], t["llm.embed_tokens"]):
            raise SystemExit("parity: pal's lm_head is not tied to the embeddings; this script ties them")
        for i, layer in enumerate(model.layers):
            for name, p in layer.named_parameters():
                p.copy_(t[f"llm.layers.{i}.{name.removesuffix('.weight')}"])
        for name, p in adapter.pal_names().items():
            p.copy_(t[f"adapter.{name}"])
    loss = make_step(mode, model, adapter, frames, ids)()
    loss.backward()
    torch_f32 = {name: p.grad.clone() for name, p in adapter.pal_names().items()}
    pal = {name: t[f"grad.{name}"] for name in torch_f32}
    model.double(), adapter.double()
    adapter.zero_grad(set_to_none=True)
    make_step(mode, model, adapter, frames.double(), ids)().backward()
    exact = {name: p.grad for name, p in adapter.pal_names().items()}
    loss_pal = float(t["loss"].reshape(-1)[0])
    loss_error = abs(loss.item() - loss_pal) / abs(loss_pal)
    worst, where = worst_error(pal, torch_f32)
    pal_error, _ = worst_error(pal, exact)
    torch_error, _ = worst_error(torch_f32, exact)
    return {
        "mode": mode,
        "loss_pal": loss_pal,
        "loss_torch": loss.item(),
        "loss_relative_error": loss_error,
        "gradient_relative_error": worst,
        "worst_gradient": where,
        "pal_error_vs_f64": pal_error,
        "torch_error_vs_f64": torch_error,
        "gradients_compared": len(pal),
        "ok": loss_error <= LOSS_TOLERANCE
        and pal_error <= max(GRADIENT_TOLERANCE, 2 * torch_error),
    }


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
    p.add_argument("--compile", action="store_true", help="time the step under torch.compile")
    p.add_argument("--autocast", action="store_true",
                   help="the frozen model under torch.autocast in bf16 (the loss in f32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="the frozen LLM's")
    p.add_argument("--parity", help="compare one step with pal's (a file pal wrote) instead of timing")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    c = SMOLLM2 if args.shapes == "smollm2-135m" else LLAMA32_1B
    if args.parity:
        print(json.dumps({"parity": parity(args.parity, args.mode, c, args)}))
        return
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = Llama(c).to(device=device, dtype=dtype)
    b, na, nt = args.batch, args.audio_tokens, args.text_tokens
    frames = torch.randn(b, na, args.d_enc, device=device)
    ids = torch.randint(0, c["vocab"], (b, nt), device=device)
    adapter = Adapter(args.mode, c, args.d_enc, list(range(args.lal_start, c["layers"]))).to(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step = make_step(args.mode, model, adapter, frames, ids, autocast=args.autocast)
    if args.compile:
        step = torch.compile(step)
    times, forwards = [], []
    # The first step warms up (and, compiled, compiles); it is not timed.
    for s in range(args.steps + 1):
        sync()
        start = time.perf_counter()
        loss = step()
        sync()
        forward = time.perf_counter() - start
        loss.backward()
        sync()
        if s > 0:
            times.append(time.perf_counter() - start)
            forwards.append(forward)
        adapter.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"mode": args.mode, "audio_tokens": na, "batch": b, "shapes": args.shapes,
              "step_seconds": statistics.median(times),
              "forward_seconds": statistics.median(forwards),
              "peak_rss_bytes": peak, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "compiled": args.compile, "autocast": args.autocast,
              "device": str(device), "dtype": args.dtype}
    if cuda:
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
