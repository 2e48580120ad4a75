"""Drive headless Debian chromium over the DevTools protocol: open the MLflow runs table
of a finished job, expand the job's parent run, and take screenshots (runs table, chart)."""

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import websockets

PORT, UI, EXP, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


async def main():
    proc = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--remote-debugging-port={PORT}",
            "--window-size=1600,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json"))
                page = next(t for t in tabs if t["type"] == "page")
                break
            except Exception:
                time.sleep(0.3)
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=50_000_000) as ws:
            n = 0

            async def call(method, **params):
                nonlocal n
                n += 1
                my = n
                await ws.send(json.dumps({"id": my, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == my:
                        return msg.get("result", {})

            async def js(expr):
                r = await call(
                    "Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True
                )
                return r.get("result", {}).get("value")

            async def shot(name):
                r = await call("Page.captureScreenshot", format="png")
                Path(OUT, name).write_bytes(base64.b64decode(r["data"]))

            await call(
                "Emulation.setDeviceMetricsOverride",
                width=1600,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
            await call(
                "Page.navigate", url=f"{UI}/#/experiments/{EXP}/runs?workflowType=machine_learning"
            )
            await asyncio.sleep(8)
            buttons = (
                "JSON.stringify([...document.querySelectorAll('button,[role=button]')]"
                ".map(b => (b.getAttribute('aria-label')||'') + '|' + b.innerText.slice(0,30))"
                ".filter(s => s !== '|'))"
            )
            print(await js(buttons))  # what there is to click
            for step in sys.argv[5:]:
                if step.startswith("click:"):
                    print(step, await js(step[6:]))
                    await asyncio.sleep(3)
                elif step.startswith("shot:"):
                    await shot(step[5:])
    finally:
        proc.terminate()


asyncio.run(main())
