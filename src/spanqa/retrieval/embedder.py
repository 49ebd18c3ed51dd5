"""Dense passage and query vectors: mean-pooled sentence embeddings of a transformer encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from spanqa.models import DEFAULT_ENCODER, load_encoder, load_tokenizer, resolve_model
from spanqa.progress import progress_bar


class Embedder:
    """Sentence embeddings by mean pooling a transformer encoder (all-MiniLM-L6-v2 by default)."""

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 256, batch_size: int = 64):
        import torch

        path = resolve_model(name)
        local = Path(name).expanduser()
        # a local folder is recorded by its absolute path: the index is used from other working folders
        self.name = str(local.resolve()) if local.exists() else name
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = load_tokenizer(path)
        self.model = load_encoder(path).eval()
        self.torch = torch
        self.fingerprint = fingerprint(Path(path))

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """(N, dim) float32, unit length; longest texts first so batches carry little padding."""
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bar = progress_bar("embedding passages", len(texts), show_progress, "passages")
        with self.torch.inference_mode():
            for lo in range(0, len(texts), self.batch_size):
                index = order[lo:lo + self.batch_size]
                batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[index] = self.torch.nn.functional.normalize(pooled, dim=-1).numpy()
                bar.advance(len(index))
        bar.close()
        return out


def fingerprint(folder: Path) -> str:
    """sha256 of the model's weights file(s): the same name with other weights is a mismatch."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) if folder.exists() else []
    if not files:
        return "unknown"
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
