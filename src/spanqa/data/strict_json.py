"""JSON that cannot hurt: bounded nesting, finite numbers, integers within 64 bits, no lone surrogates.

Parsers pay per level of nesting: `json` recurses (a RecursionError), ijson (yajl) keeps a prefix string
per level, so a 200 KB file of `[` costs gigabytes (the square of the depth). The bytes are scanned before
a parser sees them (numpy, a few milliseconds per megabyte) and refused past `MAX_DEPTH` levels, so every
file costs memory and time in proportion to its size. yajl silently turns a lone surrogate escape
(`"\\ud800"`) into "?", and Python's `json` keeps it, to fail later in a tokenizer: both are refused here,
as are NaN/Infinity (not JSON) and numbers yajl cannot hold (integers beyond 64 bits, floats beyond a double).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

MAX_DEPTH = 100  # SQuAD needs 9 levels, GLUE/JSONL records 2-3
SLICE = 1 << 18  # bytes scanned at once (bounds the scan's own memory: ~12 MB)
_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD]([89abAB]|[c-fC-F])[0-9a-fA-F]{2})")
_LOW = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SPECIAL = bytes(b if b in b'"[\\]{}' else 0 for b in range(256))  # bytes.translate: all else to 0


class JsonProblem(ValueError):
    """What is wrong with a JSON text and where: a position (line, column) or a path in the value."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.line, self.column = line, column
        super().__init__(message)

    def where(self) -> str:
        if self.line is None:
            return ""
        return f"line {self.line}" + (f", column {self.column}" if self.column is not None else "")


class JsonScanner:
    """Nesting depth and surrogate escapes of a JSON text fed in consecutive chunks (strings, escapes
    and positions carried across chunks); `feed` raises `JsonProblem` at the first violation."""

    def __init__(self, max_depth: int = MAX_DEPTH):
        self.max_depth = max_depth
        self.depth = 0
        self.in_string = False
        self.backslashes = 0      # length of the run of backslashes that ended the last chunk
        self.offset = 0           # bytes fed so far
        self.newlines = 0         # newlines fed so far
        self.last_newline = -1    # offset of the last newline fed
        self.tail = b""           # the last bytes fed: an escape may straddle two chunks
        self.surrogates_done = 0  # offset up to which surrogate escapes were checked

    def feed(self, data: bytes, final: bool = False) -> None:
        self._surrogates(data, final)
        tail = (self.tail + data)[-12:]
        for lo in range(0, len(data), SLICE):
            self._depth(data[lo:lo + SLICE])
        self.tail = tail

    def _depth(self, chunk: bytes) -> None:
        """Depth over one slice, looking only at its quotes, backslashes and brackets (a few % of text)."""
        n = len(chunk)
        if not n:
            return
        a = np.frombuffer(chunk.translate(_SPECIAL), dtype=np.uint8)
        pos = np.flatnonzero(a)
        c = a[pos]
        k = np.arange(len(pos))
        bs = c == 92
        # a backslash run continues across positions p-1, p (and from the previous slice at p = 0)
        prev_bs = np.concatenate(([self.backslashes > 0], bs[:-1]))
        continuing = prev_bs & (np.diff(pos, prepend=-1) == 1)
        start = np.maximum.accumulate(np.where(bs & ~continuing, k, -1))
        run = np.where(bs, np.where(start >= 0, k - start + 1, k + 1 + self.backslashes), 0)  # run ending at k
        before = np.where(continuing, np.concatenate(([self.backslashes], run[:-1])), 0)  # odd: k is escaped
        quotes = (c == 34) & (before % 2 == 0)
        in_string = (np.cumsum(quotes) % 2).astype(bool) ^ self.in_string
        step = (((c == 91) | (c == 123)).astype(np.int32) - ((c == 93) | (c == 125))) * ~in_string
        depth = self.depth + np.cumsum(step)
        if len(pos) and depth.max() > self.max_depth:
            i = int(pos[np.argmax(depth > self.max_depth)])
            line, column = self._position(chunk, i)
            raise JsonProblem(f"nested more than {self.max_depth} levels deep (a record of this data needs "
                              "far fewer); is the file damaged?", line, column)
        if len(pos):
            self.depth = int(depth[-1])
            self.in_string = bool(in_string[-1])
        self.backslashes = int(run[-1]) if len(pos) and pos[-1] == n - 1 else 0
        self.newlines += chunk.count(b"\n")
        if b"\n" in chunk:
            self.last_newline = self.offset + chunk.rindex(b"\n")
        self.offset += n

    def _position(self, chunk: bytes, i: int) -> tuple[int, int]:
        line = self.newlines + chunk.count(b"\n", 0, i) + 1
        nl = chunk.rfind(b"\n", 0, i)
        column = i - nl if nl >= 0 else self.offset + i - self.last_newline
        return line, column

    def _surrogates(self, data: bytes, final: bool) -> None:
        buf = self.tail + data
        if b"\\u" not in buf or not _MAYBE_SURROGATE.search(buf):
            return
        base = self.offset - len(self.tail)
        for m in _SURROGATE.finditer(buf):
            p = m.start(1)
            if base + p < self.surrogates_done:
                continue
            if m.group(2) in b"89abAB":  # a high surrogate must be followed by a low one
                if p + 12 > len(buf) and not final:
                    return  # decided with the next chunk (these bytes stay in the tail)
                if _LOW.match(buf, p + 6):
                    self.surrogates_done = base + p + 12
                    continue
            line = self.newlines - self.tail.count(b"\n") + buf.count(b"\n", 0, p) + 1
            code = m.group(1).decode("ascii")
            raise JsonProblem(f"invalid Unicode escape '{code}' (half of a surrogate pair); the text was "
                              "damaged or cut in the middle of a character", line)

    def finish(self) -> None:
        self.feed(b"", final=True)


def check_bytes(data: bytes, max_depth: int = MAX_DEPTH) -> None:
    """`JsonProblem` if a complete JSON text is nested too deeply or has a lone surrogate escape; cheap for
    ordinary records (a count of brackets, a search for surrogate escapes)."""
    deep = data.count(b"[") + data.count(b"{") > max_depth
    if deep or (b"\\u" in data and _MAYBE_SURROGATE.search(data)):
        scanner = JsonScanner(max_depth)
        scanner.feed(data, final=True)


def loads(text: str) -> Any:
    """`json.loads` that refuses NaN/Infinity, numbers beyond a double and integers beyond 64 bits
    (`JsonProblem` naming the value's path, e.g. data[0].paragraphs[2].qas[1].answers[0].answer_start),
    and reports syntax errors with line and column. Check nesting first (`check_bytes`/`JsonScanner`)."""
    try:
        return json.loads(text, parse_constant=_refuse, parse_int=_int64, parse_float=_finite)
    except _BadNumber:
        value = json.loads(text, parse_constant=_Bad, parse_int=_Bad.int, parse_float=_Bad.float)
        path, bad = _find_bad(value, "")
        raise JsonProblem(f"{path or 'the value'}: {bad.why}") from None
    except json.JSONDecodeError as e:
        raise JsonProblem(f"invalid JSON: {e.msg}", e.lineno, e.colno) from None
    except RecursionError:  # only without a depth check first
        raise JsonProblem(f"nested too deeply (more than {MAX_DEPTH} levels)") from None


class _BadNumber(ValueError):
    pass


def _refuse(text: str):
    raise _BadNumber(text)


def _int64(text: str) -> int:
    if len(text) > 20:
        raise _BadNumber(text)
    value = int(text)
    if not -2 ** 63 <= value < 2 ** 63:
        raise _BadNumber(text)
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(text)
    return value


class _Bad:
    """A number spanqa refuses, kept in the value so that its path can be named."""

    def __init__(self, text: str, why: str | None = None):
        self.text = text
        self.why = why or f"{text} is not JSON (JSON has no NaN or Infinity); write null or a number"

    @classmethod
    def int(cls, text: str):
        try:
            return _int64(text)
        except _BadNumber:
            shown = text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"
            return cls(text, f"integer {shown} does not fit in 64 bits")

    @classmethod
    def float(cls, text: str):
        try:
            return _finite(text)
        except _BadNumber:
            return cls(text, f"number {text[:30]} is beyond the range of a double")


def _find_bad(value: Any, path: str) -> tuple[str, _Bad] | tuple[None, None]:
    if isinstance(value, _Bad):
        return path, value
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None, None
    for p, v in items:
        found = _find_bad(v, p)
        if found[0] is not None:
            return found
    return None, None
