"""How a classifier turns token vectors into one sentence vector: BERT's [CLS] pooler, or the mean of
the token vectors.

Sentence-transformers encoders (the packaged all-MiniLM-L6-v2 among them, see its 1_Pooling folder)
were trained to mean-pool: their [CLS] vector and pooler took no part in that training. transformers'
sequence classifiers only pool [CLS], so mean pooling is put in their pooler's place here: the model
stays the stock HF class (training engine, checkpoints, ONNX export and serving see an ordinary
model), its pooler computes the masked mean instead, and `spanqa.json` records which pooling a
classifier was trained with. Which one is better is a measurement per task (BENCHMARKS.md, GLUE).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spanqa.models import ModelError

POOLINGS = ("cls", "mean")


class MeanPooler(torch.nn.Module):
    """The mean of the token vectors that the attention mask keeps, [CLS] and [SEP] included (as
    sentence-transformers pools). The mask arrives through a hook on the encoder (`use_pooling`):
    transformers calls a pooler with the token vectors only."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = (torch.ones(hidden_states.shape[:2], device=hidden_states.device) if self.mask is None
                else self.mask).unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def encoder_pooling(folder: str) -> str:
    """The pooling an encoder folder was trained for: "mean" for a sentence-transformers BERT whose Pooling
    module mean-pools (its modules.json and 1_Pooling/config.json, as the packaged MiniLM ships), else "cls".
    BERT only: the other families' classifiers read [CLS] in their own heads, with no pooler to replace."""
    root = Path(folder)
    try:
        modules = json.loads((root / "modules.json").read_text())
        if json.loads((root / "config.json").read_text()).get("model_type") != "bert":
            return "cls"
        pooling = next(m for m in modules if m.get("type", "").endswith(".Pooling"))
        mode = json.loads((root / pooling.get("path", "") / "config.json").read_text())
    except (OSError, ValueError, StopIteration):  # not a sentence-transformers folder (or not a folder)
        return "cls"
    means = mode.get("pooling_mode_mean_tokens") and not any(
        mode.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"))
    return "mean" if means else "cls"


def use_pooling(model: torch.nn.Module, pooling: str) -> torch.nn.Module:
    """`model` (a sequence classifier, changed in place) pooling as `pooling` says ("cls": as it is)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if pooling == "cls":
        return model
    base = model.base_model
    if not isinstance(getattr(base, "pooler", None), torch.nn.Module):
        raise ModelError(f"{type(model).__name__} classifies from its own head, without a pooler to replace: "
                         "--pooling mean works with BERT-style models; use --pooling cls")
    pooler = base.pooler = MeanPooler()

    def keep_mask(module, args, kwargs):
        pooler.mask = kwargs.get("attention_mask")

    base.register_forward_pre_hook(keep_mask, with_kwargs=True)
    return model
