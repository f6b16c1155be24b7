#!/usr/bin/env python3
"""Asks a `pal serve` server about every clip of the held-out manifests in every shape of
conversation the server accepts, greedy, 8 at a time, and writes the answers (or the error
a request got) in order as JSON. Per clip: its own question, "Describe the sound.", its own
question again (one user turn each), then its own question with the clip in a system message
alone, in a system message before a user turn, in the first of several turns, in a later turn
after an assistant turn, and beside a second clip (refused by a one-clip model: the refusal is
compared too). `scripts/check_serve_answers.sh` compares two servers.

    python scripts/serve_answers.py --base-url http://127.0.0.1:8000/v1 --model NAME OUT.json
"""
import argparse
import base64
import glob
import json
import pathlib
from concurrent.futures import ThreadPoolExecutor

import openai


SHAPES = ["user", "system", "system+user", "turns", "later", "two clips"]


def part(path):
    data = base64.b64encode(pathlib.Path(path).read_bytes()).decode()
    fmt = pathlib.Path(path).suffix.lstrip(".")
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def conversation(shape, audio, other, question):
    """The messages of one shape of conversation about `audio` (and `other`, for two clips)."""
    text = {"type": "text", "text": question}
    if shape == "user":
        return [{"role": "user", "content": [text, part(audio)]}]
    if shape == "system":
        return [{"role": "system", "content": [part(audio), text]}]
    if shape == "system+user":
        return [{"role": "system", "content": [{"type": "text", "text": "Be brief."}, part(audio)]},
                {"role": "user", "content": question}]
    if shape == "turns":
        return [{"role": "user", "content": [part(audio), {"type": "text", "text": "Listen."}]},
                {"role": "assistant", "content": "I am listening."},
                {"role": "user", "content": question}]
    if shape == "later":
        return [{"role": "user", "content": "Hello."},
                {"role": "assistant", "content": "Hi. Send a clip."},
                {"role": "user", "content": [text, part(audio)]}]
    return [{"role": "user", "content": [part(audio), part(other), text]}]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("out")
    args = p.parse_args()
    asks = []
    records = []
    for manifest in sorted(glob.glob("data/instruct/*/test.jsonl")) + ["data/ood/test.jsonl"]:
        tokens = 96 if "ood" in manifest else 32
        for line in open(manifest):
            records.append((json.loads(line), tokens))
    for i, (record, tokens) in enumerate(records):
        question = next(m["content"] for m in record["messages"] if m["role"] == "user")
        other = records[(i + 1) % len(records)][0]["audio"]
        for q in (question, "Describe the sound.", question):
            asks.append(("user", record["audio"], other, q, tokens))
        for shape in SHAPES[1:]:
            asks.append((shape, record["audio"], other, question, tokens))
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600)

    def ask(item):
        shape, audio, other, question, tokens = item
        try:
            reply = client.chat.completions.create(
                model=args.model, max_tokens=tokens, temperature=0,
                messages=conversation(shape, audio, other, question))
            return reply.choices[0].message.content
        except openai.APIStatusError as e:
            return {"status": e.status_code, "error": e.message}

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, asks))
    json.dump(answers, open(args.out, "w"))


if __name__ == "__main__":
    main()
