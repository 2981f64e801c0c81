"""A quantized transformer compiles whole: no graph break, no host sync in the step tracker."""

import dataclasses

import pytest
import torch

from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.pipeline import quantize_
from adatsq.quant.qlinear import QuantLinear


def _quantized(pipe, method: str, per_step: tuple[int, ...]):
    quantize_(pipe, Recipe(method=method, weights=WeightSpec(bits=4),
                           activations=ActivationSpec(bits=4)), progress=False)
    for m in pipe.transformer.modules():
        if isinstance(m, QuantLinear):  # bits that change with the step, as AdaTSQ's do
            m.activation = dataclasses.replace(m.activation, bits=per_step)
    cond = pipe.encode(["a 3"])
    latents = pipe.noise(1, seed=0)
    return lambda sigma: pipe.adapter.denoise(pipe.transformer, latents, cond, sigma)


@pytest.mark.parametrize("per_step", [(4, 8, 3, 4), (4, 16, 3, 8)])
def test_a_quantized_transformer_traces_without_graph_breaks(tiny_pipeline, per_step):
    call = _quantized(tiny_pipeline, "quarot", per_step)
    sigma = torch.tensor([0.5])
    explained = torch._dynamo.explain(call)(sigma)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_the_compiled_transformer_computes_what_the_eager_one_does(tiny_pipeline):
    call = _quantized(tiny_pipeline, "quarot", (4, 8, 3, 16))
    compiled = torch.compile(call, fullgraph=True)
    for sigma in tiny_pipeline.schedule():  # Flux's timestep is sigma; 4, 8, 3 and 16 bits
        s = sigma.reshape(1).float()
        want = call(s)
        got = compiled(s)
        assert float((got - want).norm() / want.norm()) <= 1e-5
    torch._dynamo.reset()
