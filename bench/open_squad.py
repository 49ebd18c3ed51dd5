"""Open-domain SQuAD: all 2,067 dev-v1.1 paragraphs as the collection, the 10,570 dev questions.

Reports recall@1/5/20 of the gold paragraph for bm25, dense (MiniLM mean pooling) and hybrid
(equal-weight sum of min-max normalised scores) retrieval over all questions; index build time; query latency; and the
end-to-end EM/F1 of retrieve + read (top-5 passages, one batched reading pass) against the same
reader given the gold paragraph, on the first `--read-questions` questions (reading 6 passages
per question for all 10,570 would take ~30 min on 2 cores).

    python bench/open_squad.py [--model runs/quick] [--read-questions 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

import numpy as np
from common import ROOT, SQUAD, save_result

DEV = SQUAD / "dev-v1.1.json.gz"


def gold_documents() -> list[tuple[str, str, str, list[str]]]:
    """(question id, question, gold doc id, gold answers) in file order; doc ids as spanqa.index names them."""
    from spanqa.data.sources import read_json_file

    out = []
    for article in read_json_file(DEV)["data"]:
        for p, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                out.append((qa["id"], qa["question"], f"{article['title']}#{p}", [a["text"] for a in qa["answers"]]))
    return out


def recall(index, questions, gold, mode: str) -> dict:
    t0 = time.perf_counter()
    hits = index.search_many(questions, 20, mode)
    seconds = time.perf_counter() - t0
    found_at = [next((r for r, h in enumerate(row) if h.passage.doc_id == g), None) for row, g in zip(hits, gold)]
    out = {f"recall@{k}": float(np.mean([f is not None and f < k for f in found_at])) for k in (1, 5, 20)}
    out["batched_search_ms_per_question"] = 1000 * seconds / len(questions)
    return out


def single_query_ms(fn, queries) -> float:
    t0 = time.perf_counter()
    for q in queries:
        fn(q)
    return 1000 * (time.perf_counter() - t0) / len(queries)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "open-reader"),
                    help="reader (default: runs/quick further trained with --negatives 1, see BENCHMARKS.md)")
    ap.add_argument("--read-questions", type=int, default=1000)
    ap.add_argument("--passages", type=int, default=5)
    args = ap.parse_args()

    from spanqa.qa.collection import ask_collection, ask_collection_many
    from spanqa.qa.evaluate import as_squad_data
    from spanqa.qa.metrics import squad_v1
    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import load_dataset
    from spanqa.retrieval.index import Index

    rows = gold_documents()
    questions, gold = [r[1] for r in rows], [r[2] for r in rows]
    t0 = time.perf_counter()
    index, _ = Index.build([DEV], show_progress=True)
    build_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = Index.load(index.save(f"{tmp}/idx"))
        load_seconds = time.perf_counter() - t0
    result = {"passages": len(index.passages), "documents": index.meta["documents"], "questions": len(questions),
              "index_build_seconds": build_seconds, "index_load_seconds": load_seconds, "retrieval": {}}
    for mode in ("bm25", "dense", "hybrid"):
        result["retrieval"][mode] = recall(index, questions, gold, mode)
        result["retrieval"][mode]["single_query_ms"] = single_query_ms(lambda q: index.search(q, 20, mode), questions[:100])
        print(mode, result["retrieval"][mode], flush=True)

    reader = Reader.load(args.model)
    n = args.read_questions
    examples = load_dataset(DEV).examples[:n]
    data = as_squad_data(examples)
    t0 = time.perf_counter()
    v1 = replace(reader.settings.decoding, version_2=False)  # SQuAD v1.1 questions always have an answer
    gold_preds = {p.id: p.text for p in reader.predict(examples, v1)}
    gold_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = ask_collection_many(reader, index, [e.question for e in examples], 1, args.passages, "hybrid",
                                  allow_no_answer=False)
    open_seconds = time.perf_counter() - t0
    open_preds = {e.id: (a[0].text if a else "") for e, a in zip(examples, answers)}
    gold_scores, open_scores = squad_v1(data, gold_preds), squad_v1(data, open_preds)
    result["reading"] = {
        "questions": n, "passages_read_per_question": args.passages, "reader": args.model,
        "gold_paragraph": {**gold_scores, "questions_per_s": n / gold_seconds},
        "retrieve_then_read_hybrid": {**open_scores, "questions_per_s": n / open_seconds},
        "f1_ratio": open_scores["f1"] / gold_scores["f1"],
        "answer_from_gold_paragraph": float(np.mean([a[0].doc_id == g if a else False
                                                     for a, g in zip(answers, gold[:n])])),
        "single_ask_ms": single_query_ms(lambda q: ask_collection(reader, index, q, 1, args.passages), questions[:20]),
    }
    print(json.dumps(result, indent=2))
    save_result("open_squad", result)


if __name__ == "__main__":
    main()
