#!/usr/bin/env python3
"""Asks a `pal serve` server about every clip of the held-out manifests, three times per clip
(its own question, "Describe the sound.", its own question again), greedy, 8 at a time, and
writes the answers in order as JSON. `scripts/check_serve_answers.sh` compares two servers.

    python scripts/serve_answers.py --base-url http://127.0.0.1:8000/v1 --model NAME OUT.json
"""
import argparse
import base64
import glob
import json
import pathlib
from concurrent.futures import ThreadPoolExecutor

import openai


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("out")
    args = p.parse_args()
    asks = []
    for manifest in sorted(glob.glob("data/instruct/*/test.jsonl")) + ["data/ood/test.jsonl"]:
        tokens = 96 if "ood" in manifest else 32
        for line in open(manifest):
            record = json.loads(line)
            question = next(m["content"] for m in record["messages"] if m["role"] == "user")
            for q in (question, "Describe the sound.", question):
                asks.append((record["audio"], q, tokens))
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600)

    def ask(item):
        audio, question, tokens = item
        data = base64.b64encode(pathlib.Path(audio).read_bytes()).decode()
        fmt = pathlib.Path(audio).suffix.lstrip(".")
        reply = client.chat.completions.create(
            model=args.model, max_tokens=tokens, temperature=0,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": question},
                {"type": "input_audio", "input_audio": {"data": data, "format": fmt}},
            ]}])
        return reply.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, asks))
    json.dump(answers, open(args.out, "w"))


if __name__ == "__main__":
    main()
