"""`pal.probe` with encoders of the user's own: a Python callable gives the same scores as its
features written with `pal.ShardWriter` and probed by `pal probe` from the command line; a
module following the HEAR API probes end to end; a batch-taking callable is called with
batches, and never twice for a clip."""

import json
import subprocess
import sys
import types

import numpy as np

import pal
from conftest import probe_suite, spectrum


def scores(cells):
    return {(c["cell"]["row"], c["cell"]["mode"]): c["scores"] for c in cells}


def test_a_callable_probes_as_its_shards_do_through_pal_probe(tones):
    pal.fetch()
    calls = []

    def mine(waveform, sample_rate):
        calls.append(len(waveform))
        return spectrum(waveform, sample_rate)

    result = pal.probe(probe_suite(tones), encoders={"mine": mine})
    assert len(calls) == 12  # 8 training clips and 4 test clips, once each
    assert (tones / "results" / "probe.md").exists()
    assert "mine" in result["markdown"]
    from_python = scores(result["cells"])
    assert set(from_python) == {("mine", "lal"), ("mine", "plits")}

    # The same features written by hand and probed from the command line.
    sets = {}
    for name in ("train", "test"):
        out = tones / "hand" / name
        with pal.ShardWriter(out, {"mine": ("mine", 32)}, dtype="f32") as w:
            for audio, messages, origin in pal._pal.manifest_records(str(tones / f"{name}.jsonl")):
                wave = pal._pal.load_audio(str(audio), 16000)
                w.add(spectrum(wave, 16000), [{"role": r, "content": c} for r, c in messages],
                      origin=origin)
        sets[name] = out
    (tones / "hand" / "curriculum.toml").write_text(
        (tones / "curriculum.toml").read_text().replace(
            'manifests = [{ path = "train.jsonl" }]', f'shards = [{{ path = "{sets["train"]}" }}]'))
    suite = tones / "hand" / "suite.toml"
    suite.write_text(f"""output = "results"
curriculum = "curriculum.toml"
llm = "asset:smollm2-135m-instruct"
seeds = [0]
modes = ["lal", "plits"]
lal_start = 20
[[splits]]
name = "tones"
shards = "{sets["test"]}"
[[encoders]]
name = "mine"
kind = "shards"
path = "{sets["train"]}"
""")
    subprocess.run([sys.executable, "-m", "pal", "probe", "--quiet", "--suite", str(suite)],
                   check=True, capture_output=True)
    by_hand = json.loads((tones / "hand" / "results" / "probe.json").read_text())["cells"]
    assert scores(by_hand) == from_python

    # Asked again: every cell and every clip's features are reused.
    calls.clear()
    again = pal.probe(probe_suite(tones), encoders={"mine": mine})
    assert calls == []
    assert scores(again["cells"]) == from_python


def test_a_hear_module_probes_end_to_end(tones):
    pal.fetch()
    batches = []

    def load_model(model_file_path=""):
        return types.SimpleNamespace(sample_rate=22050, scene_embedding_size=32,
                                     timestamp_embedding_size=32)

    def get_timestamp_embeddings(audio, model):
        audio = np.asarray(audio)
        batches.append(audio.shape[0])
        per_clip = [spectrum(a, model.sample_rate) for a in audio]
        hop_ms = 20.0
        embeddings = np.stack(per_clip)
        timestamps = np.tile(np.arange(embeddings.shape[1]) * hop_ms + 12.5, (len(per_clip), 1))
        return embeddings, timestamps

    hear = types.ModuleType("hear_numpy")
    hear.load_model = load_model
    hear.get_timestamp_embeddings = get_timestamp_embeddings
    result = pal.probe(probe_suite(tones), encoders={"hear-numpy": hear}, batch_size=4)
    assert set(scores(result["cells"])) == {("hear-numpy", "lal"), ("hear-numpy", "plits")}
    # Called with batches (8 training clips in twos of four, 4 test clips in one).
    assert batches == [4, 4, 4]


def test_bad_encoder_outputs_are_refused_naming_the_encoder(tones):
    import pytest

    with pytest.raises(ValueError, match="'flat'"):
        pal.probe(probe_suite(tones), encoders={"flat": lambda w, sr: np.zeros(5)})
    with pytest.raises(TypeError):
        pal.probe(probe_suite(tones), encoders={"nothing": 42})
