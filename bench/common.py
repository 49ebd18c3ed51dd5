"""Helpers shared by the benchmarks: paths, peak memory, result files, interleaved rounds."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SQUAD = Path(os.environ.get("SPANQA_DATA", ROOT.parent / "shared" / "data" / "squad"))
# smoke runs can write elsewhere, so that they never replace a measured result
RESULTS = Path(os.environ.get("SPANQA_BENCH_RESULTS", ROOT / "bench" / "results"))
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


# --- interleaved rounds: A B A B ..., medians, spread ------------------------------------------
# The cores are shared: a peer measured once, minutes apart from spanqa, moved by a third between
# runs (issue 17). Alternating the contenders spreads the machine's drift over all of them, and the
# spread of each one's rounds says how much to trust a ratio.


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable + waiting tasks, over all cores)."""
    return [round(x, 2) for x in os.getloadavg()]


def interleave(runs: dict[str, Callable[[], float]], rounds: int, warmup: Callable[[str], None] | None = None,
               on_round: Callable[[int, str, float], None] | None = None) -> dict[str, list[float]]:
    """Measures of each contender over `rounds` rounds run in turn (A B C A B C ...).

    `runs[name]()` does one timed run and returns its measure (a rate or seconds); `warmup(name)`, if
    given, runs once per contender before the first round and is not recorded.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    if warmup is not None:
        for name in runs:
            warmup(name)
    measures: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            measures[name].append(run())
            if on_round:
                on_round(r, name, measures[name][-1])
    return measures


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, every round, and the spread (max - min) / median as the noise figure."""
    v = sorted(values)
    median = statistics.median(v)
    return {"median": median, "min": v[0], "max": v[-1], "rounds": list(values),
            "spread": (v[-1] - v[0]) / median if median else float("nan")}


def ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """a / b as the ratio of medians, with the widest range the rounds allow (min a / max b .. max a / min b)."""
    return {"median": statistics.median(a) / statistics.median(b), "low": min(a) / max(b), "high": max(a) / min(b)}


def report(measures: dict[str, list[float]], baseline: str, load_before: list[float]) -> dict[str, Any]:
    """Summaries of each contender, ratios of medians against `baseline`, and how noisy the machine was."""
    out = {name: summary(v) for name, v in measures.items()}
    for name, v in measures.items():
        out[name][f"x_{baseline}"] = ratio(v, measures[baseline])
    spreads = [s["spread"] for s in out.values()]
    return {"contenders": out, "baseline": baseline, "rounds": len(measures[baseline]),
            "noise": {"load_average_before": load_before, "load_average_after": load_average(),
                      "cpus": os.cpu_count(), "max_spread": max(spreads), "median_spread": statistics.median(spreads)},
            "cpu": cpu_description(),
            "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def cpu_description() -> str:
    """The processor's name and the vector units that decide which precision is fast (the project's
    machines have been both Intel with AVX512-BF16 and AMD EPYC with AVX2 only)."""
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    units = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(units) or 'no AVX2'})"


def print_report(result: dict[str, Any], unit: str) -> None:
    """One line per contender: median [min - max] unit, spread, ratio of medians to the baseline."""
    base = result["baseline"]
    for name, s in result["contenders"].items():
        r = s[f"x_{base}"]
        print(f"{name:34s} {s['median']:9.2f} [{s['min']:.2f} - {s['max']:.2f}] {unit}  spread {s['spread']:.1%}  "
              f"x{base}: {r['median']:.2f} ({r['low']:.2f} - {r['high']:.2f})")
    n = result["noise"]
    print(f"load average before {n['load_average_before']}, after {n['load_average_after']} on {n['cpus']} cpus; "
          f"largest spread of rounds {n['max_spread']:.1%}")


def git_commit() -> str:
    """The commit benchmarked (+ '-dirty' with uncommitted changes), '' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""
