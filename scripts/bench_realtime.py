#!/usr/bin/env python3
"""Latency of a question about live audio (`/v1/realtime`) against the same question as one
chat-completions request with the whole clip, for recordings of several lengths.

For each length: a realtime session streams speech in real time (100 ms pieces, paced by the
clock), then commits and asks; the figure is the time from the commit to the first answer
token. Then the same recording is sent whole (WAV, base64) as one streamed chat completion;
the figure is the time from sending it to the first token. One server per `--chunks` setting,
greedy; each length `--repeats` times (3), the median reported with the fastest and slowest.

    python scripts/bench_realtime.py --config configs/smollm2-whisper-lal-long.toml \
        --seconds 10,60,300 --chunks 0,5 --out docs/bench/realtime

`--config` writes an untrained run of that model config (`pal init`): latency does not depend
on what the adapter learned. `--model RUN_DIR` serves a run folder instead.

Needs `websockets` and `openai` (the test venv has both). Writes OUT.json and OUT.md.
"""
import argparse
import asyncio
import base64
import io
import json
import pathlib
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import wave

import openai
import websockets

QUESTION = "What is said in the recording?"


def cpu_line():
    """The CPU's model and the flags that decide pal's kernels."""
    model, flags = platform.processor(), []
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
            break
    return f"{model}; {', '.join(flags)}"


def speech(seconds, clips):
    """`seconds` of 16 kHz PCM16 mono: the clips one after another, repeated."""
    pcm = b"".join(read_pcm(c) for c in clips)
    need = int(seconds * 16000) * 2
    return (pcm * (need // len(pcm) + 1))[:need]


def read_pcm(path):
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return w.readframes(w.getnframes())


def wav(pcm):
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return out.getvalue()


def start_server(pal, model, extra):
    server = subprocess.Popen(
        [pal, "serve", "--model", model, "--port", "0", "--model-name", "bench", *extra],
        stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if "on http://" in line:
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return server, line.split("on http://")[1].split()[0]
    raise SystemExit(f"pal serve exited before serving ({server.wait()})")


async def realtime(addr, pcm, max_tokens, pace=True):
    """Streams `pcm` in real time, commits, asks; returns (commit to first token, answer).
    Without `pace` (a quick look, not the benchmark) the audio goes as fast as it can, then
    the encoder gets as long as the audio would have lasted / 20 to catch up."""
    async with websockets.connect(f"ws://{addr}/v1/realtime", max_size=None) as ws:
        async def event(kind):
            while True:
                e = json.loads(await ws.recv())
                if e["type"] == "error":
                    raise SystemExit(f"realtime error: {e['error']['message']}")
                if e["type"] == kind:
                    return e
        await event("session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}))
        await event("session.updated")
        piece = 3200  # 100 ms
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), piece)):
            # Paced by the clock: piece i is sent when its audio would have been heard.
            delay = start + i * 0.1 - time.monotonic() if pace else 0
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm[offset:offset + piece]).decode()}))
        if not pace:
            await asyncio.sleep(len(pcm) / 32000 / 20)
        committed = time.monotonic()
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}}))
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": max_tokens}}))
        first = await event("response.output_text.delta")
        latency = time.monotonic() - committed
        text = [first["delta"]]
        while True:
            e = json.loads(await ws.recv())
            if e["type"] == "response.output_text.delta":
                text.append(e["delta"])
            if e["type"] == "response.done":
                return latency, "".join(text)


def chat(addr, pcm, max_tokens):
    """The whole recording as one streamed chat completion: (send to first token, answer)."""
    client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0, timeout=900)
    audio = base64.b64encode(wav(pcm)).decode()
    messages = [{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]
    sent = time.monotonic()
    first, text = None, []
    for chunk in client.chat.completions.create(model="bench", messages=messages, stream=True,
                                                max_tokens=max_tokens, temperature=0):
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first or time.monotonic() - sent
            text.append(delta)
    return first, "".join(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pal", default="target/release/pal")
    p.add_argument("--model", help="run folder to serve")
    p.add_argument("--config", help="model config: serve an untrained run of it (pal init)")
    p.add_argument("--seconds", default="10,60,300")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--clips", default="assets/clips/jfk_16k.wav,assets/clips/beckett_16k.wav")
    p.add_argument("--serve-args", default="", help="more `pal serve` arguments")
    p.add_argument("--chunks", default="0,5",
                   help="--stream-chunk-s settings, one server each (0: the encoder's 30 s window)")
    p.add_argument("--out", default="docs/bench/realtime")
    p.add_argument("--repeats", type=int, default=3,
                   help="sessions per length (the median is reported: one first token is noisy)")
    p.add_argument("--no-pace", action="store_true", help="a quick look: audio sent at once")
    args = p.parse_args()
    lengths = [float(s) for s in args.seconds.split(",")]
    longest = max(lengths)
    extra = ["--max-audio-seconds", str(longest + 10), "--max-session-seconds", str(longest + 10),
             "--max-body-mb", "64", *args.serve_args.split()]
    # The chat completions side sends the same audio each time: no cache may answer it.
    extra += ["--audio-cache-mb", "0"]
    if bool(args.model) == bool(args.config):
        raise SystemExit("give --model RUN_DIR or --config MODEL_TOML")
    scratch = tempfile.TemporaryDirectory()
    run = args.model
    if args.config:
        run = str(pathlib.Path(scratch.name) / "run")
        subprocess.run([args.pal, "init", "--config", args.config, "--out", run], check=True,
                       stderr=subprocess.DEVNULL)
    rows = []
    for chunk in [float(c) for c in args.chunks.split(",")]:
        server, addr = start_server(args.pal, run, extra + ["--stream-chunk-s", str(chunk)])
        try:
            # One untimed question first: threads and caches are warm for every length alike.
            asyncio.run(realtime(addr, speech(2, args.clips.split(",")), args.max_tokens))
            for seconds in lengths:
                pcm = speech(seconds, args.clips.split(","))
                live, whole = [], []
                for _ in range(args.repeats):
                    first, live_answer = asyncio.run(
                        realtime(addr, pcm, args.max_tokens, not args.no_pace))
                    live.append(round(first, 3))
                    first, whole_answer = chat(addr, pcm, args.max_tokens)
                    whole.append(round(first, 3))
                rows.append({"chunk_s": chunk, "seconds": seconds,
                             "realtime_first_token_s": statistics.median(live),
                             "realtime_samples_s": live,
                             "chat_first_token_s": statistics.median(whole),
                             "chat_samples_s": whole,
                             "realtime_answer": live_answer, "chat_answer": whole_answer})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.terminate()
            server.wait()
    command = "python scripts/bench_realtime.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v)
    model_toml = pathlib.Path(args.config).read_text() if args.config else \
        (pathlib.Path(run) / "model.toml").read_text()
    report = {"command": command, "cpu": cpu_line(), "rows": rows, "serve_args": extra,
              "model_toml": model_toml}
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Live audio: time to the first answer token",
        "",
        f"`{command}`",
        "",
        f"CPU: {cpu_line()}. One `pal serve` (arguments `{' '.join(extra)}`), loopback, greedy, "
        f"{args.max_tokens} tokens, the question {QUESTION!r}"
        + (", an untrained adapter (`pal init`: latency does not depend on its weights)." if args.config else "."),
        "",
        "**Realtime**: a `/v1/realtime` session streams the recording in real time (100 ms "
        "pieces, paced by the clock); each window (30 s, or the `--stream-chunk-s` chunk) is "
        "encoded, with its LAL keys and values, while the audio goes on; then commit and ask. The "
        "figure is from the commit to the first answer token: what is left is the audio since the "
        "last window, and the prompt. **Chat completions**: the same recording as one WAV in one "
        "streamed request, the audio cache off; from sending it to the first token (upload, "
        "decoding, every window's encoding, prefill). *Same answer*: whether both gave the same "
        "greedy answer (windows shorter than 30 s encode the audio a little differently). "
        f"Each figure is the median of {args.repeats} sessions (requests), the fastest and "
        "slowest in brackets: a first token after seconds of idle listening varies by tens of "
        "milliseconds on a shared machine.",
        "",
        "| encoded as it arrives, every | recording (s) | realtime: commit to first token (s) | x the shortest | chat completions, whole clip: first token (s) | same answer |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        shortest = next(x for x in rows if x["chunk_s"] == r["chunk_s"])["realtime_first_token_s"]
        every = f"{r['chunk_s']:g} s" if r["chunk_s"] else "30 s (the window)"
        same = "yes" if r["realtime_answer"] == r["chat_answer"] else "no"
        spread = lambda x: f"{min(x)}-{max(x)}"
        lines.append(f"| {every} | {r['seconds']:g} | {r['realtime_first_token_s']} "
                     f"({spread(r['realtime_samples_s'])}) | "
                     f"{r['realtime_first_token_s'] / shortest:.2f} | {r['chat_first_token_s']} "
                     f"({spread(r['chat_samples_s'])}) | {same} |")
    lines += ["", "The model (`model.toml` of the run):", "", "```toml", model_toml.strip(), "```", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
