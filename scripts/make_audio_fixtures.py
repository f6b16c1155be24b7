#!/usr/bin/env python3
"""Golden fixtures for pal-audio's feature tests (Whisper log-mel, Kaldi fbank).

References: transformers' WhisperFeatureExtractor and torchaudio.compliance.kaldi.fbank. Run once
with torch and transformers installed (the script fetches torchaudio's kaldi.py itself); commit the output. CI never needs torch.

    python3 scripts/make_audio_fixtures.py --jfk ../shared/data/speech_samples/jfk_16k.wav

Writes crates/pal-audio/tests/fixtures/features.safetensors.
"""
import argparse
import importlib.util
import os
import sys
import types
import wave

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import WhisperFeatureExtractor

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "pal-audio", "tests", "fixtures")


def load_kaldi():
    """torchaudio.compliance.kaldi, taken from the torchaudio wheel without installing it: the
    installed torchaudio must match torch's CUDA build or it refuses to import (and then breaks
    transformers' imports too); fbank itself needs only torch."""
    import subprocess
    import tempfile
    import zipfile
    tmp = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                    "torchaudio==2.11.0"], check=True)
    wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
    with zipfile.ZipFile(wheel) as z:
        path = z.extract("torchaudio/compliance/kaldi.py", tmp)
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    spec = importlib.util.spec_from_file_location("kaldi_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    del sys.modules["torchaudio"]
    return module


def read_wav(path, seconds):
    with wave.open(path) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(int(rate * seconds)), dtype=np.int16)
    return data.astype(np.float32) / 32768.0, rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jfk", required=True, help="jfk_16k.wav (public domain)")
    args = parser.parse_args()
    kaldi = load_kaldi()
    rng = np.random.default_rng(0)
    t16 = np.arange(16000) / 16000
    speech, rate = read_wav(args.jfk, 2.0)
    assert rate == 16000
    signals = {
        "sine_16k": (0.5 * np.sin(2 * np.pi * 440 * t16)).astype(np.float32),
        "noise_16k": rng.uniform(-0.3, 0.3, 11200).astype(np.float32),
        "speech_16k": speech,
        "sine_8k": (0.4 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000)).astype(np.float32),
        "chirp_44k": (0.3 * np.sin(2 * np.pi * (200 + 2000 * np.arange(22050) / 44100)
                                   * np.arange(22050) / 44100)).astype(np.float32),
    }
    rates = {"sine_16k": 16000, "noise_16k": 16000, "speech_16k": 16000, "sine_8k": 8000, "chirp_44k": 44100}
    out = {}
    for name, x in signals.items():
        out[f"{name}/samples"] = x
        out[f"{name}/rate"] = np.array([rates[name]], dtype=np.int64)
        # In float64: in float32 the reference itself is off by ~2e-3 in bins whose energy is
        # ~1e-9 of the peak. kaldi.fbank floors at the input dtype's epsilon, so the float32 floor
        # (what pal and torchaudio in float32 use) is applied afterwards.
        wav = torch.from_numpy(x).unsqueeze(0).double()
        floor = np.log(np.finfo(np.float32).eps)
        for window in ("hanning", "povey"):
            fb = kaldi.fbank(wav, sample_frequency=rates[name], num_mel_bins=128, dither=0.0,
                             window_type=window, frame_shift=10, frame_length=25, htk_compat=True,
                             use_energy=False)
            out[f"{name}/fbank128_{window}"] = np.maximum(fb.numpy(), floor).astype(np.float32)
        if rates[name] == 16000:
            for n_mels in (80, 128):
                fe = WhisperFeatureExtractor(feature_size=n_mels)
                mel = fe(x, sampling_rate=16000, return_tensors="np").input_features[0]
                frames = len(x) // 160
                # The rest of the 30 s window is silence: keep what the clip covers plus 3 frames.
                out[f"{name}/whisper{n_mels}"] = mel[:, : frames + 3].astype(np.float32)
    os.makedirs(OUT, exist_ok=True)
    save_file(out, os.path.join(OUT, "features.safetensors"))
    print("wrote", os.path.join(OUT, "features.safetensors"))


if __name__ == "__main__":
    main()
