"""Many questions, one context: 10 questions about one ~2,000-word passage (paragraphs of one dev-v1.1
article), asked one by one as before the context cache ("today"), one by one through the reader's
context cache (what `spanqa chat` does), and in one `answer_many` call. Interleaved rounds; each
round starts with an empty cache, so the passage is tokenized once per round on the cached paths.

Also times the windows alone (text -> model inputs, no model) for the 10 questions, which is the
part the cache changes: the model still reads every window of every question, since each window
holds the question's tokens next to the context's.

    python bench/many_questions.py [--model runs/quick] [--words 2000] [--questions 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import time

from common import ROOT, SQUAD, interleave, load_average, ratio, report, save_result


def passage_and_questions(words: int, questions: int, article: int) -> tuple[str, list[str], str]:
    """Paragraphs of one dev article joined until `words` words, and `questions` of its questions
    spread over those paragraphs."""
    with gzip.open(SQUAD / "dev-v1.1.json.gz") as f:
        data = json.load(f)["data"][article]
    paragraphs, asked = [], []
    for p in data["paragraphs"]:
        paragraphs.append(p["context"])
        asked += [q["question"] for q in p["qas"]]
        if sum(len(c.split()) for c in paragraphs) >= words:
            break
    step = max(1, len(asked) // questions)
    return "\n\n".join(paragraphs), asked[::step][:questions], data["title"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "runs" / "quick"), help="a reader folder or an exported ONNX one")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--words", type=int, default=2000)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--article", type=int, default=0, help="index of the dev-v1.1 article")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from spanqa.qa.reader import Reader
    from spanqa.qa.squad import Example
    from spanqa.qa.windows import build_windows

    context, questions, title = passage_and_questions(args.words, args.questions, args.article)
    reader = Reader.load(args.model, precision=args.precision)
    # today's path: a fresh window encoder (tokenizer copy + context tokenization) on every call
    today = copy.copy(reader)
    today.windows = lambda examples: build_windows(examples, today.tokenizer, today.settings.windows)
    n_windows = len(reader.windows([Example("0", q, context) for q in questions]))
    n_tokens = len(reader.encoder.encode_contexts([context])[0].ids)
    print(f"{title}: {len(context.split()):,} words, {n_tokens:,} tokens, "
          f"{len(questions)} questions, {n_windows} windows", flush=True)

    answers: dict[str, list] = {}

    def fresh_cache() -> None:
        if reader.encoder is not None:
            reader.encoder.clear()

    def timed(name: str, ask) -> float:
        fresh_cache()
        t0 = time.perf_counter()
        got = ask()
        seconds = time.perf_counter() - t0
        answers.setdefault(name, got)
        return seconds

    one = [Example("0", q, context) for q in questions]
    runs = {
        "today_one_by_one": lambda: timed("today_one_by_one", lambda: [today.answer(q, context) for q in questions]),
        "cached_one_by_one_chat": lambda: timed("cached_one_by_one_chat",
                                                lambda: [reader.answer(q, context) for q in questions]),
        "answer_many": lambda: timed("answer_many", lambda: reader.answer_many([(q, context) for q in questions])),
        "windows_only_today": lambda: timed("windows_only_today", lambda: [today.windows([e]) for e in one]),
        "windows_only_cached": lambda: timed("windows_only_cached", lambda: [reader.windows([e]) for e in one]),
    }
    load_before = load_average()
    seconds = interleave(runs, args.rounds, warmup=lambda name: runs[name](),
                         on_round=lambda r, name, s: print(f"round {r + 1} {name}: {s:.3f} s", flush=True))

    def spans(name: str) -> list:
        return [[(a.text, a.start, a.end) for a in r] for r in answers[name]]

    result = report(seconds, "today_one_by_one", load_before)
    result.update(model=args.model, precision=args.precision, article=title, words=len(context.split()),
                  context_tokens=n_tokens, questions=questions, windows=n_windows, unit="seconds for all questions (lower is faster)",
                  same_answers={"cached_one_by_one_chat_identical": answers["cached_one_by_one_chat"]
                                == answers["today_one_by_one"],
                                "answer_many_same_spans": spans("answer_many") == spans("today_one_by_one")},
                  answers=[a[0].text if a else "" for a in answers["today_one_by_one"]])
    for name, s in result["contenders"].items():  # seconds, so today / path is the speed-up
        del s["x_today_one_by_one"]
        base = "windows_only_today" if name.startswith("windows") else "today_one_by_one"
        s["speedup_vs_today"] = ratio(seconds[base], seconds[name])
    windows_saved = result["contenders"]["windows_only_today"]["median"] - \
        result["contenders"]["windows_only_cached"]["median"]
    result["windows_seconds_saved_per_question"] = windows_saved / len(questions)
    for name, s in result["contenders"].items():
        r = s["speedup_vs_today"]
        print(f"{name:26s} {s['median']:8.3f} s [{s['min']:.3f} - {s['max']:.3f}]  spread {s['spread']:.1%}  "
              f"speed-up vs today {r['median']:.2f}x ({r['low']:.2f} - {r['high']:.2f})")
    print("same answers:", result["same_answers"], "| load average before", result["noise"]["load_average_before"],
          "after", result["noise"]["load_average_after"])
    save_result("many_questions", result)


if __name__ == "__main__":
    main()
