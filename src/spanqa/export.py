"""ONNX Runtime readers and classifiers: export a QA or sequence-classification model to ONNX
(fp32, or int8 with smoothed feed-forward outputs) and run it behind `Reader` or `Classifier`.

An exported folder holds `model.onnx`, the tokenizer, `config.json` and `spanqa.json`;
`Reader.load` and `Classifier.load` see `model.onnx` and run it with ONNX Runtime instead of torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from spanqa.calibration_text import CALIBRATION_PAIRS
from spanqa.models import (
    SETTINGS_FILE,
    load_classifier_model,
    load_qa_model,
    load_tokenizer,
    resolve_model,
)
from spanqa.onnx_models import CLASSIFIER_OUTPUTS, ONNX_FILE, OUTPUTS


def export_onnx(model: str, out_dir: str | Path, int8: bool = False, opset: int = 17, smooth: bool = True,
                calibration: Sequence[tuple[str, str]] = CALIBRATION_PAIRS) -> Path:
    """Write an ONNX Runtime reader folder for `model` (a reader folder or QA model id), or a classifier
    folder for a classifier (`spanqa classify train`, or a sequence-classification model id).

    `int8` quantizes every MatMul: per-channel int8 weights, activations quantized per batch at run
    time (dynamic). With `smooth`, the feed-forward output projections are first made easy to
    quantize (`_smooth_ffn_outputs`, measured on the `calibration` (question, passage) pairs; a
    single-sentence classifier reads the passages alone)."""

    source = resolve_model(model)
    out = Path(out_dir)
    tokenizer = load_tokenizer(source)
    classifier = _classifier_settings(source)
    # eager attention exports the graph pattern that ONNX Runtime fuses into its Attention kernel
    load = load_qa_model if classifier is None else load_classifier_model
    torch_model = load(source, attn_implementation="eager").eval()
    outputs = OUTPUTS if classifier is None else CLASSIFIER_OUTPUTS
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])
    single = classifier is not None and classifier.get("pairs") is False
    if int8 and smooth:
        texts = [(p,) if single else (q, p) for q, p in calibration]
        length = min(384, getattr(torch_model.config, "max_position_embeddings", 512))
        _smooth_ffn_outputs(torch_model, [tokenizer(*t, truncation=True, max_length=length, return_tensors="pt")
                                          for t in texts])
    if single:
        sample = tokenizer(["A fine film.", "It was written by a person in a year."], padding=True, return_tensors="pt")
    else:
        sample = tokenizer(["Who wrote it?", "When?"], ["It was written by a person in a year.", "Now."],
                           padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in names)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        fp32 = Path(tmp) / ONNX_FILE
        # The TorchScript exporter gives the graph patterns ONNX Runtime's BERT fusions recognise
        torch.onnx.export(torch_model, args, str(fp32), input_names=names, output_names=list(outputs),
                          dynamic_axes={n: {0: "batch", 1: "sequence"} if n != "logits" else {0: "batch"}
                                        for n in (*names, *outputs)},
                          opset_version=opset, dynamo=False)
        fused = _fuse_transformer_ops(fp32, torch_model.config)
        staged = Path(tmp) / "reader"
        staged.mkdir()
        if int8:
            from onnx import TensorProto
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per-channel weight scales: -0.4 F1 on 300 dev questions where per-tensor lost 2.8 (bench/infer_cpu.py);
            # fused ops come from ONNX Runtime's own domain, where shape inference cannot type them
            quantize_dynamic(str(fused), str(staged / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        else:
            shutil.copy(fused, staged / ONNX_FILE)
        tokenizer.save_pretrained(staged)
        torch_model.config.save_pretrained(staged)
        if (Path(source) / SETTINGS_FILE).exists():
            shutil.copy(Path(source) / SETTINGS_FILE, staged / SETTINGS_FILE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)  # the folder appears complete or not at all
    return out


def _classifier_settings(source: str) -> dict | None:
    """A classifier's spanqa.json ({} for a sequence-classification model without one); None for a reader."""
    from transformers import AutoConfig

    from spanqa.classify.classifier import TASK

    settings = Path(source) / SETTINGS_FILE
    if settings.exists():
        data = json.loads(settings.read_text())
        if data.get("task") == TASK:
            return data
    architectures = AutoConfig.from_pretrained(source).architectures or []
    return {} if any(a.endswith("ForSequenceClassification") for a in architectures) else None


class _Scaled(torch.nn.Module):
    """An activation function followed by a fixed per-channel scale."""

    def __init__(self, activation, scale: torch.Tensor):
        super().__init__()
        self.activation = activation
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) * self.scale


def _ffn_outputs(model) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """(module, name of its activation attribute, output projection) of each feed-forward block:
    BERT/RoBERTa/ELECTRA/MPNet `intermediate` + `output.dense`, DistilBERT `ffn` + `ffn.lin2`."""
    found = []
    for layer in model.modules():
        if hasattr(layer, "intermediate") and hasattr(getattr(layer, "output", None), "dense"):
            found.append((layer.intermediate, "intermediate_act_fn", layer.output.dense))
        elif hasattr(getattr(layer, "ffn", None), "lin2"):
            found.append((layer.ffn, "activation", layer.ffn.lin2))
    return found


@torch.no_grad()
def _smooth_ffn_outputs(model, feeds: list, alpha: float = 0.7) -> None:
    """SmoothQuant (Xiao et al. 2023) for the feed-forward output projections. Their inputs, GELU
    outputs, have a few channels up to ~100x larger than the rest (Bondarenko et al. 2021), and a
    per-tensor int8 scale sized for those leaves the others a handful of levels. Dividing channel j
    by s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha) after the activation, and multiplying column
    j of the weight by s_j, computes the same function in fp32 while moving the range into the
    weights, which have per-channel scales. MiniLM reader, dev-v1.1 (bench/infer_cpu.py): see
    BENCHMARKS.md; alpha 0.7 was better than 0.5 and 0.85 on 1,000 dev questions."""
    blocks = _ffn_outputs(model)
    peaks = [torch.zeros(dense.in_features) for _, _, dense in blocks]

    def record(i):
        def hook(module, inputs):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1])
            peaks[i] = torch.maximum(peaks[i], x.amax(0).float())
        return hook

    handles = [dense.register_forward_pre_hook(record(i)) for i, (_, _, dense) in enumerate(blocks)]
    try:
        for inputs in feeds:  # one unpadded sequence each: every position is a real token
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    for (module, name, dense), peak in zip(blocks, peaks):
        weight_peak = dense.weight.abs().amax(0)
        s = (peak.clamp(min=1e-5) ** alpha / weight_peak.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        dense.weight.mul_(s[None, :])
        setattr(module, name, _Scaled(getattr(module, name), 1 / s))


def _fuse_transformer_ops(path: Path, config, attention: bool = True) -> Path:
    """ONNX Runtime's offline transformer fusions (attention unless told not to, LayerNorm, GELU);
    unchanged if unsupported."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "mpnet": "bert"}.get(config.model_type)
    if model_type is None:
        return path
    options = FusionOptions(model_type)
    options.enable_attention = attention
    optimized = optimize_model(str(path), model_type=model_type, num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1, optimization_options=options)
    fused = path.with_name("fused.onnx" if attention else "fused-no-attention.onnx")
    optimized.save_model_to_file(str(fused))
    return fused
