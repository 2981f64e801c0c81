"""Every method on the integer path against the simulated reference: each quantized layer, and a
tiny pipeline's generation."""

import pytest
import torch
from tests.conftest import PROMPTS, fresh_copy

from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.fidelity import psnr
from adatsq.pipeline import quantize_
from adatsq.quant.qlinear import QuantLinear, set_execution_

pytestmark = pytest.mark.slow  # a quantization per method

SMALL = {"fisher_prompts": 4, "select_prompts": 4, "select_paths": 2, "num_candidates": 4}
METHODS = {"rtn": {}, "gptq": {}, "smoothquant": {}, "quarot": {}, "vidit_q": {},
           "svdquant": {"rank": 4}, "q_dit": {}, "adatsq": SMALL,
           "adatsq_lr": {**SMALL, "lowrank": True}, "adatsq_cb": {**SMALL, "balance": 0.5}}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_integer_execution_matches_the_simulated_reference(calibrated, method):
    base, stats = calibrated
    pipe = fresh_copy(base)
    recipe = Recipe(method=method.removesuffix("_lr").removesuffix("_cb"),
                    weights=WeightSpec(bits=4), activations=ActivationSpec(bits=4),
                    options=METHODS[method])
    quantize_(pipe, recipe, progress=False, stats=stats)
    layers = {n: m for n, m in pipe.transformer.named_modules() if isinstance(m, QuantLinear)}
    assert layers and all(m.execution == "integer" for m in layers.values())  # the default
    on_integers = [n for n, m in layers.items() if m.runs_integer(4)]
    # every layer whose weights are per row runs on integers (Q-DiT's may be per group)
    assert on_integers == [n for n, m in layers.items() if m.scale.shape[1] == 1]
    assert on_integers or method == "q_dit"
    tracker = next(iter(layers.values())).tracker
    tracker.update(tracker.schedule[1])  # a step of the policy
    for name, layer in layers.items():
        x = torch.randn(2, 9, layer.in_features, dtype=torch.float64) * 3
        layer.execution = "simulated"
        want = layer(x)
        layer.execution = "integer"
        assert _rel(layer(x), want) <= 1e-6, name
    # generation in float64: the same computation up to summation order; in float32 a rounding
    # difference may move one activation code at a later layer (a whole quantization step)
    for dtype in (torch.float64, torch.float32):
        pipe.transformer.to(dtype)
        set_execution_(pipe.transformer, "integer")
        images = pipe.generate(PROMPTS, seed=0)
        set_execution_(pipe.transformer, "simulated")
        reference = pipe.generate(PROMPTS, seed=0)
        if dtype == torch.float64:
            assert _rel(images, reference) <= 1e-5
        else:
            assert psnr(images, reference) >= 40.0
