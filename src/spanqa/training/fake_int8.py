"""Quantization-aware training for the int8 that ONNX Runtime runs (`spanqa export --int8-everywhere`).

Every `nn.Linear` computes on its input and weight rounded as ONNX Runtime's dynamic quantization rounds
them at inference: activations to uint8 with one scale per tensor, taken from that tensor's range
(widened to include 0), weights to int8 with one symmetric scale per output channel, in [-127, 127],
except the query/key/value projections that the export fuses into ONNX Runtime's QAttention kernel,
whose weights its quantizer puts in [-64, 64] (`AttentionQuant`: reduce_range=True). The rounding
passes gradients straight through, so training learns weights whose
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
            module.weight_levels = 127
            module.forward = types.MethodType(_fake_int8_linear, module)
    return model


def _fake_int8_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # Integers times scales, as MatMulInteger computes: the integers (|x| <= 255, |w| <= 127) are exact in
    # bf16 too, so under bf16 autocast the matmul still sees exactly the int8 grid
    x_int, x_scale = activation_integers(x)
    w_int, w_scale = weight_integers(self.weight, self.weight_levels)
    y = F.linear(x_int.to(x.dtype), w_int.to(x.dtype)) * (x_scale * w_scale)
    return (y if self.bias is None else y + self.bias).to(x.dtype)


def _round_straight_through(t: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    """round(t) clamped to [low, high] forward, the identity backward (the straight-through estimator)."""
    return t + (torch.clamp(torch.round(t), low, high) - t).detach()


def activation_integers(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime's DynamicQuantizeLinear: uint8 with one scale, (max - min) / 255 over the whole tensor,
    the range widened to include 0 (exact). Returns (q - zero point, scale): x ~ (q - zero point) * scale."""
    low, high = torch.aminmax(x.detach().float())
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = ((high - low) / 255).clamp(min=torch.finfo(torch.float32).tiny)
    zero_point = torch.round(-low / scale).clamp(0, 255)
    return _round_straight_through(x.float() / scale, -zero_point, 255 - zero_point), scale


def weight_integers(weight: torch.Tensor, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 in [-levels, levels], one symmetric scale per output channel (`quantize_dynamic(per_channel=True)`).
    Returns (integers, scales): weight ~ integers * scales[:, None]."""
    scale = (weight.detach().float().abs().amax(dim=1) / levels).clamp(min=torch.finfo(torch.float32).tiny)
    return _round_straight_through(weight.float() / scale[:, None], -levels, levels), scale


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """`x` as ONNX Runtime's dynamic int8 represents it."""
    integers, scale = activation_integers(x)
    return (integers * scale).to(x.dtype)


def fake_quantize_weight(weight: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """`weight` as `quantize_dynamic(per_channel=True)` stores it."""
    integers, scale = weight_integers(weight, levels)
    return (integers * scale[:, None]).to(weight.dtype)
