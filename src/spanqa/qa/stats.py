"""Dataset statistics: how many pairs each max length truncates, windows per example, label fidelity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from spanqa.qa.metrics import normalize_answer
from spanqa.qa.squad import Example
from spanqa.qa.windows import WindowSettings, _backend_copy, iter_windows

MAX_LENGTHS = (128, 256, 300, 384, 512)


@dataclass
class LabelFailure:
    id: str
    gold: str
    decoded: str


@dataclass
class DataStats:
    examples: int
    answerable: int
    over_length: dict[int, int]             # max length -> pairs (question + context) longer than it
    windows: int                             # at the chosen settings
    windows_per_example_max: int
    label_exact: int                         # gold answers whose labelled tokens decode back exactly
    label_total: int
    failures: list[LabelFailure] = field(default_factory=list)

    @property
    def label_exact_share(self) -> float:
        return self.label_exact / self.label_total if self.label_total else 1.0

    def to_dict(self, settings: WindowSettings) -> dict:
        return {"examples": self.examples, "answerable": self.answerable,
                "over_length": {str(k): v for k, v in self.over_length.items()},
                "over_length_share": {str(k): v / max(self.examples, 1) for k, v in self.over_length.items()},
                "settings": vars(settings), "windows": self.windows,
                "windows_per_example": self.windows / max(self.examples, 1),
                "windows_per_example_max": self.windows_per_example_max,
                "label_exact": self.label_exact, "label_total": self.label_total,
                "label_exact_share": self.label_exact_share,
                "failures": [vars(f) for f in self.failures]}


def pair_lengths(examples: Sequence[Example], tokenizer, batch_size: int = 1000) -> np.ndarray:
    """Token count of question + context with special tokens, untruncated."""
    backend = _backend_copy(tokenizer)
    out = []
    for lo in range(0, len(examples), batch_size):
        batch = examples[lo:lo + batch_size]
        out.extend(len(e.ids) for e in backend.encode_batch([(x.question, x.context) for x in batch]))
    return np.array(out, dtype=np.int64)


def data_stats(examples: Sequence[Example], tokenizer, settings: WindowSettings,
               max_lengths: Sequence[int] = MAX_LENGTHS) -> DataStats:
    """Length, window and label statistics of `examples` under `settings`."""
    lengths = pair_lengths(examples, tokenizer)
    over = {int(m): int((lengths > m).sum()) for m in max_lengths}
    n_windows = 0
    per_example = np.zeros(len(examples), dtype=np.int64)
    found = np.zeros(len(examples), dtype=bool)
    exact = np.zeros(len(examples), dtype=bool)
    decoded = [""] * len(examples)
    for w in iter_windows(examples, tokenizer, settings):
        n_windows += len(w)
        np.add.at(per_example, w.example_index, 1)
        for i in np.nonzero(w.start_positions != w.cls_index)[0]:
            ex = int(w.example_index[i])
            e = examples[ex]
            text = e.context[w.offsets[i, w.start_positions[i], 0]:w.offsets[i, w.end_positions[i], 1]]
            ok = normalize_answer(text) == normalize_answer(e.answer_texts[0])
            if not found[ex] or (ok and not exact[ex]):
                found[ex], exact[ex], decoded[ex] = True, ok, text
    answerable = np.array([e.has_answer for e in examples], dtype=bool)
    failures = [LabelFailure(examples[i].id, examples[i].answer_texts[0], decoded[i])
                for i in np.nonzero(answerable & ~exact)[0]]
    return DataStats(len(examples), int(answerable.sum()), over, n_windows,
                     int(per_example.max()) if len(examples) else 0,
                     int((answerable & exact).sum()), int(answerable.sum()), failures)
