"""`spanqa chat`: ask many questions about a passage (or a collection) in an interactive loop."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape

from spanqa.qa.reader import Reader

HELP = """Type a question and press Enter. Commands:
  :load FILE     read a new passage from FILE
  :context TEXT  use TEXT as the passage
  :show          print the current passage
  :help          this text
  :quit          leave (Ctrl-D too)"""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """Character range of the sentence(s) holding text[start:end]."""
    lo = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start)), default=0)
    hi = next((m.start() for m in _SENTENCE_END.finditer(text, end)), len(text))
    return lo, hi


def highlight(text: str, start: int, end: int) -> str:
    """Rich markup: the answer's sentence with the answer in bold on yellow."""
    lo, hi = sentence_bounds(text, start, end)
    return (("…" if lo > 0 else "") + escape(text[lo:start]) + "[bold black on yellow]" + escape(text[start:end])
            + "[/]" + escape(text[end:hi]) + ("…" if hi < len(text) else ""))


def chat(reader: Reader, lines: Iterator[str], console: Console, context: str = "",
         ask_collection: Callable[[str], list] | None = None, top_k: int = 1) -> None:
    """Answer each question line about `context` (or the collection) until :quit or the input ends."""
    console.print(HELP, highlight=False)
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        command, _, arg = line.partition(" ")
        if command in (":quit", ":q", ":exit"):
            break
        if command == ":help":
            console.print(HELP, highlight=False)
        elif command == ":load":
            path = Path(arg.strip()).expanduser()
            if not path.is_file():
                console.print(f"[red]no such file:[/] {escape(str(path))}")
                continue
            try:
                context = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                console.print(f"[red]not UTF-8 text[/] (byte {e.start}): {escape(str(path))}; convert it first")
                continue
            console.print(f"loaded {len(context):,} characters from {escape(str(path))}")
        elif command == ":context":
            context = arg.strip()
            console.print(f"passage set ({len(context):,} characters)")
        elif command == ":show":
            console.print(escape(context) if context else "(no passage yet)")
        elif ask_collection is not None:
            answers = ask_collection(line)
            if not answers:
                console.print("(no answer in the collection)")
            for a in answers:
                console.print(f"{highlight(a.passage, a.passage_start, a.passage_end)}\n"
                              f"  [dim]score {a.score:.3f} · {escape(a.source())}[/]")
        elif not context.strip():
            console.print("no passage yet: give one with :load FILE or :context TEXT")
        else:  # the reader keeps the passage's tokens between questions: tokenized once per passage
            _print_answers(console, context, reader.answer(line, context, top_k=top_k))
    console.print("bye")


def _print_answers(console: Console, context: str, answers: list) -> None:
    if not answers or answers[0].start < 0:
        console.print("(no answer in this passage)")
        return
    for a in answers:
        console.print(f"{highlight(context, a.start, a.end)}\n  [dim]answer: {escape(a.text)} · score {a.score:.3f}[/]")
