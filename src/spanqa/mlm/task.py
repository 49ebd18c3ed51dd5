"""Masked-LM pretraining on raw text: the second task of the training engine.

Domain-adaptive pretraining continues an existing encoder (`--model`, BioBERT's recipe); from-scratch
pretraining builds a new BERT of a named size for a WordPiece tokenizer trained with `spanqa tokenizer
train`. Rows are packed sequences from the corpus cache; the last `valid_fraction` of them is held out
(never trained on) and reports MLM loss, masked-token accuracy and perplexity at every evaluation.
The output is an HF masked-LM folder that `spanqa train --model` fine-tunes into a reader.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spanqa.data.batches import model_inputs
from spanqa.data.documents import CollectionError
from spanqa.files import atomic_write_json
from spanqa.mlm.corpus import Sequences, packed_sequences
from spanqa.mlm.masking import IGNORE, mask_rows
from spanqa.models import (BERT_SIZES, SETTINGS_FILE, ModelError, has_qa_head, load_mlm_model, load_tokenizer,
                           max_positions, new_bert_mlm)
from spanqa.progress import progress_bar
from spanqa.training.config import ConfigError, LoopConfig, layered_config
from spanqa.training.engine import run

EVAL_EPOCH = 2**32 - 1  # held-out rows are masked as if in this (never reached) epoch: the same masks every time


@dataclass
class PretrainConfig(LoopConfig):
    """A masked-LM pretraining run; `spanqa pretrain --help` documents each flag."""

    corpus: list[str] = field(default_factory=list)  # files or folders: .txt .md .json(.gz) .jsonl .pdf
    text_field: str = "text"            # the text field of .json/.jsonl records
    from_scratch: bool = False          # a new BERT of `size` for `tokenizer` instead of continuing `model`
    size: str = "mini"                  # from scratch: tiny | mini | small | medium (see models.BERT_SIZES)
    pre_ln: bool = False                # from scratch: LayerNorm before each sublayer
    tokenizer: str | None = None        # default: the model's own tokenizer
    max_seq_length: int = 128
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    valid_fraction: float = 0.05        # share of the packed sequences held out for evaluation
    max_valid_sequences: int = 2000     # at most this many of them (evaluation time)
    output_dir: str = "runs/mlm"
    epochs: float = 1.0
    learning_rate: float = 5e-5
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]
        if not self.corpus:
            raise ConfigError("give the corpus: files or folders of .txt/.md/.json/.jsonl/.pdf")
        if self.max_seq_length < 8:
            raise ConfigError("max_seq_length must be >= 8 for masked-LM sequences")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("mlm_probability must be in (0, 1)")
        if not 0 < self.valid_fraction < 1:
            raise ConfigError("valid_fraction must be in (0, 1)")
        if self.from_scratch and not self.tokenizer:
            raise ConfigError("--from-scratch needs --tokenizer DIR (train one with `spanqa tokenizer train`)")
        if self.size not in BERT_SIZES:
            raise ConfigError(f"size must be one of {', '.join(BERT_SIZES)}, not {self.size!r}")


def build_pretrain_config(recipe: str | None = None, config: str | None = None, **overrides) -> PretrainConfig:
    """Defaults < recipe < YAML config < explicit overrides (None means not given)."""
    return layered_config(PretrainConfig, recipe, config, **overrides)


def pretrain(config: PretrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Masked-LM training on `config.corpus`; writes an HF masked-LM folder; returns the final metrics."""
    return run(MLMTask(config), config, on_step)


class MLMTask:
    """Masked language modelling: packed sequences in, masked tokens predicted."""

    unit = "sequences"
    curve_metric = "masked_accuracy"

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.tokenizer = load_tokenizer(config.tokenizer or config.model, config.trust_remote_code)
        if self.tokenizer.mask_token_id is None:
            raise ModelError(f"{config.tokenizer or config.model}: the tokenizer has no mask token")
        if config.from_scratch:
            self.positions = 512
        else:
            if has_qa_head(config.model):
                warnings.warn(f"{config.model} is a QA reader: masked-LM training after QA fine-tuning is known to "
                              "destroy the reader (F1 42 -> 25 reported for COVID-QA). The documented flow is "
                              "pretrain the encoder -> fine-tune on SQuAD -> fine-tune on in-domain questions.",
                              stacklevel=2)
            self.positions = max_positions(config.model, config.trust_remote_code)
        if self.positions and config.max_seq_length > self.positions:
            raise ConfigError(f"max_seq_length {config.max_seq_length} is larger than the model allows "
                              f"({self.positions} positions)")
        self.special_ids = sorted(set(self.tokenizer.all_special_ids))

    def prepare(self, show: bool) -> None:
        config = self.config
        bar = progress_bar(f"packing {', '.join(Path(p).name for p in config.corpus)}", None, enabled=show, unit="doc")
        try:
            table, self.corpus_stats = packed_sequences(config.corpus, self.tokenizer, config.max_seq_length,
                                                        config.text_field, on_document=bar.advance)
        finally:
            bar.close()
        n_valid = min(max(1, math.ceil(len(table) * config.valid_fraction)), config.max_valid_sequences)
        n_train = len(table) - n_valid
        if n_train < config.batch_size:
            raise CollectionError(f"{', '.join(config.corpus)}: {len(table)} sequences of {config.max_seq_length} "
                                  f"tokens, {n_train} after holding out {n_valid} for evaluation: fewer than one "
                                  f"batch ({config.batch_size}); add text or lower --batch-size/--max-seq-length")
        # the held-out slice is the end of the corpus: contiguous, so mostly whole documents never trained on
        self.train_rows = _slice(table, 0, n_train)
        self.valid_rows = _slice(table, n_train, len(table))

    def lengths(self) -> np.ndarray:
        return np.asarray(self.train_rows.attention_mask).sum(axis=1)

    def build_model(self) -> torch.nn.Module:
        config = self.config
        if config.from_scratch:
            return new_bert_mlm(config.size, self.tokenizer, self.positions, config.pre_ln)
        model = load_mlm_model(config.model, config.trust_remote_code)
        if model.get_input_embeddings().num_embeddings < len(self.tokenizer):
            raise ModelError(f"the tokenizer has {len(self.tokenizer):,} tokens but {config.model} embeds only "
                             f"{model.get_input_embeddings().num_embeddings:,}; use the model's own tokenizer")
        return model

    def _masked(self, table: Sequences, rows: np.ndarray, device, epoch: int):
        inputs, (lo, hi) = model_inputs(table, rows, device)
        ids, labels = mask_rows(inputs["input_ids"].cpu().numpy(), np.asarray(table.word_start[rows, lo:hi]), rows,
                                self.special_ids, self.tokenizer.mask_token_id, len(self.tokenizer),
                                self.config.seed, epoch, self.config.mlm_probability, self.config.whole_word_mask)
        inputs["input_ids"] = torch.from_numpy(ids).to(device)
        return inputs, torch.from_numpy(labels).to(device)

    def loss(self, model, rows: np.ndarray, device, epoch: int) -> torch.Tensor:
        inputs, labels = self._masked(self.train_rows, np.sort(rows), device, epoch)
        return masked_lm_loss(model, inputs, labels)

    @torch.inference_mode()
    def evaluate(self, model, autocast_dtype) -> tuple[dict, None]:
        """MLM loss (mean over predicted tokens), masked-token accuracy and perplexity on the held-out rows."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total_loss, correct, predicted = 0.0, 0, 0
        n = len(self.valid_rows)
        for lo in range(0, n, self.config.eval_batch_size):
            rows = np.arange(lo, min(lo + self.config.eval_batch_size, n))
            inputs, labels = self._masked(self.valid_rows, rows, device, EVAL_EPOCH)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(**inputs).logits.float()
            keep = labels != IGNORE
            total_loss += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            correct += (logits[keep].argmax(-1) == labels[keep]).sum().item()
            predicted += int(keep.sum())
        model.train(was_training)
        loss = total_loss / max(predicted, 1)
        return {"valid_loss": loss, "masked_accuracy": correct / max(predicted, 1),
                "perplexity": math.exp(min(loss, 50.0))}, None

    def finish(self, model, out: Path, metrics: dict, evaluated: None) -> dict:
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        atomic_write_json(out / SETTINGS_FILE, {"task": "mlm", "training": self.config.to_dict(),
                                                "corpus": self.corpus_stats})
        return {"corpus_documents": self.corpus_stats["documents"], "corpus_tokens": self.corpus_stats["tokens"],
                "train_sequences": len(self.train_rows), "valid_sequences": len(self.valid_rows)}


def masked_lm_loss(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the masked tokens, with the vocabulary projection applied to those tokens only.

    HF's masked-LM models project every position onto the vocabulary (for MiniLM: 30,522 x 384 per
    token, about as much compute as the encoder itself at 128 tokens) and then ignore 85% of them. A
    wrapped (distributed) model must be called as a whole to keep its gradient hooks: it takes HF's path.
    """
    head = _mlm_head(model)
    if head is None:
        return model(**inputs, labels=labels).loss
    hidden = model.base_model(**inputs).last_hidden_state
    keep = labels != IGNORE
    return torch.nn.functional.cross_entropy(head(hidden[keep]).float(), labels[keep])


def _mlm_head(model) -> torch.nn.Module | None:
    """The vocabulary head of an unwrapped HF masked-LM model (`cls` for BERT, `lm_head` for RoBERTa)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None
    heads = [m for m in model.children() if m is not base]
    return heads[0] if len(heads) == 1 else None


def _slice(table: Sequences, lo: int, hi: int) -> Sequences:
    return Sequences(table.input_ids[lo:hi], table.attention_mask[lo:hi], table.word_start[lo:hi])
