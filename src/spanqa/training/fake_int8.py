"""Quantization-aware training for the int8 that ONNX Runtime runs (`spanqa export --int8-everywhere`).

Every `nn.Linear` computes on its input and weight rounded as ONNX Runtime's dynamic quantization rounds
them at inference: activations to uint8 with one scale per tensor, taken from that tensor's range
(widened to include 0), weights to int8 with one symmetric scale per output channel, in [-127, 127],
except the query/key/value projections that the export fuses into ONNX Runtime's QAttention kernel,
whose weights its quantizer puts in [-64, 64] (`AttentionQuant`: reduce_range=True). The rounding
passes gradients straight through (torch's fake-quantize ops), so training learns weights whose
int8 answers are the fp32 answers. The weights stay fp32 and the state dict keeps its keys:
checkpoints, resume and export see a plain model.

Written here because the libraries' QAT (torch.ao, Optimum/INC) targets their own int8 kernels and
static scales, not ONNX Runtime's per-batch activation scales, which are what `spanqa export` produces.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


# the query/key/value projections of BERT and RoBERTa, DistilBERT, MPNet: what the export fuses into Attention
FUSED_ATTENTION_INPUTS = ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.q_lin", "attention.k_lin", "attention.v_lin", "attn.q", "attn.k", "attn.v")


def fake_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Make every Linear of `model` compute in simulated int8 (in place); returns the model."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.weight_levels = 64 if name.endswith(FUSED_ATTENTION_INPUTS) else 127
            module.forward = types.MethodType(_fake_int8_linear, module)
    return model


def _fake_int8_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = fake_quantize_weight(self.weight, self.weight_levels)
    return F.linear(fake_quantize_activations(x), weight, self.bias)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's DynamicQuantizeLinear: uint8, scale (max - min) / 255 over the whole tensor, 0 exact."""
    low, high = torch.aminmax(x.detach().float())
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = ((high - low) / 255).clamp(min=torch.finfo(torch.float32).tiny)
    zero_point = torch.round(-low / scale).clamp(0, 255).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, 0, 255).to(x.dtype)


def fake_quantize_weight(weight: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """int8 in [-levels, levels], one scale per output channel (`quantize_dynamic(per_channel=True)`)."""
    scale = (weight.detach().float().abs().amax(dim=1) / levels).clamp(min=torch.finfo(torch.float32).tiny)
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight.float(), scale, zero_point, 0, -levels, levels).to(weight.dtype)
