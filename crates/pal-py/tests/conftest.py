"""Fixtures of the Python package's tests: the repository, a small tone data set (high and low
tones, asked "Is the tone high or low?"), and a tiny probe suite over it."""

import json
import math
import os
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def tone_manifest(folder: Path, name: str, n: int, offset: int = 0) -> Path:
    """`n` tones (even ones 880 Hz "high", odd ones 330 Hz "low") and their manifest."""
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(offset, offset + n):
        hz, answer = (880.0, "high") if i % 2 == 0 else (330.0, "low")
        seconds = 0.3 + 0.05 * (i % 5)
        t = np.arange(int(16000 * seconds)) / 16000
        clip = folder / "clips" / f"{name}{i}.wav"
        write_wav(clip, (0.3 * np.sin(2 * math.pi * hz * t)).astype(np.float32))
        lines.append(json.dumps({"audio": f"clips/{name}{i}.wav", "messages": [
            {"role": "user", "content": "Is the tone high or low?"},
            {"role": "assistant", "content": answer}]}))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def tones(tmp_path: Path) -> Path:
    """A folder with `train.jsonl` (8 tones) and `test.jsonl` (4 others)."""
    tone_manifest(tmp_path, "train", 8)
    tone_manifest(tmp_path, "test", 4, offset=100)
    return tmp_path


CURRICULUM = """model = "unused.toml"
output = "unused"
seed = 3
checkpoint_every = 100
[[stages]]
name = "projectors"
manifests = [{ path = "train.jsonl" }]
steps = 2
lr = 1e-3
batch_size = 4
"""


def probe_suite(folder: Path, encoders: str = "") -> Path:
    """A tiny suite over `folder`'s tones: LAL and PLITS, one seed, two steps."""
    (folder / "curriculum.toml").write_text(CURRICULUM)
    suite = folder / "suite.toml"
    suite.write_text(f"""output = "results"
curriculum = "curriculum.toml"
llm = "asset:smollm2-135m-instruct"
seeds = [0]
modes = ["lal", "plits"]
lal_start = 20
[[splits]]
name = "tones"
manifest = "test.jsonl"
{encoders}""")
    return suite


def spectrum(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """A numpy front end: log magnitudes of 25 ms frames every 20 ms, 32 bands."""
    frame, hop = int(0.025 * sample_rate), int(0.02 * sample_rate)
    frames = max(1, 1 + (len(waveform) - frame) // hop)
    out = np.zeros((frames, 32), dtype=np.float32)
    for i in range(frames):
        chunk = waveform[i * hop:i * hop + frame]
        mags = np.abs(np.fft.rfft(chunk, n=256))[:128]
        out[i] = np.log1p(mags.reshape(32, 4).mean(axis=1))
    return out


os.environ.setdefault("PAL_REQUIRE_MODELS", "1")
