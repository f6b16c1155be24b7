"""``pal.probe``: the grid of ``pal probe`` (encoders x modes x seeds, trained and evaluated,
with intervals and paired comparisons) with your own encoders beside pal's.

An encoder is a Python callable ``fn(waveform: np.ndarray[float32], sample_rate: int) ->
np.ndarray[tokens, dim]`` (a torch tensor is accepted too), or a module or object following the
HEAR API (``load_model``, ``get_timestamp_embeddings``). A callable with ``takes_batch = True``
gets ``(list of waveforms, sample_rate)`` and returns a list of arrays. Each encoder is called
once per clip the suite reads; its outputs are kept as shard sets (keyed by the name you give
it), so running the probe again calls it for nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from . import _pal

__all__ = ["probe"]


def _as_array(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{what}: an encoder must return a (tokens, dim) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: the encoder returned NaN or infinity")
    return np.ascontiguousarray(a)


class _Hear:
    """A HEAR-API module (or object) as a batch encoder: ``get_timestamp_embeddings`` on padded
    batches, each clip's frames past its own length dropped."""

    takes_batch = True

    def __init__(self, module: Any) -> None:
        self.module = module
        self.model = module.load_model() if hasattr(module, "load_model") else module
        self.sample_rate = int(self.model.sample_rate)

    def __call__(self, waveforms: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        longest = max(len(w) for w in waveforms)
        batch = np.zeros((len(waveforms), longest), dtype=np.float32)
        for i, w in enumerate(waveforms):
            batch[i, : len(w)] = w
        try:
            import torch  # a HEAR model built on torch takes tensors

            audio: Any = torch.from_numpy(batch)
        except ImportError:
            audio = batch
        embeddings, timestamps = self.module.get_timestamp_embeddings(audio, self.model)
        embeddings = embeddings.detach().cpu().numpy() if hasattr(embeddings, "detach") else np.asarray(embeddings)
        timestamps = timestamps.detach().cpu().numpy() if hasattr(timestamps, "detach") else np.asarray(timestamps)
        out = []
        for i, w in enumerate(waveforms):
            length_ms = 1000.0 * len(w) / sample_rate
            keep = timestamps[i] <= length_ms
            keep[0] = True
            out.append(embeddings[i][keep])
        return out


def _encoder(fn: Any) -> tuple[Callable, int, bool]:
    """The callable, its sample rate and whether it takes batches."""
    if hasattr(fn, "get_timestamp_embeddings"):
        hear = _Hear(fn)
        return hear, hear.sample_rate, True
    if not callable(fn):
        raise TypeError(f"an encoder is a callable or a HEAR module, got {type(fn).__name__}")
    rate = int(getattr(fn, "sample_rate", 16000))
    return fn, rate, bool(getattr(fn, "takes_batch", False))


def _shard_set(name: str, fn: Callable, rate: int, batched: bool, batch_size: int,
               manifest: Path, folder: Path) -> Path:
    """The shard set of `fn`'s outputs for every record of `manifest` (reused when complete)."""
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    out = folder / f"{manifest.stem}-{digest}"
    index = out / "index.json"
    if index.exists() and '"complete": true' in index.read_text():
        return out
    records = _pal.manifest_records(str(manifest))
    writer = None
    for start in range(0, len(records), batch_size if batched else 1):
        chunk = records[start:start + (batch_size if batched else 1)]
        waves = [_pal.load_audio(str(audio), rate) for audio, _, _ in chunk]
        if batched:
            outputs = list(fn(waves, rate))
            if len(outputs) != len(waves):
                raise ValueError(f"encoder '{name}' returned {len(outputs)} outputs for {len(waves)} clips")
        else:
            outputs = [fn(waves[0], rate)]
        for (audio, messages, origin), wave, features in zip(chunk, waves, outputs):
            features = _as_array(features, f"encoder '{name}' on {origin}")
            if writer is None:
                writer = _pal.ShardWriter(str(out), {name: (name, features.shape[1])}, dtype="f32",
                                          producer="pal.probe")
            writer.add(features, [{"role": r, "content": c} for r, c in messages],
                       audio=str(audio), origin=origin, seconds=len(wave) / rate)
    if writer is None:
        raise ValueError(f"{manifest}: no records")
    writer.close()
    return out


def probe(suite: str | os.PathLike, encoders: Mapping[str, Any] | None = None, *,
          builtin: bool | None = None, batch_size: int = 16,
          progress: Callable[[int, int, str], Any] | None = None) -> dict:
    """Runs a probe suite (``pal probe --suite``) with your encoders beside (or instead of) the
    suite's own, and returns ``{"out": folder, "markdown": report, "cells": [...]}``.

    ``encoders`` maps a name (each one's identity: its outputs are cached under it) to a
    callable or a HEAR module. ``builtin`` runs the suite's own encoders too (default: only
    when no encoder of yours is given). Results, ``probe.md``, ``probe.json`` and
    ``probe.png`` go to the suite's output folder, with every cell's.
    """
    suite = Path(suite).resolve()
    encoders = dict(encoders or {})
    if builtin is None:
        builtin = not encoders
    cells: list[dict] = []
    out = None
    if builtin:
        out, done = _pal.probe_run(str(suite), progress)
        cells.extend(done)
    manifests = [Path(m) for m in _pal.suite_manifests(str(suite))]
    for name, fn in encoders.items():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"encoders: '{name}' cannot name a folder")
        call, rate, batched = _encoder(fn)
        folder = suite.parent / ".pal-probe" / name
        sets = {str(m): str(_shard_set(name, call, rate, batched, batch_size, m, folder / "shards"))
                for m in manifests}
        derived = _pal.external_suite(str(suite), name, sets, str(folder))
        out, done = _pal.probe_run(str(derived), progress)
        cells.extend(done)
    if out is None:
        raise ValueError("nothing to probe: give encoders, or builtin=True")
    markdown = _pal.probe_report(str(out), str(suite), cells)
    return {"out": str(out), "markdown": markdown, "cells": cells}
