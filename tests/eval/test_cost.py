"""Bit-operations per sample and step of quantized transformers."""

import pytest
from tests.conftest import fresh_copy

from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.cost import bit_operations, layer_tokens
from adatsq.pipeline import quantize_


def test_tokens_and_bit_operations_scale_with_the_widths(calibrated):
    pipe, stats = calibrated
    tokens = layer_tokens(pipe)
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    assert set(tokens) == set(layers)
    assert tokens["single_transformer_blocks.0.attn.to_q"] == 16 + 10  # image + text tokens
    assert tokens["transformer_blocks.0.attn.to_q"] == 16  # the image stream alone
    fp = bit_operations(pipe.transformer, tokens)
    macs = sum(n * layers[k].in_features * layers[k].out_features for k, n in tokens.items())
    assert fp == macs * 16 * 16
    q = fresh_copy(pipe)
    quantize_(q, Recipe(method="rtn", weights=WeightSpec(bits=4),
                        activations=ActivationSpec(bits=3)), progress=False)
    assert bit_operations(q.transformer, tokens) == pytest.approx(fp * 4 * 3 / 256)


def test_a_low_rank_branch_costs_sixteen_bit_operations(calibrated):
    pipe, stats = calibrated
    tokens = layer_tokens(pipe)
    costs = {}
    for rank in (1, 4):
        q = fresh_copy(pipe)
        quantize_(q, Recipe(method="svdquant", options={"rank": rank}), progress=False,
                  stats=stats)
        costs[rank] = bit_operations(q.transformer, tokens)
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    extra = sum(n * 3 * (layers[k].in_features + layers[k].out_features) * 256
                for k, n in tokens.items())
    assert costs[4] - costs[1] == pytest.approx(extra)


def test_mac_weighted_bits_weighs_layers_by_compute():
    from torch import nn

    from adatsq.config import WeightSpec
    from adatsq.eval.cost import mac_weighted_bits
    from adatsq.quant.qlinear import ActivationQuant, QuantLinear

    big, small = nn.Linear(8, 8), nn.Linear(2, 2)
    model = nn.Sequential(
        QuantLinear.from_linear(big, WeightSpec(bits=4), ActivationQuant(bits=(3, 5)), None),
        QuantLinear.from_linear(small, WeightSpec(bits=4), ActivationQuant(bits=8), None))
    # 64 MACs at a mean of 4 bits and 4 MACs at 8 bits
    assert mac_weighted_bits(model, {"0": 1, "1": 1}) == (64 * 4 + 4 * 8) / 68
