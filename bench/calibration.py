"""Calibrated confidence, measured on questions it was not fitted on (issue 16).

One reading pass over all of dev-v1.1 (10,570 questions) and one over PolicyQA dev (3,809 questions,
privacy policies: another domain). The calibration is fitted (`qa.calibration.fit_calibration`, the
same call `spanqa evaluate --calibrate` makes) on dev-v1.1 questions 5,000-10,569 and measured on
questions 0-4,999, never the same questions, and on all of PolicyQA. "Right" = exact match of the
top answer with a gold answer (official normalization). Reported: ECE (15 equal-width bins), log-loss
and the F1 of the most confident 50% of answers, before (the decoder's softmax probability, today's
score) and after calibration.

Also writes the evaluation report of the held-out half (MODEL/calibration-heldout/report.html, with
the prediction files it is rebuilt from) and, when Chromium is installed, screenshots of it into
bench/results/.

    python bench/calibration.py [--model /work/runs/squad-cpufast] [--precision fp32] [--store]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import ROOT, SQUAD, save_result, RESULTS

DEV = SQUAD / "dev-v1.1.json.gz"
DOMAIN = ROOT.parent / "shared" / "data" / "policyqa" / "dev.json.gz"
SPLIT = 5000
BINS = 15


def read(reader, path: Path, limit: int | None = None):
    """Examples, their predictions (uncalibrated: the evaluation path) and windows, in one pass."""
    from spanqa.qa.evaluate import evaluate_windows
    from spanqa.qa.squad import load_dataset
    from spanqa.qa.windows import build_windows

    examples = load_dataset(path, split="validation").examples[:limit]
    windows = build_windows(examples, reader.tokenizer, reader.settings.windows)
    t0 = time.perf_counter()
    metrics, predictions = evaluate_windows(reader.model, examples, windows, reader.settings.decoding,
                                            reader.batch_size, reader.autocast_dtype)
    return examples, predictions, windows, metrics, time.perf_counter() - t0


def measure(examples, predictions, calibration) -> dict:
    from spanqa.qa.calibration import _log_loss, example_f1, is_right, raw_confidence
    from spanqa.qa.reliability import coverage_curve, expected_calibration_error

    right = np.array([is_right(e, p.text) for e, p in zip(examples, predictions)], dtype=float)
    f1 = np.array([example_f1(e, p.text) for e, p in zip(examples, predictions)])
    out = {"questions": len(examples), "exact_match": 100 * right.mean(), "f1": 100 * f1.mean()}
    for name, conf in (("before", raw_confidence(predictions, False)), ("after", calibration.confidence(predictions))):
        out[name] = {"ece": expected_calibration_error(conf, right, BINS), "log_loss": _log_loss(conf, right),
                     "mean_confidence": float(conf.mean()),
                     "f1_most_confident_50pct": 100 * coverage_curve(conf, f1).f1_at(0.5)}
    return out


def screenshots(report: Path) -> list[str]:
    """The top of the report and its reliability diagram, as small PNGs in bench/results/."""
    import io
    import shutil

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (binary and driver):
        print("chromium/chromedriver not installed (scripts/setup-browser.sh): no screenshots")
        return []
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1150,1500", "--hide-scrollbars"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    saved = []
    try:
        browser.get(report.as_uri())
        shots = {"calibration_report.png": browser.get_screenshot_as_png(),
                 "calibration_reliability.png": browser.find_element(By.ID, "reliability").screenshot_as_png}
        for name, png in shots.items():
            image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64)  # small: a palette PNG
            image.save(RESULTS / name, optimize=True)
            saved.append(str((RESULTS / name).relative_to(ROOT)))
    finally:
        browser.quit()
    return saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/runs/squad-cpufast")
    ap.add_argument("--precision", default="fp32", help="the reader's default (Reader.load, spanqa evaluate)")
    ap.add_argument("--store", action="store_true",
                    help="also store the calibration (fitted on questions 5,000+) in MODEL/spanqa.json")
    ap.add_argument("--limit", type=int, help="smoke test: the first N questions of each set, split at N/2")
    args = ap.parse_args()
    split = args.limit // 2 if args.limit else SPLIT

    import torch

    from spanqa.files import atomic_write_json
    from spanqa.qa.calibration import fit_calibration
    from spanqa.qa.evaluate import window_counts, write_predictions
    from spanqa.qa.reader import Reader
    from spanqa.qa.report import write_report

    torch.set_num_threads(2)
    reader = Reader.load(args.model, precision=args.precision)
    examples, predictions, windows, metrics, seconds = read(reader, DEV, args.limit)
    fit_ex, fit_pred = examples[split:], predictions[split:]
    test_ex, test_pred = examples[:split], predictions[:split]
    t0 = time.perf_counter()
    calibration = fit_calibration(fit_ex, fit_pred, version_2=False, bins=BINS)
    fit_seconds = time.perf_counter() - t0
    in_domain = measure(test_ex, test_pred, calibration)
    fitting = measure(fit_ex, fit_pred, calibration)
    domain_ex, domain_pred, _, domain_metrics, domain_seconds = read(reader, DOMAIN, args.limit)
    other = measure(domain_ex, domain_pred, calibration)

    folder = Path(args.model) / "calibration-heldout"  # `spanqa report` rebuilds report.html from these files
    write_predictions(folder, test_pred, False)
    counts = window_counts(examples, windows)
    atomic_write_json(folder / "windows.json", {e.id: counts[e.id] for e in test_ex})
    atomic_write_json(folder / "calibration.json", {"calibration": calibration.to_dict()})
    report = write_report(folder, test_ex, test_pred, calibration, counts,
                          title=f"spanqa: {Path(args.model).name} on dev-v1.1 questions 0-4,999 "
                                f"(calibration fitted on 5,000-10,569)")
    if args.store:
        settings = Path(args.model) / "spanqa.json"
        stored = json.loads(settings.read_text())
        stored["calibration"] = calibration.to_dict()
        atomic_write_json(settings, stored)
    result = {
        "model": args.model, "precision": args.precision, "bins": BINS, "right": "exact match of the top answer",
        "fitted_on": f"dev-v1.1 questions {split}-{len(examples) - 1} ({len(fit_ex)})",
        "measured_on": f"dev-v1.1 questions 0-{split - 1} ({len(test_ex)}); PolicyQA dev ({len(domain_ex)})",
        "calibration": calibration.to_dict(), "fit_seconds": fit_seconds,
        "in_domain_heldout": in_domain, "in_domain_fitting_half": fitting, "policyqa": other,
        "all_dev_metrics": {k: metrics[k] for k in ("exact_match", "f1")}, "read_seconds_dev": seconds,
        "policyqa_metrics": {k: domain_metrics[k] for k in ("exact_match", "f1")}, "read_seconds_policyqa": domain_seconds,
        "report": str(report), "rebuild": f"spanqa report {folder} --data {DEV} --calibration {folder}/calibration.json",
        "command": "python bench/calibration.py" + (f" --model {args.model}" if args.model != "/work/runs/squad-cpufast" else ""),
    }
    result["screenshots"] = screenshots(report)
    print(json.dumps({k: result[k] for k in ("in_domain_heldout", "policyqa")}, indent=2))
    print(f"wrote {save_result('calibration' if not args.limit else 'calibration_smoke', result)}")


if __name__ == "__main__":
    main()
