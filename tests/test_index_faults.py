"""Fault injection for `spanqa index`: kill -9 at random points of building and saving an index (before
any filesystem operation on the index folder, before reading each document, before embedding), several
seeds. After each kill the folder holds the old index intact (same passages, vectors and search results)
or the complete new one; a clean re-run then gives what an uninterrupted run gives, and nothing a killed
run left is in the way or left over."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spanqa.cli import app
from spanqa.retrieval.index import Index

# The child runs `spanqa index` (or only a save: SAVE_ONLY) with kill points: each filesystem call on a path
# under the index folder, each document read, the embedding. At point number KILL_AT it sends itself
# SIGKILL (0: never; it then prints how many points it passed, which bounds the random choice).
HARNESS = r"""
import atexit, builtins, io, os, shutil, signal, sys
out, kill_at, args = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
import spanqa.retrieval.ingest as ingest
from spanqa.retrieval.embedder import Embedder
from spanqa.retrieval.index import Index
passed = 0

def point():
    global passed
    passed += 1
    if passed == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def under_out(*paths):
    return any(isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(out)
               for p in paths)

def watch(module, name, n_paths=1):
    real = getattr(module, name)
    def wrapped(*a, **kw):
        if under_out(*a[:n_paths]):
            point()
        return real(*a, **kw)
    setattr(module, name, wrapped)

for name in ("open", "mkdir", "unlink", "rmdir"):
    watch(os, name)
for name in ("rename", "replace"):
    watch(os, name, 2)
watch(shutil, "rmtree")
watch(builtins, "open")
watch(io, "open")
for module, name in ((ingest, "read_file"), (Embedder, "encode")):
    real_call = getattr(module, name)
    setattr(module, name, lambda *a, _real=real_call, **kw: (point(), _real(*a, **kw))[1])
atexit.register(lambda: print("points", passed, flush=True))
"""
CHILD = HARNESS + "from spanqa.cli import app\napp(args)\n"
SAVE_ONLY = HARNESS + "Index.load(args[0]).save(out)\n"  # no torch to import: fast enough to kill at every point


QUERIES = ["When do emperor penguins breed?", "Which volcano is active?", "How tall is the tower?"]
OLD = {"penguins.txt": "Emperor penguins breed in the Antarctic winter. The males keep the eggs warm on their feet.",
       "tower.md": "# The Eiffel Tower\n\nThe tower is 330 metres tall and was completed in 1889."}
NEW = {"volcano.txt": "Mount Etna is an active volcano on the east coast of Sicily.",
       "tea.txt": "Green tea is made from unoxidized leaves; black tea is fully oxidized."}


def child(out: Path, kill_at: int, args: list[str], cwd: Path, script: str = CHILD) -> tuple[int, int | None]:
    """(exit code: -9 when killed, points passed when it ran to the end)."""
    run = subprocess.run([sys.executable, "-c", script, str(out), str(kill_at), *args], capture_output=True,
                         text=True, timeout=300, cwd=cwd)
    assert run.returncode in (0, -9), run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    points = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("points ")]
    return run.returncode, points[0] if points else None


def assert_same(a: Index, b: Index) -> None:
    """The same passages, vectors (to float rounding: batches differ), settings, files and search results."""
    assert a.passages == b.passages
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    assert {k: v for k, v in a.meta.items() if k != "files"} == {k: v for k, v in b.meta.items() if k != "files"}
    assert {f: s["sha256"] for f, s in a.files().items()} == {f: s["sha256"] for f, s in b.files().items()}
    embedder = b.embedder()
    vectors = embedder.encode(QUERIES)
    for mode in ("bm25", "dense", "hybrid"):
        for x, y in zip(a.retrieve(QUERIES, vectors, 2, mode), b.retrieve(QUERIES, vectors, 2, mode)):
            assert [h.passage for h in x] == [h.passage for h in y], mode


def leftovers(out: Path) -> list[str]:
    current = (out / "CURRENT").read_text().strip()
    return sorted(set(os.listdir(out)) - {".lock", "CURRENT", current})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """The documents, the old index (OLD), and uninterrupted runs of the two commands the kills interrupt:
    `--add` of NEW to it, and a new index of OLD and NEW; how many kill points each passed."""
    tmp = tmp_path_factory.mktemp("faults")
    for folder, files in (("old", OLD), ("new", NEW)):
        (tmp / folder).mkdir()
        for name, text in files.items():
            (tmp / folder / name).write_text(text)
    result = CliRunner().invoke(app, ["index", str(tmp / "old"), "--out", str(tmp / "idx-old"),
                                      "--embedding-model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    commands = {"add": ["index", str(tmp / "new"), "--out", "{out}", "--add"],
                "build": ["index", str(tmp / "old"), str(tmp / "new"), "--out", "{out}", "--embedding-model",
                          str(tiny_model)]}
    points = {}
    for name, args in commands.items():
        out = tmp / f"idx-{name}"
        shutil.copytree(tmp / "idx-old", out)
        code, points[name] = child(out, 0, [a.format(out=out) for a in args], tmp)
        assert code == 0 and points[name] > 10
    old, added, built = (Index.load(tmp / f"idx-{n}") for n in ("old", "add", "build"))
    assert_same(added, built)  # one index, however it was reached
    return {"tmp": tmp, "old": old, "new": added, "commands": commands, "points": points}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_while_indexing_leaves_the_old_index_or_the_new(tmp_path, runs, seed):
    rng = random.Random(seed)
    out = tmp_path / "idx"
    shutil.copytree(runs["tmp"] / "idx-old", out)
    state = runs["old"]
    for name in ("add", "build"):  # a killed --add, then a killed rebuild over what it left
        at = rng.randint(1, runs["points"][name])
        code, _ = child(out, at, [a.format(out=out) for a in runs["commands"][name]], runs["tmp"])
        assert code == -9
        now = Index.load(out)  # never missing, never damaged
        try:
            assert_same(now, state)
        except AssertionError:
            assert_same(now, runs["new"])  # not the old one: then the complete new one
        state = now
    result = CliRunner().invoke(app, [a.format(out=out) for a in runs["commands"]["add"]])
    assert result.exit_code == 0, result.output  # nothing left in the way
    assert_same(Index.load(out), runs["new"])
    assert leftovers(out) == []


@pytest.mark.slow
def test_kill_9_at_every_point_of_a_save(tmp_path, runs):
    """A save of the new index over the old one, killed before each of its filesystem operations in turn:
    each time the old index or the new one, whole; then a save goes through and leaves nothing else."""
    source = runs["tmp"] / "idx-add"
    out = tmp_path / "idx"
    shutil.copytree(runs["tmp"] / "idx-old", out)
    code, total = child(out, 0, [str(source)], tmp_path, SAVE_ONLY)
    assert code == 0 and total > 10
    outcomes = []
    for at in range(1, total + 1):
        shutil.rmtree(out)
        shutil.copytree(runs["tmp"] / "idx-old", out)
        code, _ = child(out, at, [str(source)], tmp_path, SAVE_ONLY)
        assert code == -9
        now = Index.load(out)
        try:
            assert_same(now, runs["old"])
            outcomes.append("old")
        except AssertionError:
            assert_same(now, runs["new"])
            outcomes.append("new")
        runs["new"].save(out)
        assert_same(Index.load(out), runs["new"])
        assert leftovers(out) == []
    assert outcomes[0] == "old" and outcomes[-1] == "new" and outcomes == sorted(outcomes, key=["old", "new"].index)
