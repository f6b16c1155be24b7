#!/usr/bin/env python3
"""The page that listens (`GET /` of `pal serve`) in a real browser: headless Chromium with a
fake microphone that plays a clip, driven over the DevTools protocol. The page listens, the
question is typed and asked, and the answer it shows must contain the expected word.

    python scripts/check_page.py --pal target/release/pal --model adapters/smollm2-whisper-pal \
        --clip assets/clips/fsdd_7_theo_0.wav --expect seven [--screenshot docs/images/page.png]

Needs `chromium` (Debian) and the `websockets` package. Exits non-zero, saying why, on failure.
"""
import argparse
import asyncio
import base64
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import websockets


def drain(stream):
    """Reads a child's stderr to its end in the background, so that it never blocks on it."""
    threading.Thread(target=stream.read, daemon=True).start()


def start_server(pal, model):
    """`pal serve` on a free port; returns the process and its address."""
    server = subprocess.Popen(
        [pal, "serve", "--model", model, "--port", "0", "--stream-chunk-s", "1"],
        stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if "on http://" in line:
            drain(server.stderr)
            return server, line.split("on http://")[1].split()[0]
    raise SystemExit(f"pal serve exited before serving ({server.wait()})")


def start_chromium(url, clip, profile):
    """Headless Chromium on `url` with `clip` as its microphone; returns it and its DevTools port."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    browser = subprocess.Popen([
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--remote-debugging-port=0", f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={clip}", "--autoplay-policy=no-user-gesture-required",
        "--window-size=1000,700", url,
    ], stderr=subprocess.PIPE, text=True)
    for line in browser.stderr:
        if "DevTools listening on ws://" in line:
            port = int(line.split("ws://")[1].split("/")[0].split(":")[1])
            drain(browser.stderr)
            return browser, port
    raise SystemExit(f"chromium exited before listening ({browser.wait()})")


class Page:
    """One page target over the DevTools protocol."""

    def __init__(self, socket):
        self.socket, self.next_id = socket, 0

    async def call(self, method, **params):
        self.next_id += 1
        await self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.socket.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise SystemExit(f"{method}: {reply['error']}")
                return reply["result"]

    async def eval(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise SystemExit(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression, what, seconds):
        """Polls `expression` until it is truthy; fails naming `what` after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        status = await self.eval("document.getElementById('status').textContent")
        raise SystemExit(f"timed out waiting for {what} (page status: {status!r})")


async def drive(port, question, expect, screenshot):
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
    target = next(t for t in targets if t["type"] == "page")
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
        page = Page(socket)
        await page.wait_for("document.readyState === 'complete' && !!document.getElementById('listen')",
                            "the page to load", 60)
        await page.eval("document.getElementById('listen').click()")
        await page.wait_for("document.getElementById('status').textContent.startsWith('Listening')",
                            "the microphone", 30)
        # The live transcript shows the clip while it is still being heard.
        transcript = await page.wait_for(
            "document.getElementById('transcript').textContent.trim()", "a live transcript", 60)
        await page.eval(f"document.getElementById('question').value = {json.dumps(question)}")
        await page.eval("document.getElementById('ask').click()")
        await page.wait_for("document.getElementById('status').textContent.startsWith('Answered')",
                            "the answer", 120)
        answer = await page.eval("document.getElementById('answer').textContent")
        if screenshot:
            shot = await page.call("Page.captureScreenshot", format="png")
            pathlib.Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        return transcript, answer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pal", default="target/release/pal")
    p.add_argument("--model", default="adapters/smollm2-whisper-pal")
    p.add_argument("--clip", default="assets/clips/fsdd_7_theo_0.wav")
    p.add_argument("--question", default="What is said in the recording?")
    p.add_argument("--expect", default="seven")
    p.add_argument("--screenshot")
    args = p.parse_args()
    server, addr = start_server(args.pal, args.model)
    with tempfile.TemporaryDirectory() as profile:
        browser, port = start_chromium(f"http://{addr}/", args.clip, profile)
        try:
            transcript, answer = asyncio.run(drive(port, args.question, args.expect, args.screenshot))
        finally:
            browser.kill()
            server.terminate()
            browser.wait()
            server.wait()
    print(json.dumps({"transcript": transcript, "answer": answer}))
    if args.expect.lower() not in answer.lower():
        sys.exit(f"the page answered {answer!r}, without {args.expect!r}")


if __name__ == "__main__":
    main()
