"""Checkpoints: checksums checked on resume, the last K kept with a fall back to the one before, settings
compared on resume, an earlier run protected, history after a resume equal to an uninterrupted run's,
and what killed runs leave behind cleaned up."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import write_people
from safetensors.numpy import load_file

from spanqa.qa.config import TrainConfig
from spanqa.qa.train import train
from spanqa.training.checkpoints import CheckpointWarning, checkpoint_folders
from spanqa.training.config import ConfigError

TIMING = {"elapsed", "eval_seconds", "train_seconds", "windows_per_s"}


def config(tmp_path: Path, model: Path, **kw) -> TrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train_file = tmp_path / "train.json"
    if not train_file.exists():
        write_people(train_file, 24)
    base = dict(model=str(model), train_file=str(train_file), dev_file=str(write_people(tmp_path / "dev.json", 4, 100)),
                output_dir=str(tmp_path / "out"), max_seq_length=64, doc_stride=16, max_query_length=16,
                batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, max_steps=8, epochs=0, log_steps=3,
                save_steps=2, eval_batch_size=16, precision="fp32")
    return TrainConfig(**{**base, **kw})


def interrupted_at(cfg: TrainConfig, step: int) -> None:
    def stop(s):
        if s == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=stop)


def weights(cfg: TrainConfig) -> dict:
    return load_file(str(Path(cfg.output_dir) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def assert_same_history(a: TrainConfig, b: TrainConfig) -> None:
    """history.json of both runs: the same entries and values, timings aside."""
    ha, hb = (json.loads((Path(c.output_dir) / "history.json").read_text()) for c in (a, b))
    assert len(ha) == len(hb)
    for x, y in zip(ha, hb):
        assert x.keys() == y.keys()
        for k in x.keys() - TIMING:
            assert x[k] == pytest.approx(y[k], abs=1e-7), (k, x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model):
    cfg = config(tmp_path_factory.mktemp("full"), tiny_model)
    train(cfg)
    return cfg


def test_history_after_a_resume_equals_an_uninterrupted_runs(tmp_path, tiny_model):
    # losses logged every 3 steps, checkpoints every 4: the log of step 6 averages steps 4-6, and step 4
    # came before the checkpoint the resumed run starts from
    cfg = config(tmp_path, tiny_model, save_steps=4)
    full = config(tmp_path / "full", tiny_model, save_steps=4)
    train(full)
    interrupted_at(cfg, 6)
    train(config(tmp_path, tiny_model, save_steps=4, resume=True))
    assert_same_history(full, cfg)
    assert_same_weights(weights(full), weights(cfg))


def test_the_last_k_checkpoints_are_kept_and_a_damaged_one_falls_back(tmp_path, tiny_model, uninterrupted):
    assert [p.name for p in checkpoint_folders(Path(uninterrupted.output_dir))] == ["checkpoint-8", "checkpoint-6"]
    cfg = config(tmp_path, tiny_model)
    interrupted_at(cfg, 7)
    latest = Path(cfg.output_dir) / "checkpoints" / "checkpoint-6" / "model.safetensors"
    data = bytearray(latest.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the weights
    latest.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match=r"checkpoint-6/model.safetensors: damaged.*resuming from .*checkpoint-4"):
        train(config(tmp_path, tiny_model, resume=True))
    assert_same_weights(weights(uninterrupted), weights(cfg))


def test_no_intact_checkpoint_is_refused_naming_the_files(tmp_path, tiny_model):
    cfg = config(tmp_path, tiny_model, max_steps=4)
    train(cfg)
    for folder in checkpoint_folders(Path(cfg.output_dir)):
        (folder / "training_state.pt").write_bytes(b"\0" * 100)
    with pytest.raises(ConfigError, match=r"(?s)checkpoint-4/training_state.pt: damaged.*checkpoint-2/training_state"
                                          r".pt: damaged.*--force"):
        train(config(tmp_path, tiny_model, max_steps=4, resume=True))


def test_a_resume_with_other_settings_is_refused_unless_forced(tmp_path, tiny_model):
    cfg = config(tmp_path, tiny_model)
    interrupted_at(cfg, 3)
    with pytest.raises(ConfigError, match=r"(?s)max_steps: 8 -> 12.*seed: 42 -> 7"):
        train(config(tmp_path, tiny_model, resume=True, seed=7, max_steps=12))
    moved = tmp_path / "elsewhere" / "train.json"  # the same data at another path: the same run
    moved.parent.mkdir()
    moved.write_bytes(Path(cfg.train_file).read_bytes())
    write_people(Path(cfg.train_file), 23)  # and other data under the old name: another run
    with pytest.raises(ConfigError, match=r"train_file: .*train.json \(sha256 \w+\) -> .*train.json \(sha256"):
        train(config(tmp_path, tiny_model, resume=True))
    with pytest.warns(CheckpointWarning, match="other settings .*--force.*train_file"):
        train(config(tmp_path, tiny_model, resume=True, force=True))
    # the forced resume recorded the new settings: resuming with them again is no change
    train(config(tmp_path, tiny_model, resume=True, train_file=str(Path(cfg.train_file))))
    with pytest.raises(ConfigError, match="train_file"):
        train(config(tmp_path, tiny_model, resume=True, train_file=str(moved)))


def test_a_new_run_does_not_delete_an_earlier_runs_checkpoints(tmp_path, tiny_model):
    cfg = config(tmp_path, tiny_model, max_steps=2)
    train(cfg)
    kept = checkpoint_folders(Path(cfg.output_dir))
    with pytest.raises(ConfigError, match="holds the checkpoints of an earlier run.*--resume.*--force"):
        train(cfg)
    assert checkpoint_folders(Path(cfg.output_dir)) == kept and all(p.exists() for p in kept)
    stale = Path(cfg.output_dir) / "checkpoints" / ".tmp-checkpoint-99"  # what a kill during a save leaves
    stale.mkdir()
    train(config(tmp_path, tiny_model, max_steps=2, force=True, seed=3))
    assert not stale.exists()


def test_files_get_the_mode_of_a_plain_file_and_killed_writers_leftovers_go(tmp_path):
    from spanqa.files import atomic_write_json, umask

    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask()
    os.chmod(path, 0o640)
    atomic_write_json(path, {"a": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its mode, as open() does
    dead = dead_pid()
    leftover = tmp_path / f".x.json.tmp{dead}.abcd.tmp"
    mine = tmp_path / f".x.json.tmp{os.getpid()}.efgh.tmp"
    leftover.write_text("half")
    mine.write_text("being written")
    atomic_write_json(path, {"a": 3})
    assert not leftover.exists() and mine.exists()


def test_a_resume_with_nothing_left_to_train_removes_what_a_killed_write_left(tmp_path, tiny_model):
    """A run killed while writing latest.json after its last checkpoint (or model.safetensors, which
    safetensors writes through a `.tmpXXXXXX` of its own): the resume trains no step and writes no
    checkpoint, so no later write of that file cleans its temporary; the resume itself must."""
    cfg = config(tmp_path, tiny_model)
    train(cfg)
    dead = dead_pid()
    leftovers = [Path(cfg.output_dir) / "checkpoints" / f".latest.json.tmp{dead}.k1ll3d_0.tmp",
                 Path(cfg.output_dir) / f".metrics.json.tmp{dead}.k1ll3d_1.tmp",
                 Path(cfg.output_dir) / ".tmpPzPuv3", Path(cfg.output_dir) / "checkpoints" / ".tmpK1ll3d"]
    mine = Path(cfg.output_dir) / f".other.json.tmp{os.getpid()}.alive000.tmp"  # a live writer's: kept
    for p in [*leftovers, mine]:
        p.write_text("half")
    train(config(tmp_path, tiny_model, resume=True))
    assert not [p for p in leftovers if p.exists()] and mine.exists()


def test_a_killed_cache_writer_leaves_nothing_behind(tmp_path):
    from spanqa.data.cache import is_cached, write_cache

    @dataclass
    class Table:
        x: np.ndarray

        def __len__(self):
            return len(self.x)

    dead, alive = tmp_path / f"0a1b.tmp{dead_pid()}", tmp_path / f"0a1c.tmp{os.getppid()}"
    dead.mkdir()
    alive.mkdir()
    write_cache(tmp_path / "0a1d", Table, iter([Table(np.zeros((2, 3)))]))
    assert is_cached(tmp_path / "0a1d") and not dead.exists() and alive.exists()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


KILLER = """
import json, sys
from spanqa.qa.config import TrainConfig
from spanqa.qa.train import train
train(TrainConfig(**json.loads(sys.argv[1])), on_step=lambda step: print(step, flush=True))
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_point_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model, uninterrupted, seed):
    """kill -9 after a random step, a random fraction of a second in (inside a save, a log, a step), then
    --resume: the same weights and history as a run never stopped, and no temporary folder left."""
    import random
    import signal
    import time
    from dataclasses import asdict

    rng = random.Random(seed)
    cfg = config(tmp_path, tiny_model)
    child = subprocess.Popen([sys.executable, "-c", KILLER, json.dumps(asdict(cfg))], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    target = rng.randint(1, 7)
    for line in child.stdout:
        if int(line) >= target:
            time.sleep(rng.uniform(0, 0.3))
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    train(config(tmp_path, tiny_model, resume=True))
    assert_same_weights(weights(uninterrupted), weights(cfg))
    assert_same_history(uninterrupted, cfg)
    assert not [p for p in Path(cfg.output_dir).rglob("*") if ".tmp" in p.name]
