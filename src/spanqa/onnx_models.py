"""Exported models at run time: ONNX Runtime sessions with the slice of the transformers interface
that the readers and classifiers use (`model(**inputs)` -> logits), so every reading path runs them.

Kept apart from `spanqa.export` (which builds these folders and needs the classifiers to detect
them), so that the readers can import this without an import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from spanqa.models import ModelError

ONNX_FILE = "model.onnx"
OUTPUTS = ("start_logits", "end_logits")
CLASSIFIER_OUTPUTS = ("logits",)


class _OnnxModel:
    """The slice of a transformers model's interface that `compute_logits` uses, on ONNX Runtime (CPU)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(Path(folder) / ONNX_FILE), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {Path(folder) / ONNX_FILE}: {e}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.config = AutoConfig.from_pretrained(folder)
        self.path = Path(folder) / ONNX_FILE
        self.device = torch.device("cpu")

    def run(self, outputs: Sequence[str], inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        feeds = {k: v.numpy().astype(np.int64) for k, v in inputs.items() if k in self.input_names}
        return self.session.run(list(outputs), feeds)

    def eval(self):
        return self

    def to(self, device: torch.device):
        if torch.device(device).type != "cpu":
            raise ModelError("ONNX models run on CPU; load the torch folder for a GPU")
        return self


class OnnxQAModel(_OnnxModel):
    """An exported reader: `model(**inputs)` gives start and end logits, as a transformers QA model."""

    def __call__(self, **inputs: torch.Tensor):
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        start, end = self.run(OUTPUTS, inputs)
        return QuestionAnsweringModelOutput(start_logits=torch.from_numpy(start), end_logits=torch.from_numpy(end))


class OnnxClassifierModel(_OnnxModel):
    """An exported classifier: `model(**inputs)` gives the logits, as a transformers sequence-classification model."""

    def __call__(self, **inputs: torch.Tensor):
        from transformers.modeling_outputs import SequenceClassifierOutput

        [logits] = self.run(CLASSIFIER_OUTPUTS, inputs)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


INT8_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat"}


def onnx_precision(path: Path) -> str:
    """'int8' when the graph computes with integer kernels (`spanqa export`'s default), else 'fp32'."""
    import onnx

    return "int8" if any(n.op_type in INT8_OPS for n in onnx.load(str(path)).graph.node) else "fp32"


def describe_runtime(model, device: torch.device, autocast_dtype: torch.dtype | None) -> str:
    """Which reading path runs, in words, for start-up lines: 'ONNX Runtime int8 (cpu)', 'torch bf16 (cpu)',
    'torch bf16, compiled (cpu)'."""
    if isinstance(model, _OnnxModel):
        return f"ONNX Runtime {onnx_precision(model.path)} (cpu)"
    compiled = ", compiled" if hasattr(model, "_orig_mod") else ""  # torch.compile's wrapper
    return f"torch {'bf16' if autocast_dtype == torch.bfloat16 else 'fp32'}{compiled} ({device.type})"


def is_onnx_folder(path: str | Path) -> bool:
    return (Path(path) / ONNX_FILE).exists()


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
