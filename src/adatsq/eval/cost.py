"""The compute cost of a (quantized) transformer: bit-operations per sample and sampling step.

A linear layer that multiplies ``n`` tokens of width ``d_in`` by a ``d_out x d_in`` weight does
``n d_in d_out`` multiply-accumulates; at ``w``-bit weights and ``a``-bit activations each costs
``w a`` bit-operations (BOPs, the efficiency measure of the quantization literature). A layer whose
activation width changes with the timestep costs its mean width over the sampling steps; a 16-bit
low-rank branch (SVDQuant) adds ``n r (d_in + d_out)`` MACs at 16 x 16. Counted: the quantizable
layers of the transformer blocks (the adapter's), which hold nearly all the compute of a large DiT;
the attention products, embedders and adaLN are equal for every method and left out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adatsq.quant.primitives import FULL_PRECISION
from adatsq.quant.qlinear import QuantLinear


@torch.no_grad()
def layer_tokens(pipeline) -> dict[str, int]:
    """Tokens per sample that every quantizable layer multiplies in one transformer call."""
    model, adapter = pipeline.transformer, pipeline.adapter
    layers = adapter.quantizable_layers(model)
    tokens: dict[str, int] = {}

    def counter(name):
        def hook(module, args):
            tokens[name] = int(np.prod(args[0].shape[:-1]))
        return hook

    handles = [layer.register_forward_pre_hook(counter(name)) for name, layer in layers.items()]
    try:
        prompt = pipeline.calibration_prompts(1)
        adapter.denoise(model, pipeline.noise(1, 0), pipeline.encode(prompt), torch.ones(1))
    finally:
        for h in handles:
            h.remove()
    return tokens


def bit_operations(model: nn.Module, tokens: dict[str, int]) -> float:
    """Bit-operations per sample and step of the layers named in ``tokens`` (a plain
    ``nn.Linear`` counts at 16 x 16 bits).

    Example:
        >>> bit_operations(nn.Sequential(nn.Linear(4, 2)), {"0": 3})  # 3 * 4 * 2 MACs at 16 x 16
        6144.0
    """
    total = 0.0
    for name, n in tokens.items():
        layer = model.get_submodule(name)
        macs = n * layer.in_features * layer.out_features
        if not isinstance(layer, QuantLinear):
            total += macs * FULL_PRECISION * FULL_PRECISION
            continue
        a = np.mean(layer.activation.bits)  # per-step widths: their mean
        total += macs * layer.weight_bits * float(a)
        if layer.lowrank_down is not None:
            rank = layer.lowrank_down.shape[0]
            total += n * rank * (layer.in_features + layer.out_features) * FULL_PRECISION ** 2
    return float(total)


def mac_weighted_bits(model: nn.Module, tokens: dict[str, int]) -> float:
    """Average activation width of the layers named in ``tokens``, each layer weighted by its
    MACs per call (the compute-weighted counterpart of the plain mean over layers of Eq. 3; a
    plain ``nn.Linear`` counts at 16 bits).

    Example:
        >>> bits = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
        >>> mac_weighted_bits(bits, {"0": 3, "1": 3})
        16.0
    """
    weighted = total = 0.0
    for name, n in tokens.items():
        layer = model.get_submodule(name)
        macs = n * layer.in_features * layer.out_features
        a = np.mean(layer.activation.bits) if isinstance(layer, QuantLinear) else FULL_PRECISION
        weighted += macs * float(a)
        total += macs
    return weighted / total
