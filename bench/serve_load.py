"""Load test: 64 concurrent clients against a real `spanqa serve` process on loopback, and against
the transformers 4.x QA pipeline behind a plain FastAPI endpoint (the peer), in turns.

Each client posts dev-v1.1 questions with their paragraphs to /v1/answer, one after another. Both
servers are started first and stay up; after a short warm-up load on each, they take turns
(spanqa, peer, spanqa, peer, ...) for `--rounds` rounds of `--seconds` each. Reported: the median
and min-max requests/s, p50 and p99 latency of each, the ratio of medians, errors, how noisy the
machine was, and spanqa's server RSS before, after and every 10 s (does memory level off?).

The peer is what a 4.x user would write: `pipeline("question-answering")` in a synchronous FastAPI
endpoint, one call at a time under a lock (the fast tokenizer is not safe to share between threads),
with the reader's window settings. It runs in the venv of bench/infer_cpu.py (transformers<5; the
FastAPI and uvicorn it uses are this venv's). Clients and servers share the same 2 cores, so the
numbers are a floor for a separate client machine.

`--hostile`: no peer; one spanqa server takes clean rounds (the normal clients alone) and hostile
rounds (the same normal clients plus clients that hang up mid-request, send slowly or send junk:
bench/hostile_clients.py) in turns. Reported for the normal clients of each: requests, errors, p50
and p99 and the p99 ratio hostile / clean; for the hostile ones: hang-ups, how long slow
connections were held, the status of every junk request; per round, what the server computed and
dropped (/health "work") and its RSS (written to serve_load_hostile.json).

    python bench/serve_load.py [--model runs/quick] [--clients 64] [--seconds 60] [--rounds 3] [--no-peer]
    python bench/serve_load.py --hostile [--hangup-clients 8 --slow-clients 16 --junk-clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
from common import (
    ROOT,
    SQUAD,
    interleave,
    load_average,
    print_report,
    report,
    save_result,
)
from hostile_clients import HostileStats, hostile_tasks

PEER_SERVER = r"""
import sys, threading
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

model, port, length, stride, query = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
qa = pipeline("question-answering", model=model, tokenizer=model, device=-1)
lock = threading.Lock()
app = FastAPI()

class Item(BaseModel):
    question: str
    context: str
    top_k: int = 1

@app.get("/health")
def health():
    return {"status": "ok"}

@app.post("/v1/answer")
def answer(item: Item):
    with lock:
        out = qa(question=item.question, context=item.context, top_k=item.top_k, max_answer_len=30,
                 max_seq_len=length, doc_stride=stride, max_question_len=query)
    out = out if isinstance(out, list) else [out]
    return {"answers": [{"text": a["answer"], "score": a["score"], "start": a["start"], "end": a["end"]}
                        for a in out]}

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


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


async def load(url: str, items: list[dict], clients: int, seconds: float,
               others: Callable[[float], list] | None = None) -> tuple[list, list, float]:
    """Latencies and errors of `clients` normal clients for `seconds`, and the seconds they took;
    `others(stop_at)`, if given, are more clients (coroutines) run beside them, not measured."""
    latencies, errors = [], []
    start = time.monotonic()

    async def normal() -> float:
        await asyncio.gather(*(client(url, items, k, clients, start + seconds, latencies, errors)
                               for k in range(clients)))
        return time.monotonic() - start

    elapsed, *_ = await asyncio.gather(normal(), *(others(start + seconds) if others else []))
    return latencies, errors, elapsed


def start_server(command: list[str]) -> tuple[subprocess.Popen, str]:
    """A server process on a free loopback port (the "{port}" argument), once /health answers."""
    port = free_port()
    server = subprocess.Popen([str(port) if part == "{port}" else part for part in command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if server.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited with {server.returncode}")
        try:
            if httpx.get(base + "/health").status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{command[:3]} did not answer /health in 120 s")


def reader_windows(model: str) -> list[str]:
    """The reader's window settings (spanqa.json), which the peer is given too."""
    sys.path.insert(0, str(ROOT / "src"))
    from spanqa.qa.reader import ReaderSettings

    w = ReaderSettings.read(model).windows
    return [str(w.max_seq_length), str(w.doc_stride), str(w.max_query_length)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "quick"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-seconds", type=float, default=5)
    ap.add_argument("--no-peer", action="store_true", help="spanqa alone (e.g. for a long memory run)")
    ap.add_argument("--hostile", action="store_true",
                    help="clean and hostile rounds in turn against one spanqa server (no peer): the normal clients "
                         "plus clients that hang up, send slowly or send junk")
    ap.add_argument("--hangup-clients", type=int, default=8)
    ap.add_argument("--slow-clients", type=int, default=16)
    ap.add_argument("--junk-clients", type=int, default=4)
    ap.add_argument("--junk-pause", type=float, default=0.1, help="seconds between two junk requests of a client")
    args = ap.parse_args()

    from spanqa.models import resolve_model
    from spanqa.qa.squad import load_dataset

    model = resolve_model(args.model)
    items = [{"question": e.question, "context": e.context} for e in load_dataset(SQUAD / "dev-v1.1.json.gz").examples]
    commands = {"spanqa": [sys.executable, "-m", "spanqa", "serve", model, "--port", "{port}"]}
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    if not (args.no_peer or args.hostile):
        from infer_cpu import peer_python

        (tmp / "peer_server.py").write_text(PEER_SERVER)
        commands["pipeline_fastapi"] = [str(peer_python()), str(tmp / "peer_server.py"), model, "{port}",
                                        *reader_windows(model)]
    # contender -> the server it loads: in --hostile mode both rounds load the same spanqa process
    targets = {"clean": "spanqa", "hostile": "spanqa"} if args.hostile else {name: name for name in commands}
    contexts = sorted({item["context"] for item in items})
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    rounds: dict[str, list[dict]] = {name: [] for name in targets}
    timeline, done = [], threading.Event()
    try:
        for name, command in commands.items():
            servers[name] = start_server(command)
        spanqa = psutil.Process(servers["spanqa"][0].pid)
        for _, base in servers.values():
            httpx.post(base + "/v1/answer", json=items[0], timeout=120)
        rss_before = spanqa.memory_info().rss / 2**20

        def sample_rss() -> None:  # every 10 s: does memory level off?
            while not done.wait(10):
                timeline.append(round(spanqa.memory_info().rss / 2**20, 1))

        def one_load(name: str, seconds: float) -> dict:
            base = servers[targets[name]][1]
            work_before = httpx.get(base + "/health").json().get("work", {})
            stats = HostileStats() if name == "hostile" else None

            def hostile(stop_at: float) -> list:
                return hostile_tasks(base, contexts, stop_at, stats, args.hangup_clients, args.slow_clients,
                                     args.junk_clients, args.junk_pause)

            latencies, errors, elapsed = asyncio.run(load(base + "/v1/answer", items, args.clients, seconds,
                                                          hostile if stats is not None else None))
            ms = np.array(latencies) * 1000
            row = {"requests": len(latencies), "requests_per_s": len(latencies) / elapsed, "errors": len(errors),
                   "error_kinds": sorted(set(map(str, errors))), "p50_ms": float(np.percentile(ms, 50)),
                   "p99_ms": float(np.percentile(ms, 99)), "server_rss_mb": round(spanqa.memory_info().rss / 2**20, 1)}
            if targets[name] == "spanqa":  # what the server computed, and dropped for clients that left
                work_after = httpx.get(base + "/health").json().get("work", {})
                row["server_work"] = {k: v - work_before.get(k, 0) for k, v in work_after.items()}
            if stats is not None:
                row["hostile"] = stats.to_dict()
            return row

        def timed(name: str) -> float:
            rounds[name].append(one_load(name, args.seconds))
            return rounds[name][-1]["requests_per_s"]

        threading.Thread(target=sample_rss, daemon=True).start()
        load_before = load_average()
        rates = interleave({name: (lambda name=name: timed(name)) for name in targets}, args.rounds,
                           warmup=lambda name: one_load(name, args.warmup_seconds),
                           on_round=lambda r, name, q: print(f"round {r + 1} {name}: {q:.1f} requests/s, "
                                                              f"p50 {rounds[name][-1]['p50_ms']:.0f} ms, p99 "
                                                              f"{rounds[name][-1]['p99_ms']:.0f} ms, errors "
                                                              f"{rounds[name][-1]['errors']}", flush=True))
        done.set()
        rss_after = spanqa.memory_info().rss / 2**20
    finally:
        done.set()
        for server, _ in servers.values():
            server.terminate()
            server.wait(30)
    baseline = "clean" if args.hostile else "pipeline_fastapi" if "pipeline_fastapi" in rates else "spanqa"
    result = report(rates, baseline, load_before)
    for name, row in result["contenders"].items():
        row.update({k: statistics.median(r[k] for r in rounds[name]) for k in ("p50_ms", "p99_ms")},
                   errors=sum(r["errors"] for r in rounds[name]), requests=sum(r["requests"] for r in rounds[name]),
                   every_round=rounds[name])
    if args.hostile:
        clean, hostile = result["contenders"]["clean"], result["contenders"]["hostile"]
        result["p99_hostile_over_clean"] = hostile["p99_ms"] / clean["p99_ms"]
        result["hostile_clients"] = {"hangup": args.hangup_clients, "slow": args.slow_clients,
                                     "junk": args.junk_clients, "junk_pause_s": args.junk_pause}
    result.update(model=args.model, clients=args.clients, seconds_per_round=args.seconds, unit="requests/s",
                  server_rss_mb_before=rss_before, server_rss_mb_after=rss_after, server_rss_mb_every_10s=timeline)
    print(json.dumps(result, indent=2))
    print_report(result, "requests/s")
    if args.hostile:
        print(f"normal clients, p99 hostile / clean: {result['p99_hostile_over_clean']:.2f}; errors clean "
              f"{result['contenders']['clean']['errors']}, hostile {result['contenders']['hostile']['errors']}; "
              f"server RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    save_result("serve_load_hostile" if args.hostile else "serve_load", result)


if __name__ == "__main__":
    main()
