"""Teacher logits for distillation: computed once, in one batched pass, into the memory-mapped cache.

When teacher and student tokenize alike (same tokenizer, same window settings) the teacher reads the
student's own windows and its logits are used as they are. Otherwise the teacher reads its own
windows of the same examples and its start/end logits are carried over to the student's tokens
through character offsets: a student token gets the start logit of the teacher token that starts at
the same character (and the end logit of the one that ends where it ends), taken from the teacher
window where that token has its maximum context; the null (CLS) logit comes from the teacher window
that overlaps the student window most. Positions with no teacher counterpart get no probability.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from spanqa.data.cache import cache_folder, file_sha256, fingerprint_tokenizer, is_cached, open_cache, write_cache
from spanqa.models import load_reader_model, load_tokenizer, resolve_model
from spanqa.progress import progress_bar
from spanqa.qa.reader import compute_logits
from spanqa.qa.squad import Example
from spanqa.qa.windows import Windows, WindowSettings, build_windows

NO_LOGIT = -1e4  # "no probability": finite, so that softmax and KL stay finite in any precision
TEACHER_FORMAT = 1


@dataclass
class TeacherLogits:
    """The teacher's start/end logits on the student's windows: (N, L) float32 each."""

    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def teacher_logits(teacher: str, examples: Callable[[], Sequence[Example]], windows: Windows, student_tokenizer,
                   settings: WindowSettings, batch_size: int = 64, autocast_dtype=None, show: bool = True,
                   trust_remote_code: bool = False, cache_dir=None) -> TeacherLogits:
    """The teacher's logits for the student's training windows (cached under teacher + windows).

    `examples()` gives the examples behind the windows; it is called only when the teacher tokenizes
    differently and must read its own windows of them."""
    teacher_tokenizer = load_tokenizer(teacher, trust_remote_code)
    alike = fingerprint_tokenizer(teacher_tokenizer) == fingerprint_tokenizer(student_tokenizer)
    final = cache_folder("teacher", [TEACHER_FORMAT, _model_fingerprint(teacher), _windows_fingerprint(windows),
                                     alike, asdict(settings)], cache_dir)
    if not is_cached(final):
        model = load_reader_model(teacher, trust_remote_code)
        if alike:  # the student's own windows: the logits as they are
            read, label = windows, "teacher logits"
        else:
            read, label = build_windows(examples(), teacher_tokenizer, settings), "teacher logits (own windows)"
        bar = progress_bar(f"{label} ({len(read):,} windows)", len(read), enabled=show, unit="win")
        try:
            start, end = compute_logits(model, read, batch_size, autocast_dtype=autocast_dtype, on_batch=bar.advance)
        finally:
            bar.close()
        if not alike:
            start, end = map_to_student(read, start, end, windows)
        write_cache(final, TeacherLogits, iter([TeacherLogits(start.astype(np.float32), end.astype(np.float32))]))
    return open_cache(final, TeacherLogits)


def map_to_student(teacher: Windows, t_start: np.ndarray, t_end: np.ndarray, student: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits on the teacher's windows -> logits on the student's windows, through characters."""
    n, length = student.input_ids.shape
    start = np.full((n, length), NO_LOGIT, dtype=np.float32)
    end = np.full((n, length), NO_LOGIT, dtype=np.float32)
    t_offsets, s_offsets = np.asarray(teacher.offsets), np.asarray(student.offsets)
    t_windows = _windows_by_example(np.asarray(teacher.example_index))
    s_windows = _windows_by_example(np.asarray(student.example_index))
    for example, s_rows in s_windows.items():
        t_rows = t_windows.get(example, np.zeros(0, dtype=np.int64))
        # character -> logit of the teacher token starting (ending) there, from its max-context window
        keep = np.asarray(teacher.max_context)[t_rows] & (t_offsets[t_rows, :, 0] >= 0)
        w, t = np.nonzero(keep)
        chars = int(max(t_offsets[t_rows, :, 1].max(initial=0), s_offsets[s_rows, :, 1].max(initial=0))) + 1
        by_start = np.full(chars, NO_LOGIT, dtype=np.float32)
        by_end = np.full(chars, NO_LOGIT, dtype=np.float32)
        by_start[t_offsets[t_rows[w], t, 0]] = t_start[t_rows[w], t]
        by_end[t_offsets[t_rows[w], t, 1] - 1] = t_end[t_rows[w], t]
        for row in s_rows:
            inside = s_offsets[row, :, 0] >= 0
            start[row, inside] = by_start[s_offsets[row, inside, 0]]
            end[row, inside] = by_end[s_offsets[row, inside, 1] - 1]
            if len(t_rows):  # the null logit of the teacher window that overlaps this one most
                best = t_rows[int(np.argmax([_overlap(s_offsets[row], t_offsets[r]) for r in t_rows]))]
                cls, t_cls = int(student.cls_index[row]), int(teacher.cls_index[best])
                start[row, cls], end[row, cls] = t_start[best, t_cls], t_end[best, t_cls]
    return start, end


def _windows_by_example(example_index: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(example_index, kind="stable")
    examples, first = np.unique(example_index[order], return_index=True)
    return {int(e): rows for e, rows in zip(examples, np.split(order, first[1:]))}


def _overlap(a: np.ndarray, b: np.ndarray) -> int:
    """Characters of the context that two windows (their (L, 2) offsets) both cover."""
    a, b = a[a[:, 0] >= 0], b[b[:, 0] >= 0]
    if not len(a) or not len(b):
        return 0
    return max(0, int(min(a[:, 1].max(), b[:, 1].max()) - max(a[:, 0].min(), b[:, 0].min())))


def _model_fingerprint(name: str) -> str:
    """The teacher's identity: its weights' bytes (a local folder) or its name (a hub id)."""
    folder = Path(resolve_model(name))
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.onnx"))
    return hashlib.sha256("".join(file_sha256(w) for w in weights).encode() or name.encode()).hexdigest()


def _windows_fingerprint(windows: Windows) -> str:
    h = hashlib.sha256()
    for array in (windows.input_ids, windows.attention_mask, windows.offsets):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
