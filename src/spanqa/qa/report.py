"""report.html: one self-contained page (inline CSS, PNG plots as data URIs) about an evaluation.

Sections (each an element with a fixed id, which tests and the headless-browser check look for):
overall, question-type, answer-length, context-length, windows (when window counts are known),
has-answer (v2), reliability, coverage, errors.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from .calibration import Calibration, PredictionLike, example_f1, fit_calibration, is_right, raw_confidence
from .reliability import QUESTION_TYPES, coverage_curve, question_type, reliability_bins

if TYPE_CHECKING:
    from .decode import Answer
    from .squad import Example

SECTIONS = ("overall", "question-type", "answer-length", "context-length", "windows", "has-answer",
            "reliability", "coverage", "errors")
ANSWER_LENGTHS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 10**9))  # gold answer tokens
CONTEXT_WORDS = ((0, 99), (100, 149), (150, 199), (200, 299), (300, 499), (500, 10**9))
WINDOW_COUNTS = ((1, 1), (2, 2), (3, 3), (4, 10**9))
SNIPPET_MARGIN = 160  # characters of context shown on each side of the highlighted spans


@dataclass
class StoredPrediction:
    """A prediction rebuilt from prediction files (the same reading interface as `decode.Prediction`)."""

    id: str
    context: str
    answers: "list[Answer]" = field(default_factory=list)
    null_score: float = float("-inf")  # unknown for v1 runs (no null_odds.json)
    no_answer: bool = False

    @property
    def text(self) -> str:
        return "" if self.no_answer or not self.answers else self.answers[0].text

    @property
    def null_odds(self) -> float:
        return self.null_score - self.answers[0].logit if self.answers else float("-inf")


# --- scores per example and per group -----------------------------------------------------------

def _bucket(value: int, buckets: Sequence[tuple[int, int]]) -> str:
    for lo, hi in buckets:
        if lo <= value <= hi:
            return str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")
    return "other"


def _bucket_order(buckets: Sequence[tuple[int, int]]) -> list[str]:
    return [_bucket(lo, buckets) for lo, _ in buckets]


def _group_table(keys: Sequence[str], em: np.ndarray, f1: np.ndarray, order: Sequence[str]) -> list[tuple]:
    """(group, count, EM, F1) rows in `order`, empty groups left out."""
    rows = []
    keys_arr = np.asarray(keys)
    for k in list(order) + sorted(set(keys) - set(order)):
        mask = keys_arr == k
        if mask.any():
            rows.append((k, int(mask.sum()), 100 * em[mask].mean(), 100 * f1[mask].mean()))
    return rows


def _table(rows: Sequence[tuple], header: Sequence[str]) -> str:
    def cell(v) -> str:
        return f"{v:.1f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cross_fitted_confidence(examples: Sequence["Example"], predictions: Sequence[PredictionLike],
                            version_2: bool | None = None, folds: int = 2, seed: int = 0) -> np.ndarray | None:
    """Calibrated confidence of each prediction from a calibration fitted on the other folds (never itself)."""
    n = len(examples)
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.zeros(n)
    for f in range(folds):
        rest, mine = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
        try:
            cal = fit_calibration([examples[i] for i in rest], [predictions[i] for i in rest], version_2, seed=seed)
        except ValueError:
            return None  # too few right or wrong answers to fit: no calibrated view
        out[mine] = cal.confidence([predictions[i] for i in mine])
    return out


# --- plots --------------------------------------------------------------------------------------

def _png(draw: Callable, size: tuple[float, float] = (6.0, 4.0)) -> str:
    """Draw on a fresh Agg figure (no pyplot: no global state, safe in servers) -> <img> with a data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _bar_plot(rows: Sequence[tuple], title: str) -> str:
    def draw(fig) -> None:
        ax = fig.add_subplot()
        names = [r[0] for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[2] for r in rows], 0.4, label="EM")
        ax.bar(x + 0.2, [r[3] for r in rows], 0.4, label="F1")
        ax.set_xticks(x, names, rotation=30)
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.legend()
    return _png(draw, (6.5, 3.5))


def _reliability_plot(views: Sequence[tuple[str, np.ndarray]], right: np.ndarray, bins: int) -> str:
    def draw(fig) -> None:
        for i, (name, conf) in enumerate(views):
            ax = fig.add_subplot(1, len(views), i + 1)
            rb = reliability_bins(conf, right, bins)
            centers = (rb.edges[:-1] + rb.edges[1:]) / 2
            full = rb.count > 0
            ax.bar(centers[full], rb.accuracy[full], width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
            ax.plot(rb.confidence[full], rb.accuracy[full], "o", ms=3, color="C3", label="mean confidence")
            ax.plot([0, 1], [0, 1], "--", color="gray")
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="share right",
                   title=f"{name}: ECE {rb.ece:.3f}")
            ax.legend(loc="upper left", fontsize=7)
    return _png(draw, (5.0 * len(views), 4.2))


def _coverage_plot(views: Sequence[tuple[str, np.ndarray]], f1: np.ndarray) -> str:
    def draw(fig) -> None:
        ax = fig.add_subplot()
        for name, conf in views:
            curve = coverage_curve(conf, f1)
            ax.plot(curve.coverage, 100 * curve.f1, label=name)
        ax.set(xlim=(0, 1), ylim=(0, 100), xlabel="share of questions answered (coverage)",
               ylabel="F1 of the answered questions", title="coverage curve")
        ax.legend()
    return _png(draw)


# --- worst errors -------------------------------------------------------------------------------

def highlight(context: str, gold: Sequence[tuple[int, int]], predicted: Sequence[tuple[int, int]],
              margin: int = SNIPPET_MARGIN) -> str:
    """HTML of the context around the spans, gold and predicted spans marked (everything escaped)."""
    n = len(context)
    flags = np.zeros(n, dtype=np.int8)  # bit 1: gold, bit 2: predicted
    for bit, spans in ((1, gold), (2, predicted)):
        for s, e in spans:
            flags[max(s, 0):min(e, n)] |= bit
    marked = np.nonzero(flags)[0]
    if len(marked) == 0:
        shown = [(0, min(n, 2 * margin))]
    else:  # one window per group of nearby marks, so far-apart spans do not show the whole context
        shown = []
        for pos in marked:
            lo, hi = max(0, pos - margin), min(n, pos + 1 + margin)
            if shown and lo <= shown[-1][1]:
                shown[-1] = (shown[-1][0], hi)
            else:
                shown.append((lo, hi))
    classes = {1: "gold", 2: "pred", 3: "both"}
    parts = []
    for lo, hi in shown:
        out = ["… " if lo > 0 else ""]
        i = lo
        while i < hi:
            j = i
            while j < hi and flags[j] == flags[i]:
                j += 1
            text = html.escape(context[i:j])
            out.append(f'<mark class="{classes[int(flags[i])]}">{text}</mark>' if flags[i] else text)
            i = j
        out.append(" …" if hi < n else "")
        parts.append("".join(out))
    return "<br>".join(parts)


def _errors_section(examples: Sequence["Example"], predictions: Sequence[PredictionLike], em: np.ndarray,
                    f1: np.ndarray, conf: np.ndarray, worst: int) -> str:
    wrong = np.nonzero(em < 1)[0]
    # worst first: lowest F1, and among equals the most confident (confidently wrong is worst)
    order = wrong[np.lexsort((-conf[wrong], f1[wrong]))][:worst]
    items = []
    for i in order:
        e, p = examples[i], predictions[i]
        gold = [(s, s + len(t)) for t, s in zip(e.answer_texts, e.answer_starts)]
        pred = [(p.answers[0].start, p.answers[0].end)] if p.text and p.answers else []
        golds = ", ".join(html.escape(repr(t)) for t in e.answer_texts) or "(no answer)"
        items.append(
            f"<li><p><b>{html.escape(e.question)}</b> <small>[{html.escape(question_type(e.question))}; "
            f"id {html.escape(e.id)}]</small></p><p>gold: <mark class=\"gold\">{golds}</mark> &nbsp; "
            f"predicted: <mark class=\"pred\">{html.escape(repr(p.text)) if p.text else '(no answer)'}</mark>"
            f" &nbsp; F1 {100 * f1[i]:.1f}, confidence {conf[i]:.2f}</p>"
            f"<p class=\"context\">{highlight(e.context, gold, pred)}</p></li>")
    return f"<ol>{''.join(items)}</ol>" if items else "<p>No errors.</p>"


# --- the page -----------------------------------------------------------------------------------

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}section{margin-bottom:2em}
mark.gold{background:#b6f0b6}mark.pred{background:#ffd38a}mark.both{background:#9fd3ff}
.context{font-family:serif;line-height:1.5;background:#fafafa;padding:.5em}li{margin-bottom:1em}"""


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def render_report(examples: Sequence["Example"], predictions: Sequence[PredictionLike],
                  calibration: Calibration | None = None, windows: Mapping[str, int] | None = None,
                  title: str = "spanqa evaluation report", worst: int = 25, bins: int = 15) -> str:
    """The report's HTML."""
    if len(examples) != len(predictions):
        raise ValueError("one prediction per example")
    if not examples:
        raise ValueError("nothing to report on")
    version_2 = any(not e.has_answer for e in examples) or (calibration is not None and calibration.version_2)
    texts = [p.text for p in predictions]
    em = np.array([float(is_right(e, t)) for e, t in zip(examples, texts)])
    f1 = np.array([example_f1(e, t) for e, t in zip(examples, texts)])
    header = ("group", "questions", "EM", "F1")
    sections = [_section("overall", "Overall", _table([("all", len(em), 100 * em.mean(), 100 * f1.mean())], header))]

    qtypes = [question_type(e.question) for e in examples]
    rows = _group_table(qtypes, em, f1, QUESTION_TYPES)
    sections.append(_section("question-type", "By question type",
                             _table(rows, header) + _bar_plot(rows, "by question type")))
    lengths = [_bucket(len(e.answer_texts[0].split()), ANSWER_LENGTHS) if e.has_answer else "no answer"
               for e in examples]
    rows = _group_table(lengths, em, f1, _bucket_order(ANSWER_LENGTHS) + ["no answer"])
    sections.append(_section("answer-length", "By gold answer length (words of the first gold answer)",
                             _table(rows, header)))
    words = [_bucket(len(e.context.split()), CONTEXT_WORDS) for e in examples]
    rows = _group_table(words, em, f1, _bucket_order(CONTEXT_WORDS))
    sections.append(_section("context-length", "By context length (words)", _table(rows, header)))
    if windows:
        counts = [_bucket(int(windows.get(e.id, 1)), WINDOW_COUNTS) for e in examples]
        rows = _group_table(counts, em, f1, _bucket_order(WINDOW_COUNTS))
        sections.append(_section("windows", "By number of windows", _table(rows, header)))
    if version_2:
        has = ["HasAns" if e.has_answer else "NoAns" for e in examples]
        sections.append(_section("has-answer", "Answerable (HasAns) and unanswerable (NoAns) questions",
                                 _table(_group_table(has, em, f1, ["HasAns", "NoAns"]), header)))

    raw = raw_confidence(predictions, version_2)
    views = [("before calibration", raw)]
    note = "Confidence before calibration: the decoder's softmax probability of its output."
    if calibration is not None:
        views.append(("after calibration", calibration.confidence(predictions)))
        note += (f" After: the stored calibration ({html.escape(calibration.method)}; fitted on "
                 f"{calibration.fitted.get('examples', '?')} questions: measured on other questions only if "
                 "these were not among them).")
    else:
        crossed = cross_fitted_confidence(examples, predictions, version_2)
        if crossed is not None:
            views.append(("after calibration (cross-fitted)", crossed))
            note += (" After: a calibration fitted here, each half of the questions scored by the one "
                     "fitted on the other half (never on themselves).")
    note += f" Right = exact match with a gold answer (official normalization); {bins} equal-width bins."
    sections.append(_section("reliability", "Reliability diagram",
                             f"<p>{note}</p>" + _reliability_plot(views, em, bins)))
    cov_rows = []
    for name, conf in views:
        curve = coverage_curve(conf, f1)
        cov_rows.append((name, *(100 * curve.f1_at(c) for c in (0.25, 0.5, 0.75, 1.0))))
    sections.append(_section("coverage", "Coverage: F1 of the answers above each confidence threshold",
                             _coverage_plot(views, f1) + _table(cov_rows, ("confidence", "F1 @25%", "F1 @50%",
                                                                           "F1 @75%", "F1 @100%"))))
    conf = views[-1][1]
    sections.append(_section("errors", f"The {worst} worst errors (lowest F1, most confident first)",
                             '<p><mark class="gold">gold</mark> <mark class="pred">predicted</mark> '
                             '<mark class="both">both</mark></p>'
                             + _errors_section(examples, predictions, em, f1, conf, worst)))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(examples)} questions{' (SQuAD v2.0: with unanswerable ones)' if version_2 else ''}.</p>"
            + "".join(sections) + "</body></html>\n")


def write_report(folder: str | Path, examples: Sequence["Example"], predictions: Sequence[PredictionLike],
                 calibration: Calibration | None = None, windows: Mapping[str, int] | None = None,
                 title: str = "spanqa evaluation report", worst: int = 25, bins: int = 15) -> Path:
    """Write `folder`/report.html and return its path."""
    from ..files import atomic_write_text

    path = Path(folder) / "report.html"
    atomic_write_text(path, render_report(examples, predictions, calibration, windows, title, worst, bins))
    return path


# --- from prediction files ----------------------------------------------------------------------

def load_predictions(folder: str | Path, examples: Sequence["Example"]) -> list[StoredPrediction]:
    """Predictions of `examples` from predictions.json, nbest_predictions.json and (v2) null_odds.json."""
    from .decode import Answer

    folder = Path(folder)
    texts = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
    nbest = json.loads((folder / "nbest_predictions.json").read_text(encoding="utf-8"))
    odds_path = folder / "null_odds.json"
    odds = json.loads(odds_path.read_text(encoding="utf-8")) if odds_path.exists() else {}
    out = []
    for e in examples:
        answers = [Answer(a["text"], int(a["start"]), int(a["end"]), float(a["probability"]), float(a["logit"]))
                   for a in nbest.get(e.id, [])]
        odd = odds.get(e.id)
        # null_odds = null logit - top span logit, so the null logit comes back exactly
        null = float(odd) + answers[0].logit if odd is not None and answers else float("-inf")
        out.append(StoredPrediction(e.id, e.context, answers, null, no_answer=texts.get(e.id, "") == ""))
    return out


def find_calibration(folder: str | Path) -> Calibration | None:
    """The calibration stored in spanqa.json of the folder or its parent (an eval folder inside a reader)."""
    for settings in (Path(folder) / "spanqa.json", Path(folder).parent / "spanqa.json"):
        if settings.exists():
            stored = json.loads(settings.read_text(encoding="utf-8")).get("calibration")
            if stored:
                return Calibration.from_dict(stored)
    return None


def report_from_files(folder: str | Path, data_path: str | Path, calibration: Calibration | None = None,
                      out: str | Path | None = None, worst: int = 25) -> Path:
    """Rebuild report.html from a run's prediction files and the data file, without the model."""
    from .squad import load_dataset

    folder = Path(folder)
    texts = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
    examples = [e for e in load_dataset(data_path, split="validation").examples if e.id in texts]
    if not examples:
        raise ValueError(f"{folder}/predictions.json answers none of the questions of {data_path}")
    predictions = load_predictions(folder, examples)
    windows_path = folder / "windows.json"  # {id: windows}; optional, written by evaluate when available
    windows = json.loads(windows_path.read_text(encoding="utf-8")) if windows_path.exists() else None
    calibration = calibration if calibration is not None else find_calibration(folder)
    return write_report(out if out is not None else folder, examples, predictions, calibration, windows,
                        title=f"spanqa evaluation report: {folder.name}", worst=worst)
