#!/usr/bin/env python3
"""Drives a running `pal serve` with the official `openai` Python client: one chat completion,
the same one streamed, and one transcription. Prints the three texts as JSON (the Rust test
`crates/pal/tests/serve.rs` compares them with `pal ask`).

    python scripts/openai_client_check.py --base-url http://127.0.0.1:8000/v1 --model NAME \
        --clip assets/clips/jfk_16k.wav --question "What is said?"
"""
import argparse
import base64
import json
import pathlib

import openai


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default="unused")
    args = p.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    clip = pathlib.Path(args.clip)
    audio = base64.b64encode(clip.read_bytes()).decode()
    messages = [{
        "role": "user",
        "content": [
            {"type": "text", "text": args.question},
            {"type": "input_audio", "input_audio": {"data": audio, "format": clip.suffix.lstrip(".")}},
        ],
    }]
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)

    whole = client.chat.completions.create(model=args.model, messages=messages, **sampling)
    pieces = []
    finish = None
    for chunk in client.chat.completions.create(model=args.model, messages=messages, stream=True, **sampling):
        delta = chunk.choices[0].delta.content
        if delta:
            pieces.append(delta)
        finish = chunk.choices[0].finish_reason or finish
    with clip.open("rb") as f:
        transcript = client.audio.transcriptions.create(model="whisper-1", file=f)
    models = [m.id for m in client.models.list()]
    print(json.dumps({
        "chat": whole.choices[0].message.content,
        "chat_finish": whole.choices[0].finish_reason,
        "usage": whole.usage.completion_tokens,
        "stream": "".join(pieces),
        "stream_finish": finish,
        "transcription": transcript.text,
        "models": models,
    }))


if __name__ == "__main__":
    main()
