"""Helpers shared by the benchmarks: paths, peak memory, result files."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQUAD = Path(os.environ.get("SPANQA_DATA", ROOT.parent / "shared" / "data" / "squad"))
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB).

    Read from /proc (VmHWM): getrusage's ru_maxrss survives exec on Linux, so a benchmark
    subprocess would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
