"""The training engine itself: time budgets, duration parsing, the time-to-accuracy clock."""

import json
import time

import pytest

from conftest import write_people
from spanqa.qa.config import TrainConfig
from spanqa.qa.train import train
from spanqa.training.config import ConfigError, parse_duration
from spanqa.training.schedule import TimeBudget, linear_factor


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2h", 7200), ("45", 45),
                                           ("0.5m", 30), (12, 12.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "5 minutes", "m"])
def test_bad_durations(bad):
    with pytest.raises(ConfigError, match="time budget"):
        parse_duration(bad)


def test_schedule_warms_up_then_reaches_zero_at_the_end():
    assert [round(linear_factor(p, 0.1), 3) for p in (0, 0.05, 0.1, 0.55, 1.0, 1.2)] == [0, 0.5, 1, 0.5, 0, 0]
    budget = TimeBudget(100)
    assert budget.reserve() == 15 and budget.progress(84) < 1 and budget.progress(85) == 1
    budget.last_eval_seconds = 4
    assert budget.reserve() == 20 and budget.progress(40) == 0.5  # 1.25 * 4 + 15


def test_a_time_budget_ends_on_time_with_outputs_written(tmp_path, tiny_model):
    cfg = TrainConfig(model=str(tiny_model), train_file=str(write_people(tmp_path / "t.json", 24)),
                      dev_file=str(write_people(tmp_path / "d.json", 6, offset=100)), output_dir=str(tmp_path / "out"),
                      max_seq_length=64, doc_stride=16, max_query_length=16, batch_size=4, learning_rate=1e-3,
                      warmup_ratio=0.1, epochs=1, time_budget="30s", log_steps=1, save_steps=10, eval_steps=10,
                      precision="fp32")
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    steps = [h for h in history if "learning_rate" in h]
    assert metrics["steps"] > 2 * 48 / 4  # epochs=1 is ignored: it trains until the budget is used
    assert metrics["run_seconds"] < 30.0  # ended, evaluated and written within the budget
    assert wall < 30.0 + 30.0  # + set-up (model, windows, accelerate), which the budget does not count
    assert steps[-1]["learning_rate"] < 0.1 * max(h["learning_rate"] for h in steps)  # decayed to ~0
    evals = [h for h in history if "f1" in h]
    assert all(0 < h["train_seconds"] <= h["elapsed"] for h in evals)
    for name in ("model.safetensors", "metrics.json", "learning_curve.png", "time_to_accuracy.png"):
        assert (tmp_path / "out" / name).exists(), name


def test_the_time_to_accuracy_clock_excludes_every_evaluation_the_final_one_included(tmp_path, tiny_model):
    cfg = TrainConfig(model=str(tiny_model), train_file=str(write_people(tmp_path / "t.json", 24)),
                      dev_file=str(write_people(tmp_path / "d.json", 6, offset=100)), output_dir=str(tmp_path / "out"),
                      max_seq_length=64, doc_stride=16, max_query_length=16, batch_size=4, max_steps=5, epochs=0,
                      eval_steps=2, precision="fp32")
    metrics = train(cfg)
    evals = [h for h in json.loads((tmp_path / "out" / "history.json").read_text()) if "f1" in h]
    assert [h["step"] for h in evals] == [2, 4, 5]  # the last one after the loop
    assert all(a["train_seconds"] < b["train_seconds"] for a, b in zip(evals, evals[1:]))
    training_only = metrics["train_seconds"] - metrics["eval_seconds_while_training"]
    assert evals[-1]["train_seconds"] == pytest.approx(training_only, abs=1e-6)
    assert evals[-1]["elapsed"] == pytest.approx(metrics["train_seconds"] + evals[-1]["eval_seconds"], abs=1e-6)


def test_resuming_a_finished_run_evaluates_and_writes_it_again(tmp_path, tiny_model):
    """What `spanqa quickstart` (./run.sh) does when run a second time."""
    cfg = TrainConfig(model=str(tiny_model), train_file=str(write_people(tmp_path / "t.json", 8)),
                      dev_file=str(write_people(tmp_path / "d.json", 4, offset=100)), output_dir=str(tmp_path / "out"),
                      max_seq_length=64, doc_stride=16, max_query_length=16, batch_size=4, max_steps=4, epochs=0,
                      save_steps=2, precision="fp32")
    first = train(cfg)
    with pytest.raises(ConfigError, match="earlier run"):
        train(cfg)  # a new run may not silently replace it
    cfg.resume = True
    again = train(cfg)
    assert again["steps"] == first["steps"] == 4 and again["f1"] == pytest.approx(first["f1"])
