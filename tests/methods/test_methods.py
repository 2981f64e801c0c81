"""Every method: exact transforms before quantization, close to FP at W8A8, GPTQ below RTN."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.conftest import PROMPTS, fresh_copy

from adatsq.calib.gptq import hessian_error
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.fidelity import psnr
from adatsq.methods import get_method, method_names
from adatsq.methods.q_dit import allocate_group_sizes
from adatsq.pipeline import quantize_
from adatsq.quant.lowrank import lowrank_split
from adatsq.quant.qlinear import StepTracker
from adatsq.quant.smoothing import smooth_weight, smoothing_factors

BASELINES = ["rtn", "smoothquant", "quarot", "vidit_q", "svdquant", "q_dit", "gptq"]


def test_every_baseline_is_registered():
    assert set(BASELINES) <= set(method_names())


@pytest.mark.parametrize("method", BASELINES)
def test_transforms_are_exact_before_quantization(calibrated, method):
    """At W16A16 the method's layer (smoothing, rotation, low-rank split) equals the original
    (to FP16 storage)."""
    pipe, stats = calibrated
    recipe = Recipe(method=method, weights=WeightSpec(bits=16), activations=ActivationSpec(bits=16))
    m = get_method(method)(recipe)
    if method != "q_dit":  # Q-DiT's allocation needs quantized weights
        m.prepare(pipe, stats)
    tracker = StepTracker(pipe.schedule())
    for name, linear in pipe.adapter.quantizable_layers(pipe.transformer).items():
        if method == "q_dit":
            m.group_sizes = {name: linear.in_features}
        q = m.quantize_layer(name, linear, stats, tracker)
        xin = torch.randn(3, 7, linear.in_features) * 5
        want = linear(xin)
        got = q(xin)
        # exact up to the layer's FP16 storage (a wrong transform errs by O(1))
        assert (got - want).abs().max() <= 2e-3 * want.abs().max(), (method, name)


def test_svdquant_branch_plus_residual_reconstructs(calibrated):
    pipe, stats = calibrated
    for name, linear in pipe.adapter.quantizable_layers(pipe.transformer).items():
        s = smoothing_factors(stats.absmax[name].amax(0), linear.weight, 0.5)
        W = smooth_weight(linear.weight, s).double()
        down, up, residual = lowrank_split(W, 8)
        torch.testing.assert_close(up @ down + residual, W, rtol=0, atol=1e-12)
        # the residual is what the rank-8 branch could not explain: smaller than the weight
        assert residual.norm() < W.norm()


@pytest.fixture(scope="module")
def fp_images(calibrated):
    pipe, _ = calibrated
    return pipe.generate(PROMPTS, seed=0)


@pytest.mark.parametrize("method", BASELINES)
def test_w8a8_stays_close_to_fp_and_w3a3_does_not(calibrated, fp_images, method):
    _, stats = calibrated
    scores = {}
    for bits in (8, 3):
        pipe = fresh_copy(calibrated[0])
        recipe = Recipe(method=method, weights=WeightSpec(bits=bits),
                        activations=ActivationSpec(bits=bits),
                        options={"rank": 4} if method == "svdquant" else {})
        policy = quantize_(pipe, recipe, progress=False, stats=stats)
        assert policy.weight_bits == bits and policy.average_activation_bits == bits
        scores[bits] = psnr(pipe.generate(PROMPTS, seed=0), fp_images)
    assert scores[8] > 30.0, scores  # dB against the FP images
    assert scores[3] < scores[8] - 10.0, scores


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_rtn_on_every_layer_of_a_real_calibration(calibrated, bits):
    pipe, stats = calibrated
    spec = WeightSpec(bits=bits)
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    tracker = StepTracker(pipe.schedule())
    recipe = Recipe(method="gptq", weights=spec, activations=ActivationSpec(bits=16))
    gptq = get_method("gptq")(recipe)
    rtn = get_method("rtn")(replace(recipe, method="rtn", options={}))
    for name, linear in layers.items():
        H = stats.hessian_sum(name)
        W = linear.weight.detach().float()
        q_gptq = gptq.quantize_layer(name, linear, stats, tracker)
        e_gptq = float(hessian_error(W, q_gptq.dequantized_weight(), H))
        e_rtn = float(hessian_error(W, rtn.quantize_layer(name, linear, stats,
                                                         tracker).dequantized_weight(), H))
        assert e_gptq < e_rtn, (name, e_gptq, e_rtn)


def test_q_dit_allocation_respects_budget_and_prefers_sensitive_layers():
    errors = {"a": {128: 1.0, 64: 0.2, 32: 0.1}, "b": {128: 0.3, 64: 0.29, 32: 0.28}}
    costs = {n: {128: 1, 64: 2, 32: 4} for n in errors}
    choice = allocate_group_sizes(errors, costs, budget=5)  # a greedy refinement gets 64, 64
    assert choice == {"a": 32, "b": 128}
    assert sum(costs[n][g] for n, g in choice.items()) <= 5
    brute = min(((ga, gb) for ga in (128, 64, 32) for gb in (128, 64, 32)
                 if costs["a"][ga] + costs["b"][gb] <= 5),
                key=lambda c: errors["a"][c[0]] + errors["b"][c[1]])
    assert (choice["a"], choice["b"]) == brute
    assert np.isclose(errors["a"][choice["a"]] + errors["b"][choice["b"]], 0.4)


def test_svdquant_rank_keeps_the_papers_proportion_unless_given(calibrated):
    from adatsq.eval.cost import bit_operations, layer_tokens
    from adatsq.io import model_bytes
    from adatsq.quant.lowrank import proportional_rank

    assert proportional_rank(3072, 3072) == 32 and proportional_rank(3072, 12288) == 32
    assert proportional_rank(128, 512) == 1 and proportional_rank(640, 640) == 7
    pipe, stats = calibrated
    sizes, ranks = {}, {}
    for rank in (None, 32):
        q = fresh_copy(pipe)
        policy = quantize_(q, Recipe(method="svdquant", options={} if rank is None else
                                     {"rank": rank}), progress=False, stats=stats)
        ranks[rank] = policy.settings["lowrank_ranks"]
        sizes[rank] = (model_bytes(q.transformer), bit_operations(q.transformer,
                                                                  layer_tokens(pipe)))
    assert ranks[None] == [1]  # 32-wide tiny layers: 32 * 32 / 3072 rounds to 0, at least 1
    assert ranks[32] == [16]  # capped at half of the smaller side
    assert sizes[None][0] < sizes[32][0] and sizes[None][1] < sizes[32][1]
    with pytest.raises(ValueError, match="rank"):
        Recipe(method="svdquant", options={"rank": 0})


@pytest.mark.parametrize("method", ["quarot", "vidit_q", "adatsq"])
def test_rotating_methods_use_seeded_random_signs(calibrated, method):
    """Each layer gets its own signs from the calibration seed; ``random_signs=False`` gives the
    plain Hadamard rotation."""
    pipe, stats = calibrated
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    signs = {}
    for random_signs in (True, False):
        recipe = Recipe(method=method, weights=WeightSpec(bits=4), activations=ActivationSpec(
            bits=16), options={"random_signs": random_signs, "calib": "none"}
            if method == "adatsq" else {"random_signs": random_signs})
        m = get_method(method)(recipe)
        m.prepare(pipe, stats)
        tracker = StepTracker(pipe.schedule())
        qs = {n: m.quantize_layer(n, lin, stats, tracker) for n, lin in layers.items()}
        signs[random_signs] = {n: q.rotation_signs for n, q in qs.items()}
    assert all(s is None for s in signs[False].values())
    on = list(signs[True].values())
    assert all(s is not None and set(s.tolist()) == {-1.0, 1.0} for s in on)
    assert len({tuple(s.tolist()) for s in on}) == len(on)  # one draw per layer
