"""Batches of model inputs from a table of token rows (QA windows, packed sequences, sentence pairs)."""

from __future__ import annotations

import numpy as np
import torch


def model_inputs(table, index: np.ndarray,
                 device: torch.device) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """Tensors for the windows at `index`, cut to the columns they use, and those columns (lo, hi)."""
    attention = table.attention_mask[index]
    used = np.nonzero(attention.any(axis=0))[0]
    lo, hi = int(used.min()), int(used.max()) + 1  # left or right padding: keep the used columns
    batch = {"input_ids": table.input_ids[index, lo:hi], "attention_mask": attention[:, lo:hi]}
    if table.token_type_ids is not None:
        batch["token_type_ids"] = table.token_type_ids[index, lo:hi]
    return {k: torch.from_numpy(np.ascontiguousarray(v).astype(np.int64)).to(device) for k, v in batch.items()}, (lo, hi)
