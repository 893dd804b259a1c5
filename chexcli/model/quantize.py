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
from typing import Callable

import torch
from torch import Tensor, nn

from chexcli.errors import ChexError
from chexcli.model.chex import ChEX

DTYPES = ("float32", "float16", "int8")


CHUNK_ROWS = 32768  # the prefix MLP's 245,760-row output layer is packed in row chunks


def _compact_linear(weight_out_in: Tensor, bias: Tensor | None, dtype: str) -> nn.Module:
    """An fbgemm linear layer with float16 or int8 weights; weight (out, in)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        lin = nn.Linear(weight_out_in.shape[1], weight_out_in.shape[0], bias=bias is not None, device="meta")
        lin.weight = nn.Parameter(weight_out_in.detach().float().contiguous(), requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
        if dtype == "int8":
            lin.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        else:
            lin.qconfig = torch.ao.quantization.float16_dynamic_qconfig
        return DynamicLinear.from_float(lin)


class CompactLinear(nn.Module):
    """y = x W^T + b with W (out, in) held as float16/int8 fbgemm layers over chunks of output rows.

    `rows(start, end)` returns rows [start, end) of W as float32, so a large
    weight never has to exist in float32 all at once.
    """

    def __init__(self, rows: Callable[[int, int], Tensor], n_out: int, bias: Tensor | None, dtype: str):
        super().__init__()
        bounds = list(range(0, n_out, CHUNK_ROWS)) + [n_out]
        self.chunks = nn.ModuleList(
            _compact_linear(rows(a, b), None if bias is None else bias[a:b], dtype) for a, b in zip(bounds, bounds[1:])
        )

    def forward(self, x: Tensor) -> Tensor:
        if len(self.chunks) == 1:
            return self.chunks[0](x)
        return torch.cat([chunk(x) for chunk in self.chunks], dim=-1)


TensorSource = Callable[[str], Tensor]


def _model_source(model: ChEX) -> tuple[TensorSource, Callable[[str, int, int], Tensor]]:
    params = dict(model.named_parameters())
    return (lambda key: params[key]), (lambda key, a, b: params[key][a:b])


def compact_keys(model: ChEX) -> set[str]:
    """State-dict keys that `compact_generator` consumes (and the float32 model does not need)."""
    gen = model.txt_decoder
    if gen is None:
        return set()
    keys = set()
    for i in range(len(gen.language_model.transformer.h)):
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            keys |= {f"txt_decoder.language_model.transformer.h.{i}.{name}.{p}" for p in ("weight", "bias")}
    for i, layer in enumerate(gen.prefix_proj.layers):
        if isinstance(layer, nn.Linear):
            keys |= {f"txt_decoder.prefix_proj.layers.{i}.{p}" for p in ("weight", "bias")}
    return keys


def compact_generator(model: ChEX, dtype: str, get: TensorSource | None = None,
                      get_rows: Callable[[str, int, int], Tensor] | None = None) -> ChEX:
    """Replace the generator's and prefix MLP's linear layers (in place, CPU only).

    The weights come from the model itself or, when loading a bundle, from
    `get(key)` / `get_rows(key, start, end)` reading the file tensor by tensor.
    """
    gen = model.txt_decoder
    if gen is None:
        return model
    if model.device.type not in ("cpu", "meta"):
        raise ChexError(f"--dtype {dtype} runs on the CPU only; use --dtype float32 with --device cuda")
    if get is None or get_rows is None:
        get, get_rows = _model_source(model)
    lm = gen.language_model
    for i, block in enumerate(lm.transformer.h):
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            key = f"txt_decoder.language_model.transformer.h.{i}.{'attn' if parent is block.attn else 'mlp'}.{name}"
            weight = get(f"{key}.weight").t()  # Conv1D stores (in, out)
            setattr(parent, name, CompactLinear(lambda a, b, w=weight: w[a:b], weight.shape[0], get(f"{key}.bias"), dtype))
    wte = lm.transformer.wte.weight
    lm.head = CompactLinear(lambda a, b: wte[a:b], wte.shape[0], None, dtype)
    layers = gen.prefix_proj.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            key = f"txt_decoder.prefix_proj.layers.{i}"
            layers[i] = CompactLinear(lambda a, b, k=key: get_rows(f"{k}.weight", a, b), layer.out_features,
                                      get(f"{key}.bias"), dtype)
    return model


def apply_dtype(model: ChEX, dtype: str) -> ChEX:
    """Return the model prepared for inference in `dtype` (float32, float16 or int8)."""
    if dtype == "float32":
        return model
    if dtype in ("float16", "int8"):
        return compact_generator(model, dtype)
    raise ChexError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
