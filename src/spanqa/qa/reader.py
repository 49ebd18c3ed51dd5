"""The one inference path: examples -> windows -> model logits -> shared decoder -> answers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from spanqa.data.batches import model_inputs
from spanqa.onnx_models import OnnxQAModel, is_onnx_folder
from spanqa.models import (
    SETTINGS_FILE,
    ModelError,
    compiled_for_reading,
    default_device,
    for_inference,
    load_reader_model,
    load_tokenizer,
    resolve_model,
)
from spanqa.qa.calibration import Calibration
from spanqa.qa.decode import Answer, DecodeSettings, Prediction, decode, rescore
from spanqa.qa.squad import Example
from spanqa.qa.windows import WindowEncoder, Windows, WindowSettings, check_settings


@torch.inference_mode()
def compute_logits(model, windows: Windows, batch_size: int = 64, device: torch.device | None = None,
                   autocast_dtype: torch.dtype | None = None,
                   on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits (N, L) for all windows, batched by similar length to waste no padding."""
    device = device or getattr(model, "device", None) or next(model.parameters()).device  # ONNX models: .device
    n, length = windows.input_ids.shape
    start = np.full((n, length), -1e4, dtype=np.float32)
    end = np.full((n, length), -1e4, dtype=np.float32)
    order = np.argsort(-np.asarray(windows.attention_mask).sum(axis=1), kind="stable")
    model.eval()
    for lo in range(0, n, batch_size):
        index = np.sort(order[lo:lo + batch_size])
        inputs, (c0, c1) = model_inputs(windows, index, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(**inputs)
        start[index, c0:c1] = out.start_logits.float().cpu().numpy()
        end[index, c0:c1] = out.end_logits.float().cpu().numpy()
        if on_batch:
            on_batch(len(index))
    return start, end


@dataclass
class ReaderSettings:
    """What a trained reader folder records for inference (spanqa.json)."""

    windows: WindowSettings = WindowSettings()
    decoding: DecodeSettings = DecodeSettings()
    calibration: Calibration | None = None  # `spanqa evaluate --calibrate`: scores become P(answer is right)

    @staticmethod
    def read(folder: str | Path) -> "ReaderSettings":
        path = Path(folder) / SETTINGS_FILE
        if not path.exists():
            return ReaderSettings()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            calibration = Calibration.from_dict(data["calibration"]) if data.get("calibration") else None
            return ReaderSettings(WindowSettings(**data.get("windows", {})), DecodeSettings(**data.get("decoding", {})),
                                  calibration)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise ModelError(f"{path}: damaged reader settings ({type(e).__name__}: {str(e)[:200]}); copy the "
                             "folder again, or delete the file to use the default settings") from None

    def to_dict(self) -> dict:
        out = {"windows": asdict(self.windows), "decoding": asdict(self.decoding)}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out


class Reader:
    """An extractive QA model with its tokenizer and decoding settings.

    >>> reader = Reader.load("runs/quick")
    >>> reader.answer("Who designed it?", "It was designed by Gustave Eiffel.")[0].text
    """

    def __init__(self, model, tokenizer, settings: ReaderSettings | None = None,
                 device: torch.device | None = None, batch_size: int | None = None, path: str = "",
                 precision: str = "fp32", cache_contexts: int = 32, compile: bool = False):
        self.settings = settings or ReaderSettings()
        self.device = device or default_device()
        self.model, self.autocast_dtype = for_inference(model, self.device, precision)
        self.tokenizer = tokenizer
        # small batches are faster on CPU (measured: 8 beat 16-64 with MiniLM on 2 cores, bench/infer_cpu.py)
        self.batch_size = batch_size or (8 if self.device.type == "cpu" else 64)
        self.path = path
        # encoded contexts kept across calls: chat and repeated answer_many tokenize a passage once
        self.cache_contexts = cache_contexts
        self.encoder: WindowEncoder | None = None  # made on first use, again when the window settings change
        check_settings(tokenizer, self.settings.windows, getattr(model.config, "max_position_embeddings", None))
        if compile:
            self._compile()

    def _compile(self) -> None:
        """torch.compile the model (`models.compiled_for_reading`) and compile it now, for a batch of several
        windows and for a batch of one, so that no question pays for it later."""
        if not isinstance(self.model, torch.nn.Module):
            raise ModelError(f"{self.path or 'this reader'} is an ONNX export: ONNX Runtime has optimized it already; "
                             "compile applies to torch readers (read it without --compile)")
        self.model = compiled_for_reading(self.model)
        context = ("The reader is compiled once, when it is loaded. " * 40).strip()  # longer than one window
        try:
            self.answer_many([("When is the reader compiled?", context)])
            self.answer("When?", "Once, at load time.")
        except Exception as e:  # noqa: BLE001  inductor fails in many ways (no C++ compiler, unsupported ops)
            raise ModelError(f"compiling the reader failed ({type(e).__name__}: {str(e).strip()[:300]}); torch.compile "
                             "needs a C++ compiler (g++); read without --compile") from None
        self.encoder.clear()  # forget the warm-up contexts

    @classmethod
    def load(cls, path_or_id: str, device: str | None = None, batch_size: int | None = None,
             trust_remote_code: bool = False, precision: str = "fp32", cache_contexts: int = 32,
             compile: bool = False) -> "Reader":
        """A reader from a trained folder (with spanqa.json), an exported ONNX folder (`spanqa export`)
        or any extractive-QA model id/folder. `precision` "bf16" autocasts torch models (CPU or GPU).
        The encodings of the last `cache_contexts` distinct contexts are kept for later calls (0: none).
        `compile` compiles a torch model with torch.compile at load time (half a minute; faster reading after)."""
        path = resolve_model(path_or_id)
        settings = ReaderSettings.read(path) if Path(path).exists() else ReaderSettings()
        if is_onnx_folder(path):
            try:
                model, device = OnnxQAModel(path), "cpu"
            except Exception as e:  # noqa: BLE001  onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base
                raise ModelError(f"cannot load the ONNX model in {path!r}: {str(e).strip()[:300]}; export it "
                                 "again (spanqa export MODEL)") from None
        else:
            model = load_reader_model(path, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, settings, torch.device(device) if device else None, batch_size, path, precision,
                   cache_contexts, compile)

    def windows(self, examples: Sequence[Example]) -> Windows:
        """Model windows of `examples`, from one encoder kept while the window settings stay the same."""
        encoder = self.encoder
        if encoder is None or encoder.settings != self.settings.windows:  # settings may be reassigned
            encoder = self.encoder = WindowEncoder(self.tokenizer, self.settings.windows, self.cache_contexts)
        return encoder(examples)

    def logits(self, windows: Windows, on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        return compute_logits(self.model, windows, self.batch_size, self.device, self.autocast_dtype, on_batch)

    def predict(self, examples: Sequence[Example], decoding: DecodeSettings | None = None,
                on_batch: Callable[[int], None] | None = None, calibrated: bool = True) -> list[Prediction]:
        """Predictions (n-best, null odds) for examples, decoded with the reader's settings. With a stored
        calibration (and `calibrated`), answer scores are probabilities of being right (exact match),
        the no-answer probability is the calibrated one; otherwise the decoder's softmax."""
        if not examples:
            return []
        windows = self.windows(examples)
        start, end = self.logits(windows, on_batch)
        predictions = decode(examples, windows, start, end, decoding or self.settings.decoding)
        if calibrated and self.settings.calibration is not None:
            rescore(predictions, self.settings.calibration.probabilities)
        return predictions

    def answer_many(self, pairs: Iterable[tuple[str, str]], top_k: int = 1,
                    on_batch: Callable[[int], None] | None = None) -> list[list[Answer]]:
        """Answers for many (question, context) pairs in one batched pass; [] where no span exists.

        When the model or the calibrated threshold says "no answer", the first answer has empty
        text, offsets -1 and, as score, the no-answer probability. Scores are calibrated
        probabilities of being right when the reader has a calibration (`ReaderSettings.calibration`).
        `on_batch(windows)` runs after each model batch (the server stops a pass there by raising).
        """
        examples = [Example(str(i), q, c) for i, (q, c) in enumerate(pairs)]
        blank = [i for i, e in enumerate(examples) if not e.question.strip()]
        if blank:  # the model would still pick a span: an answer to no question
            raise ValueError(f"question {blank[0]} of {len(examples)} is empty (or only whitespace)")
        decoding = self.settings.decoding
        if top_k > decoding.n_best:
            decoding = DecodeSettings(**{**asdict(decoding), "n_best": top_k})
        return [_top_answers(p, top_k) for p in self.predict(examples, decoding, on_batch)]

    def answer(self, question: str, context: str, top_k: int = 1) -> list[Answer]:
        """The `top_k` best answers to `question` in `context` (see `answer_many`)."""
        return self.answer_many([(question, context)], top_k)[0]


def _top_answers(p: Prediction, top_k: int) -> list[Answer]:
    if p.no_answer:
        return [Answer("", -1, -1, p.null_probability, p.null_score), *p.answers[:top_k - 1]]
    return p.answers[:top_k]
