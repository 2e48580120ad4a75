"""Drive headless Debian chromium over the DevTools protocol: open the MLflow runs table
of a finished job, then run the steps given after the four arguments, in order:

  click:<js>   evaluate <js> (e.g. an element's .click()), print its value, wait 3 s
  press:<js>   <js> evaluates to an element: send it pointer/mouse down, up and click
               (MLflow's tabs and selects ignore a bare .click()), wait 3 s
  goto:<path>  navigate to <ui><path> (e.g. /#/compare-runs?runs=...), wait 8 s
  js:<js>      evaluate <js> and print its value (to inspect the page)
  shot:<file>  save a screenshot of the page as <out dir>/<file>

usage: screenshot_mlflow.py <devtools port> <ui url> <experiment id> <out dir> [step ...]"""

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
PRESS = """(() => {
  const t = (%s);
  if (!t) return 'not found';
  for (const ev of ['pointerdown', 'mousedown', 'pointerup', 'mouseup', 'click']) {
    const E = ev.startsWith('pointer') ? PointerEvent : MouseEvent;
    t.dispatchEvent(new E(ev, {bubbles: true, button: 0, pointerType: 'mouse'}));
  }
  return 'pressed ' + (t.textContent || '').trim().slice(0, 40);
})()"""


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
                elif step.startswith("press:"):
                    print(step, await js(PRESS % step[6:]))
                    await asyncio.sleep(3)
                elif step.startswith("goto:"):
                    await call("Page.navigate", url=UI + step[5:])
                    await asyncio.sleep(8)
                elif step.startswith("js:"):
                    print(step, await js(step[3:]))
                elif step.startswith("shot:"):
                    await shot(step[5:])
                else:
                    raise SystemExit(f"unknown step {step!r}")
    finally:
        proc.terminate()


asyncio.run(main())
