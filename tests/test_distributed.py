"""Data-parallel training: 2 CPU processes with the gloo backend under torchrun, unchanged code."""

import json
import os
import subprocess
import sys

import pytest
from conftest import write_people


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path, tiny_model):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "spanqa",
           "train", "--model", str(tiny_model), "--train-file", str(write_people(tmp_path / "t.json", 24)),
           "--dev-file", str(write_people(tmp_path / "d.json", 4, offset=80)), "--output-dir", str(out),
           "--max-steps", "6", "--batch-size", "4", "--max-seq-length", "64", "--doc-stride", "16",
           "--max-query-length", "16", "--learning-rate", "1e-3", "--save-steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    steps = [h for h in history if "training_loss" in h]
    assert steps[-1]["step"] == 6
    # each optimizer step consumed one batch per process: 2 x 4 windows
    assert (out / "model.safetensors").exists() and (out / "predictions.json").exists()
