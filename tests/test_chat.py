"""`spanqa chat` driven through stdin; sentence highlighting."""

import subprocess
import sys

from test_reader import reader_folder

from spanqa.chat import highlight, sentence_bounds

TEXT = "The tower was finished in 1889. It was designed by Gustave Eiffel!\nIt is tall."


def test_sentence_bounds_and_highlight():
    start = TEXT.index("Gustave")
    assert TEXT[slice(*sentence_bounds(TEXT, start, start + 14))] == "It was designed by Gustave Eiffel!"
    assert TEXT[slice(*sentence_bounds(TEXT, 0, 3))] == "The tower was finished in 1889."
    assert highlight(TEXT, start, start + 14) == "…It was designed by [bold black on yellow]Gustave Eiffel[/]!…"


def test_chat_through_stdin(tiny_model, tmp_path):
    passage = tmp_path / "passage.txt"
    passage.write_text("Oslo is the capital of Norway. It is cold in winter.")
    script = "\n".join(["Who?", f":context {TEXT.replace(chr(10), ' ')}", "Who designed it?", ":load /no/such/file",
                        f":load {passage}", "What is the capital?", ":quit", "never read"]) + "\n"
    run = subprocess.run([sys.executable, "-m", "spanqa", "chat", reader_folder(tiny_model, tmp_path)],
                         input=script, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "no passage yet" in out and "passage set" in out and "no such file: /no/such/file" in out
    assert f"loaded 52 characters from {passage}" in out
    assert out.count("  answer: ") == 2 and out.rstrip().endswith("bye"), out
    second = out[out.index("loaded 52"):]
    shown = second.split("answer: ")[1].split(" · ")[0]
    assert shown in passage.read_text()  # the answer comes from the newly loaded passage
