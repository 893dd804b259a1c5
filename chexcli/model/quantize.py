"""`--dtype` choices for inference.

float32 is the exact-parity mode. int8 stores the sentence generator
(GPT-2 layers, output head) and the prefix MLP with int8 weights (per output
channel scales) and runs them through PyTorch's dynamically quantised linear
layers (fbgemm on x86): sentence generation reads about 4x fewer bytes per
token, which is what bounds it on a CPU. The image encoder, prompt encoder,
detector and post decoder stay float32, so boxes and scores are unchanged;
only sentences can differ (measured in benchmarks/predict.py).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from chexcli.errors import ChexError
from chexcli.model.chex import ChEX
from chexcli.model.gpt2 import Conv1D

DTYPES = ("float32", "int8")


def _quantized_linear(weight_out_in: Tensor, bias: Tensor | None) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        lin = nn.Linear(weight_out_in.shape[1], weight_out_in.shape[0], bias=bias is not None)
        lin.weight.data = weight_out_in.detach().float().contiguous()
        if bias is not None:
            lin.bias.data = bias.detach().float()
        lin.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return DynamicLinear.from_float(lin)


class _QuantizedConv1D(nn.Module):
    """Drop-in for GPT-2's Conv1D (weight stored in x out) with int8 weights."""

    def __init__(self, conv: Conv1D):
        super().__init__()
        self.linear = _quantized_linear(conv.weight.t(), conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def quantize_generator_int8(model: ChEX) -> ChEX:
    """Replace the generator's and prefix MLP's linear layers by int8 ones (in place, CPU only)."""
    gen = model.txt_decoder
    if gen is None:
        return model
    if model.device.type != "cpu":
        raise ChexError("--dtype int8 runs on the CPU only; use --dtype float32 with --device cuda")
    lm = gen.language_model
    for block in lm.transformer.h:
        block.attn.c_attn = _QuantizedConv1D(block.attn.c_attn)
        block.attn.c_proj = _QuantizedConv1D(block.attn.c_proj)
        block.mlp.c_fc = _QuantizedConv1D(block.mlp.c_fc)
        block.mlp.c_proj = _QuantizedConv1D(block.mlp.c_proj)
    lm.head = _quantized_linear(lm.transformer.wte.weight, None)
    layers = gen.prefix_proj.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            layers[i] = _quantized_linear(layer.weight, layer.bias)
    return model


def apply_dtype(model: ChEX, dtype: str) -> ChEX:
    """Return the model prepared for inference in `dtype` (float32 or int8)."""
    if dtype == "float32":
        return model
    if dtype == "int8":
        return quantize_generator_int8(model)
    raise ChexError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
