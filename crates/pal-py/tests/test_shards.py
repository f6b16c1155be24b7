"""`pal.ShardWriter` writes what pal reads: a set `pal eval --shards` and training accept, its
records checked as they are added (shapes, types, NaN, conversations), and a set left by an
exception stays incomplete instead of looking whole."""

import json

import numpy as np
import pytest

import pal

CONVERSATION = [{"role": "user", "content": "Is the tone high or low?"},
                {"role": "assistant", "content": "high"}]


def test_a_written_set_is_complete_and_checked(tmp_path):
    with pal.ShardWriter(tmp_path / "set", {"mine": 8}, dtype="f16", shard_mb=0.0001) as w:
        for i in range(5):
            w.add(np.full((3 + i, 8), i, np.float32), CONVERSATION, origin=f"x:{i}")
        assert w.records == 5
    index = json.loads((tmp_path / "set" / "index.json").read_text())
    assert index["complete"] and index["records"] == 5 and len(index["shards"]) >= 2
    assert index["encoders"][0] == {"name": "mine", "id": "mine", "dim": 8,
                                    "config": {"producer": "pal.ShardWriter"}}


@pytest.mark.parametrize("features, messages, words", [
    (np.zeros((3, 7), np.float32), CONVERSATION, "expected"),
    (np.zeros((3, 8), np.float64), CONVERSATION, "float32"),
    (np.full((3, 8), np.nan, np.float32), CONVERSATION, "NaN"),
    (np.zeros((0, 8), np.float32), CONVERSATION, "tokens > 0"),
    (np.zeros((3, 8), np.float32), [{"role": "user", "content": "q"}], "assistant"),
    (np.zeros((3, 8), np.float32), [{"role": "user"}], "content"),
    ([np.zeros((3, 8), np.float32)] * 2, CONVERSATION, "2 arrays for 1"),
])
def test_bad_records_raise_value_error(tmp_path, features, messages, words):
    w = pal.ShardWriter(tmp_path / "set", {"mine": 8})
    with pytest.raises(ValueError, match=words):
        w.add(features, messages)


def test_an_exception_leaves_the_set_incomplete(tmp_path):
    with pytest.raises(RuntimeError):
        with pal.ShardWriter(tmp_path / "set", {"mine": 4}, shard_mb=0.00001) as w:
            w.add(np.zeros((2, 4), np.float32), CONVERSATION)
            raise RuntimeError("the encoder crashed")
    index = json.loads((tmp_path / "set" / "index.json").read_text())
    assert not index["complete"]
