"""`spanqa score` against the official SQuAD scripts on dev-v1.1 and dev-v2.0, arbitrary predictions.

The official `evaluate-v1.1.py` and `evaluate-v2.0.py` are not part of spanqa: put them in a folder
(default `.official/`, git-ignored) and run

    python bench/score_official.py [--official-dir .official]

Predictions mix gold answers, case/punctuation/article variants, unicode noise, empty strings and
random context spans; v2.0 also gets random no-answer probabilities. Every key must agree to 1e-6.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, SQUAD, save_result


def variants(gold: str, context: str, rng: random.Random) -> str:
    a = rng.randrange(len(context))
    choices = [gold, gold.upper(), f"The {gold}.", f"  {gold} , an", "", gold[: max(1, len(gold) // 2)],
               gold + " é—ü", "«" + gold + "»", context[a:a + rng.randint(1, 40)], "the", "a an the ,,"]
    return rng.choice(choices)


def make_predictions(data: list, seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    preds, probs = {}, {}
    for article in data:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                gold = qa["answers"][0]["text"] if qa["answers"] else ""
                preds[qa["id"]] = variants(gold or "nothing", p["context"], rng)
                probs[qa["id"]] = rng.random()
    return preds, probs


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official-dir", type=Path, default=ROOT / ".official")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, script in (("dev-v1.1.json.gz", "evaluate-v1.1.py"), ("dev-v2.0.reconstructed.json.gz", "evaluate-v2.0.py")):
            data_json = json.loads(gzip.open(SQUAD / name, "rt", encoding="utf-8").read())
            data_path = tmp / name.replace(".gz", "")
            data_path.write_text(json.dumps(data_json))
            for seed in range(args.seeds):
                preds, probs = make_predictions(data_json["data"], seed)
                (tmp / "p.json").write_text(json.dumps(preds))
                (tmp / "n.json").write_text(json.dumps(probs))
                extra = (["--na-prob-file", str(tmp / "n.json")], ["--na-probs", str(tmp / "n.json")]) \
                    if "v2" in script else ([], [])
                official = run([sys.executable, str(args.official_dir / script), str(data_path), str(tmp / "p.json"), *extra[0]])
                ours = run([sys.executable, "-m", "spanqa", "score", str(SQUAD / name), str(tmp / "p.json"), *extra[1]])
                diff = max(abs(official[k] - ours[k]) for k in official)
                same_keys = list(official) == list(ours)
                rows.append({"data": name, "seed": seed, "keys": list(official), "same_keys_in_order": same_keys,
                             "max_abs_diff": diff, "official": official})
                print(name, seed, "max |diff| =", diff, "same keys:", same_keys, flush=True)
                assert same_keys and diff <= 1e-6, (official, ours)
    save_result("score_official", {"rows": rows})


if __name__ == "__main__":
    main()
