"""ONNX Runtime readers and classifiers: export a QA or sequence-classification model to ONNX
(optionally int8) and run it behind `Reader` or `Classifier`.

An exported folder holds `model.onnx`, the tokenizer, `config.json` and `spanqa.json`;
`Reader.load` and `Classifier.load` see `model.onnx` and run it with ONNX Runtime instead of torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from spanqa.classify.pooling import use_pooling
from spanqa.models import (
    SETTINGS_FILE,
    load_classifier_model,
    load_reader_model,
    load_tokenizer,
    ModelError,
    resolve_model,
)
from spanqa.onnx_models import CLASSIFIER_OUTPUTS, ONNX_FILE, OUTPUTS, is_onnx_folder


def export_onnx(model: str, out_dir: str | Path, int8: bool = False, opset: int = 17,
                int8_everywhere: bool = False) -> Path:
    """Write an ONNX Runtime reader folder for `model` (a reader folder or QA model id), or a classifier
    folder for a classifier (`spanqa classify train`, or a sequence-classification model id).

    `int8` quantizes the weights of every MatMul except the feed-forward output projections
    (see `_outlier_matmuls`), or of all of them with `int8_everywhere`. Activations are quantized
    with scales computed per batch at run time (dynamic). Static scales (calibrated on dev windows)
    and SmoothQuant-style smoothing of the feed-forward outputs were measured and dropped: neither
    was closer to fp32 than this, static was slower (BENCHMARKS.md)."""

    source = resolve_model(model)
    out = Path(out_dir)
    check_target(out, source)
    tokenizer = load_tokenizer(source)
    classifier = _classifier_settings(source)
    # eager attention exports the graph pattern that ONNX Runtime fuses into its Attention kernel
    load = load_reader_model if classifier is None else load_classifier_model
    torch_model = load(source, attn_implementation="eager").eval()
    if classifier is not None:
        use_pooling(torch_model, classifier.get("pooling", "cls"))
    outputs = OUTPUTS if classifier is None else CLASSIFIER_OUTPUTS
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])
    if classifier is not None and classifier.get("pairs") is False:
        sample = tokenizer(["A fine film.", "It was written by a person in a year."], padding=True, return_tensors="pt")
    else:
        sample = tokenizer(["Who wrote it?", "When?"], ["It was written by a person in a year.", "Now."],
                           padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in names)
    out.parent.mkdir(parents=True, exist_ok=True)  # staged beside it: the final rename stays on one file system
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
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
            quantize_onnx(fused, staged / ONNX_FILE, int8_everywhere)
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


def quantize_onnx(fused: Path, target: Path, int8_everywhere: bool = False) -> None:
    """Write the int8 copy of an fp32 export's graph (`export_onnx`'s `int8`, `int8_everywhere`) to `target`."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # per-channel weight scales: -0.4 F1 on 300 dev questions where per-tensor lost 2.8 (bench/infer_cpu.py);
    # fused ops come from ONNX Runtime's own domain, where shape inference cannot type them
    # only the matmuls: ONNX Runtime would also store the embedding tables in uint8 (QEmbedLayerNormalization,
    # Gather), which saves memory, not time, and cost 0.9 F1 of the 1.3 the export lost (2,000 dev
    # questions, 2026-12-06, BENCHMARKS.md)
    quantize_dynamic(str(fused), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention"],
                     nodes_to_exclude=[] if int8_everywhere else _outlier_matmuls(fused),
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


def check_target(out: Path, source: str) -> None:
    """The output folder is replaced whole: refuse the model's own folder, and a folder of other files."""
    if out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise ModelError(f"--out {out} is the model's own folder; choose another output folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_onnx_folder(out))):
        raise ModelError(f"--out {out} exists and is not an exported model folder (it would be replaced); "
                         "choose another output folder, or remove it first")


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


def _outlier_matmuls(path: Path) -> list[str]:
    """The feed-forward output projections (BERT/RoBERTa/MPNet `layer.N.output.dense`, DistilBERT
    `ffn.lin2`): their inputs, GELU outputs, carry the activation outliers that per-tensor dynamic
    int8 handles worst (Bondarenko et al. 2021, "Understanding and Overcoming the Challenges of
    Efficient Transformer Quantization"). Kept in fp32 (MiniLM, 2,000 dev questions, 2026-11-23): F1 -1.16 ->
    -0.43 against the pipeline's fp32, at 75% of the all-int8 speed (bench/infer_cpu.py)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and "attention" not in n.name
            and n.name.endswith(("/output/dense/MatMul", "/ffn/lin2/MatMul"))]


def _fuse_transformer_ops(path: Path, config) -> Path:
    """ONNX Runtime's offline transformer fusions (attention, LayerNorm, GELU); unchanged if unsupported."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "mpnet": "bert"}.get(config.model_type)
    if model_type is None:
        return path
    optimized = optimize_model(str(path), model_type=model_type, num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1, optimization_options=FusionOptions(model_type))
    fused = path.with_name("fused.onnx")
    optimized.save_model_to_file(str(fused))
    return fused
