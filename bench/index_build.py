"""Indexing speed: 10,000 passages (train-v1.1 paragraphs) on this machine, BM25 + dense (MiniLM).

    python bench/index_build.py [--passages 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import SQUAD, peak_rss_mb, save_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=10_000)
    args = ap.parse_args()

    from spanqa.data.sources import read_json_file
    from spanqa.retrieval.index import Index

    records = [{"id": f"{a['title']}#{p}", "title": a["title"], "text": para["context"]}
               for a in read_json_file(SQUAD / "train-v1.1.reconstructed.json.gz")["data"]
               for p, para in enumerate(a["paragraphs"])][:args.passages]
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "paragraphs.jsonl"
        docs.write_text("".join(json.dumps(r) + "\n" for r in records))
        t0 = time.perf_counter()
        index, _ = Index.build([docs], show_progress=True)
        index.save(Path(tmp) / "idx")
        seconds = time.perf_counter() - t0
    result = {"documents": len(records), "passages": len(index.passages), "build_seconds": seconds,
              "passages_per_s": len(index.passages) / seconds, "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(result, indent=2))
    save_result("index_build", result)


if __name__ == "__main__":
    main()
