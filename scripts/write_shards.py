#!/usr/bin/env python3
"""Write a pal feature shard set (docs/shards.md) from features computed by any encoder.

Needs only numpy and safetensors. Use it as a library from the script that runs your encoder
(BEATs, CLAP, EAT, SSLAM, wav2vec2: anything that maps a clip to a (tokens, dim) array):

    from write_shards import ShardSetWriter
    writer = ShardSetWriter("features/beats-train", name="beats", encoder_id="beats-iter3-as2m/last", dim=768)
    for line in manifest:
        feats = my_encoder(line["audio"])                      # numpy (tokens, 768)
        writer.add({"audio": line["audio"], "messages": line["messages"]}, [feats])
    writer.close()

or from the command line with the features in an .npz keyed by each manifest line's audio path:

    python scripts/write_shards.py --manifest train.jsonl --features feats.npz \
        --name beats --encoder-id beats-iter3-as2m/last --out features/beats-train

`--random-features DIM --tokens N` writes random features instead (tests, benchmarks), and with
`--records R` and no manifest, R synthetic spoken-digit records.

A model config then names the set as an external encoder: `kind = "shards"`, `path = "<set>"`.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
from safetensors.numpy import save as safetensors_save

FORMAT = "pal-feature-shards"
VERSION = 1
DTYPES = {"f16": np.float16, "f32": np.float32}


class ShardSetWriter:
    """Writes records to shards of about `shard_mb` MB, then the index; see docs/shards.md."""

    def __init__(self, out, name, encoder_id, dim, dtype="f16", shard_mb=256, config=None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: this writer supports f16 and f32")
        os.makedirs(out, exist_ok=True)
        self.out = out
        self.dtype = dtype
        self.target = int(shard_mb * 1048576)
        self.index = {
            "format": FORMAT,
            "version": VERSION,
            "encoders": [{"name": name, "id": encoder_id, "dim": int(dim), "config": config or {}}],
            "dtype": dtype,
            "records": 0,
            "seconds": 0.0,
            "tokens": [0],
            "shards": [],
            "complete": False,
            "consumed": 0,
            "job": {"writer": "scripts/write_shards.py"},
            "failures": [],
        }
        self.pending = []
        self.features = []
        self.pending_bytes = 0

    def add(self, record, features):
        """One record: a dict with `messages` (and optionally `audio`, `origin`, `seconds`), and
        a list with one (tokens, dim) array per encoder."""
        if len(features) != len(self.index["encoders"]):
            raise ValueError("one feature array per encoder")
        feats = np.ascontiguousarray(features[0], dtype=DTYPES[self.dtype])
        dim = self.index["encoders"][0]["dim"]
        if feats.ndim != 2 or feats.shape[1] != dim:
            raise ValueError(f"features of shape {feats.shape}, expected (tokens, {dim})")
        if not any(m.get("role") == "assistant" for m in record["messages"]):
            raise ValueError(f"record {record.get('origin', '')}: no assistant message")
        self.pending.append({
            "audio": str(record.get("audio", "")),
            "origin": str(record.get("origin", "")),
            "seconds": float(record.get("seconds", 0.0)),
            "messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]],
            "tokens": [int(feats.shape[0])],
        })
        self.features.append(feats)
        self.pending_bytes += feats.nbytes
        if self.pending_bytes >= self.target:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        name = f"shard-{len(self.index['shards']):05d}.safetensors"
        data = safetensors_save(
            {"features.0": np.concatenate(self.features, axis=0)},
            metadata={"records": json.dumps(self.pending)},
        )
        tmp = os.path.join(self.out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(self.out, name))
        self.index["shards"].append({
            "file": name,
            "records": len(self.pending),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        })
        self.index["records"] += len(self.pending)
        self.index["consumed"] = self.index["records"]
        self.index["seconds"] += sum(r["seconds"] for r in self.pending)
        self.index["tokens"][0] += sum(r["tokens"][0] for r in self.pending)
        self.pending, self.features, self.pending_bytes = [], [], 0
        self._write_index()

    def close(self):
        """Writes the last shard and marks the set complete."""
        self.flush()
        self.index["complete"] = True
        self._write_index()
        return self.index

    def _write_index(self):
        tmp = os.path.join(self.out, "index.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.index, f, indent=2)
        os.replace(tmp, os.path.join(self.out, "index.json"))


def read_manifest(path):
    """(audio as written, messages, origin) of each line, in either manifest form."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if "messages" in item:
                    audio, messages = item["audio"], item["messages"]
                else:
                    audio = item["audio_id"]
                    messages = [{"role": "user", "content": item["instruction"]},
                                {"role": "assistant", "content": item["output"]}]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{number}: not a manifest line ({e})")
            yield audio, messages, f"{path}:{number}"


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="shard set folder")
    p.add_argument("--manifest", help="JSONL manifest whose records the features belong to")
    p.add_argument("--features", help=".npz of (tokens, dim) arrays keyed by each line's audio")
    p.add_argument("--random-features", type=int, metavar="DIM", help="random features of this width")
    p.add_argument("--tokens", type=int, default=250, help="tokens per record with --random-features")
    p.add_argument("--records", type=int, help="synthetic records (no manifest)")
    p.add_argument("--name", default="external", help="encoder name")
    p.add_argument("--encoder-id", required=True, help="identity of the encoder and its options")
    p.add_argument("--dtype", default="f16", choices=sorted(DTYPES))
    p.add_argument("--shard-mb", type=float, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if (a.features is None) == (a.random_features is None):
        sys.exit("give exactly one of --features or --random-features")
    if a.manifest is None and (a.records is None or a.random_features is None):
        sys.exit("without --manifest, give --records and --random-features")
    rng = np.random.default_rng(a.seed)
    stored = np.load(a.features) if a.features else None
    dim = a.random_features if stored is None else next(iter(stored.values())).shape[1]
    writer = ShardSetWriter(a.out, a.name, a.encoder_id, dim, a.dtype, a.shard_mb)
    if a.manifest:
        records = read_manifest(a.manifest)
    else:
        records = (
            (f"synthetic/{i}.wav",
             [{"role": "user", "content": "Which digit is spoken?"},
              {"role": "assistant", "content": DIGITS[i % 10]}],
             f"synthetic:{i + 1}")
            for i in range(a.records)
        )
    for audio, messages, origin in records:
        if stored is not None:
            if audio not in stored:
                sys.exit(f"{origin}: no features for {audio!r} in {a.features}")
            feats = stored[audio]
        else:
            feats = rng.standard_normal((a.tokens, dim), dtype=np.float32)
        writer.add({"audio": audio, "origin": origin, "messages": messages}, [feats])
    index = writer.close()
    print(f"{a.out}: {index['records']} records in {len(index['shards'])} shards")


if __name__ == "__main__":
    main()
