#!/usr/bin/env python3
"""Drives a running `pal serve` with the official `openai` Python client: one chat completion,
the same one streamed, one transcription, and (with `--realtime`, greedy, a 16 kHz PCM16 WAV
clip) the same question over the realtime API, the clip streamed as live audio. Prints the
texts as JSON (the Rust test `crates/pal/tests/serve.rs` compares them with `pal ask`).

    python scripts/openai_client_check.py --base-url http://127.0.0.1:8000/v1 --model NAME \
        --clip assets/clips/jfk_16k.wav --question "What is said?"
"""
import argparse
import asyncio
import base64
import json
import pathlib
import wave

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
    p.add_argument("--realtime", action="store_true", help="also ask over /v1/realtime")
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
    realtime = asyncio.run(ask_realtime(args)) if args.realtime else None
    print(json.dumps({
        "realtime": realtime,
        "chat": whole.choices[0].message.content,
        "chat_finish": whole.choices[0].finish_reason,
        "usage": whole.usage.completion_tokens,
        "stream": "".join(pieces),
        "stream_finish": finish,
        "transcription": transcript.text,
        "models": models,
    }))


async def ask_realtime(args):
    """The question about the clip over the realtime API: the clip appended as live audio in
    100 ms pieces, committed, then asked (as in docs/serving.md)."""
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    with wave.open(args.clip, "rb") as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        pcm = w.readframes(w.getnframes())
    async with client.realtime.connect(model=args.model) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}})
        for i in range(0, len(pcm), 3200):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 3200]).decode())
        await conn.input_audio_buffer.commit()
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": args.question}]})
        await conn.response.create(response={"max_output_tokens": args.max_tokens})
        text = []
        async for event in conn:
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            elif event.type == "error":
                raise SystemExit(f"realtime error: {event.error.message}")
            elif event.type == "response.done":
                return "".join(text)


if __name__ == "__main__":
    main()
