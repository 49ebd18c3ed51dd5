"""Load test: 64 concurrent clients against a real `spanqa serve` process on loopback for 60 s.

Each client posts dev-v1.1 questions with their paragraphs to /v1/answer, one after another.
Reports requests/s, p50/p99 latency, the error count and the server's RSS before and after.
Clients and server share the same 2 cores, so the numbers are a floor for a separate client machine.

    python bench/serve_load.py [--model runs/quick] [--clients 64] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
from common import ROOT, SQUAD, save_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(url: str, items: list[dict], offset: int, stride: int, stop_at: float, latencies: list,
                 errors: list) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        i = offset
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                response = await http.post(url, json=items[i % len(items)])
                if response.status_code != 200:
                    errors.append(response.status_code)
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
            latencies.append(time.monotonic() - t0)
            i += stride


async def load(url: str, items: list[dict], clients: int, seconds: float) -> tuple[list, list, float]:
    latencies, errors = [], []
    start = time.monotonic()
    await asyncio.gather(*(client(url, items, k, clients, start + seconds, latencies, errors) for k in range(clients)))
    return latencies, errors, time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "quick"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()

    from spanqa.qa.squad import load_dataset

    items = [{"question": e.question, "context": e.context} for e in load_dataset(SQUAD / "dev-v1.1.json.gz").examples]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "spanqa", "serve", args.model, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        process = psutil.Process(server.pid)
        httpx.post(base + "/v1/answer", json=items[0], timeout=60)  # warm-up
        rss_before = process.memory_info().rss / 2**20
        timeline, done = [], threading.Event()

        def sample_rss() -> None:  # every 10 s: does memory level off?
            while not done.wait(10):
                timeline.append(round(process.memory_info().rss / 2**20, 1))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        latencies, errors, elapsed = asyncio.run(load(base + "/v1/answer", items, args.clients, args.seconds))
        done.set()
        rss_after = process.memory_info().rss / 2**20
    finally:
        server.terminate()
        server.wait(30)
    ms = np.array(latencies) * 1000
    result = {"model": args.model, "clients": args.clients, "seconds": elapsed, "requests": len(latencies),
              "requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
              "p99_ms": float(np.percentile(ms, 99)), "errors": len(errors), "error_kinds": sorted(set(map(str, errors))),
              "server_rss_mb_before": rss_before, "server_rss_mb_after": rss_after,
              "server_rss_mb_every_10s": timeline}
    print(json.dumps(result, indent=2))
    save_result("serve_load", result)


if __name__ == "__main__":
    main()
