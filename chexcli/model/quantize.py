"""`--dtype` choices for inference.

float32 is the exact-parity mode. The two others change only the sentence
generator (GPT-2 layers, output head) and the prefix MLP, which hold 82 % of
the weights and bound generation speed on a CPU; they run through PyTorch's
fbgemm linear layers (x86):

- float16: weights stored in float16, products computed in float32
  (relative error of a layer output about 2e-4; half the bytes per token);
- int8: int8 weights with per-output-channel scales and dynamically
  quantised activations (a quarter of the bytes per token).

The image encoder, prompt encoder, detector and post decoder stay float32,
so boxes and scores are unchanged; only sentences can differ (measured in
benchmarks/predict.py).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from chexcli.errors import ChexError
from chexcli.model.chex import ChEX
from chexcli.model.gpt2 import Conv1D

DTYPES = ("float32", "float16", "int8")


def _compact_linear(weight_out_in: Tensor, bias: Tensor | None, dtype: str) -> nn.Module:
    """An fbgemm linear layer with float16 or int8 weights; weight (out, in)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        lin = nn.Linear(weight_out_in.shape[1], weight_out_in.shape[0], bias=bias is not None)
        lin.weight.data = weight_out_in.detach().float().contiguous()
        if bias is not None:
            lin.bias.data = bias.detach().float()
        if dtype == "int8":
            lin.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        else:
            lin.qconfig = torch.ao.quantization.float16_dynamic_qconfig
        return DynamicLinear.from_float(lin)


class _CompactConv1D(nn.Module):
    """Drop-in for GPT-2's Conv1D (weight stored in x out) with float16 or int8 weights."""

    def __init__(self, conv: Conv1D, dtype: str):
        super().__init__()
        self.linear = _compact_linear(conv.weight.t(), conv.bias, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def compact_generator(model: ChEX, dtype: str) -> ChEX:
    """Replace the generator's and prefix MLP's linear layers (in place, CPU only)."""
    gen = model.txt_decoder
    if gen is None:
        return model
    if model.device.type != "cpu":
        raise ChexError(f"--dtype {dtype} runs on the CPU only; use --dtype float32 with --device cuda")
    lm = gen.language_model
    for block in lm.transformer.h:
        block.attn.c_attn = _CompactConv1D(block.attn.c_attn, dtype)
        block.attn.c_proj = _CompactConv1D(block.attn.c_proj, dtype)
        block.mlp.c_fc = _CompactConv1D(block.mlp.c_fc, dtype)
        block.mlp.c_proj = _CompactConv1D(block.mlp.c_proj, dtype)
    lm.head = _compact_linear(lm.transformer.wte.weight, None, dtype)
    layers = gen.prefix_proj.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            layers[i] = _compact_linear(layer.weight, layer.bias, dtype)
    return model


def apply_dtype(model: ChEX, dtype: str) -> ChEX:
    """Return the model prepared for inference in `dtype` (float32, float16 or int8)."""
    if dtype == "float32":
        return model
    if dtype in ("float16", "int8"):
        return compact_generator(model, dtype)
    raise ChexError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
