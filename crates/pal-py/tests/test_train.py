"""Training, evaluating and encoding from Python: a curriculum given as a dict trains; `on_step`
sees every step; Ctrl-C stops training with a checkpoint that `resume=True` continues to the
same adapter an uninterrupted run ends with; `evaluate` returns the summary and items
`pal eval` computes; `encode` writes a shard set training can stream."""

import os
import signal

import numpy as np
import pytest

import pal

MODEL = """seed = 1
[llm]
path = "asset:smollm2-135m-instruct"
[[encoders]]
name = "whisper"
kind = "whisper"
path = "asset:whisper-tiny.en"
route = "lal"
lal = { start = 20 }
"""


def curriculum(folder, output, steps=4):
    (folder / "model.toml").write_text(MODEL)
    return {
        "model": str(folder / "model.toml"), "output": str(folder / output), "seed": 5,
        "checkpoint_every": 100,
        "stages": [{"name": "projectors", "manifests": [{"path": str(folder / "train.jsonl")}],
                    "steps": steps, "lr": 1e-3, "batch_size": 4}],
    }


def adapter(run):
    from safetensors.numpy import load_file
    return load_file(str(run / "adapter.safetensors"))


def test_ctrl_c_leaves_a_checkpoint_that_resumes_to_the_same_adapter(tones, monkeypatch):
    pal.fetch()
    monkeypatch.chdir(tones)
    whole = pal.train(curriculum(tones, "whole"), progress=False)
    assert whole["steps"] == 4

    seen = []

    def interrupt_at_two(metrics):
        seen.append(metrics["step"])
        if metrics["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pal.train(curriculum(tones, "cut"), on_step=interrupt_at_two, progress=False)
    # The signal is seen at the next step's check: step 3 ends with a checkpoint, unreported.
    assert seen == [1, 2]
    assert (tones / "cut" / "checkpoints").exists()
    resumed = pal.train(curriculum(tones, "cut"), resume=True, progress=False)
    assert resumed["steps"] == 4 and resumed["resumed"]
    a, b = adapter(tones / "whole"), adapter(tones / "cut")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_on_step_can_stop_and_a_bad_curriculum_names_its_field(tones, monkeypatch):
    monkeypatch.chdir(tones)
    with pytest.raises(KeyboardInterrupt, match="resumes"):
        pal.train(curriculum(tones, "stopped"), on_step=lambda m: m["step"] < 1, progress=False)
    bad = curriculum(tones, "bad")
    bad["stages"][0]["lr_typo"] = 1
    with pytest.raises(pal.ConfigError, match="lr_typo"):
        pal.train(bad, progress=False)
    with pytest.raises(FileNotFoundError):
        pal.train(str(tones / "no-such.toml"))


def test_evaluate_and_encode(tones, monkeypatch):
    monkeypatch.chdir(tones)
    pal.train(curriculum(tones, "run", steps=1), progress=False)
    summary, items = pal.evaluate(tones / "run", tones / "test.jsonl", max_tokens=4)
    assert summary["total"] == 4 == len(items)
    assert {"question", "reference", "answer", "correct"} <= set(items[0])
    encoded = pal.encode(tones / "model.toml", [str(tones / "train.jsonl")], str(tones / "feats"),
                         dtype="f32")
    assert encoded["records"] == 8
    line = '{"audio": "clips/train0.wav", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    (tones / "broken.jsonl").write_text(line + "\n{oops\n")
    with pytest.raises(pal.DataError, match="broken.jsonl:2"):
        pal.evaluate(tones / "run", tones / "broken.jsonl")
