"""AdaTSQ end to end on a tiny pipeline: Fisher, Eq. 6 weights, search within budget, selection."""

import numpy as np
import pytest
import torch
from tests.conftest import PROMPTS, fresh_copy

from adatsq.calib.fisher import effective_steps, fisher_information, temporal_weights
from adatsq.calib.gptq import hessian_error
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.pipeline import quantize_, save
from adatsq.quant.qlinear import QuantLinear
from adatsq.quant.rotation import rotate, rotate_hessian
from adatsq.search.selection import select_path

SMALL = {"fisher_prompts": 4, "select_prompts": 4, "select_paths": 2, "num_candidates": 4}


@pytest.fixture(scope="module")
def fisher(calibrated):
    pipe, _ = calibrated
    return fisher_information(pipe, PROMPTS, seed=0, micro_batch=2, progress=False)


def test_fisher_shape_positive_and_deterministic(calibrated, fisher):
    pipe, _ = calibrated
    layers = list(pipe.adapter.quantizable_layers(pipe.transformer))
    assert fisher.layers == layers
    assert fisher.scores.shape == (len(layers), pipe.default_steps)
    assert np.isfinite(fisher.scores).all() and (fisher.scores > 0).all()
    again = fisher_information(pipe, PROMPTS, seed=0, micro_batch=2, progress=False)
    np.testing.assert_allclose(again.scores, fisher.scores, rtol=1e-6)
    # gradients flowed only for the duration of the estimate
    assert not any(p.requires_grad for p in pipe.transformer.parameters())


def test_temporal_weights_are_a_tempered_softmax(fisher):
    for tau in (0.1, 1.0, 10.0):
        alpha = temporal_weights(fisher.scores, tau)
        np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-12)
    hot, cold = temporal_weights(fisher.scores, 1e6), temporal_weights(fisher.scores, 1e-3)
    np.testing.assert_allclose(hot, 1.0 / fisher.scores.shape[1], rtol=1e-4)
    np.testing.assert_array_equal(cold.argmax(axis=1), fisher.scores.argmax(axis=1))
    assert (cold.max(axis=1) > 0.99).all()
    with pytest.raises(ValueError, match="tau"):
        temporal_weights(fisher.scores, 0.0)


def test_fisher_guided_gptq_lowers_the_weighted_error(calibrated, fisher):
    """Eq. 7: calibrating on H' lowers sum_t alpha_t ||W X_t - Q X_t||^2 against uniform GPTQ."""
    from adatsq.calib.gptq import gptq_quantize
    from adatsq.quant.primitives import WeightQuantizer

    pipe, stats = calibrated
    alpha = temporal_weights(fisher.scores, 0.2)
    wins = 0
    total = {"fisher": 0.0, "uniform": 0.0}
    for li, (name, layer) in enumerate(pipe.adapter.quantizable_layers(pipe.transformer).items()):
        W = rotate(layer.weight.double()).float()
        weights = torch.tensor(alpha[li], dtype=torch.float32)
        H_fisher = rotate_hessian(stats.hessian_sum(name, weights).double()).float()
        H_uniform = rotate_hessian(stats.hessian_sum(name).double()).float()
        q = WeightQuantizer(3)
        errs = {k: float(hessian_error(W, gptq_quantize(W, H, q).weight, H_fisher))
                for k, H in (("fisher", H_fisher), ("uniform", H_uniform))}
        wins += errs["fisher"] <= errs["uniform"]
        for k in errs:
            total[k] += errs[k]
    assert total["fisher"] < total["uniform"]
    assert wins >= 0.7 * len(fisher.layers)


@pytest.mark.parametrize("bits", [3, 4])
def test_adatsq_meets_the_budget_with_dynamic_bits(calibrated, bits, capsys):
    pipe = fresh_copy(calibrated[0])
    _, stats = calibrated
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=bits),
                    activations=ActivationSpec(bits=bits), options=SMALL)
    policy = quantize_(pipe, recipe, progress=False, stats=stats)
    assert capsys.readouterr().err == ""  # progress=False: no bar of any phase
    m = policy.bit_matrix()
    assert set(np.unique(m)) <= {3, 4, 8}
    assert policy.average_activation_bits <= bits + 0.1 + 1e-9
    search = policy.settings["search"]
    assert search["mean_bits"] == pytest.approx(policy.average_activation_bits)
    assert len(search["selection_scores"]) == len(search["tried"]["paths"]) >= 1
    assert search["mean_bits"] == pytest.approx(search["tried"]["mean_bits"][search["chosen"]])
    assert torch.isfinite(pipe.generate(PROMPTS[:2], seed=0)).all()


def test_search_on_the_integer_path_measures_the_same_losses(calibrated):
    """``search_execution="integer"``: the step losses are those of the simulated reference up
    to float rounding, and the layers end on the execution ``quantize_`` was asked for."""
    _, stats = calibrated
    losses, runs = {}, {}
    for mode in ("simulated", "integer"):
        pipe = fresh_copy(calibrated[0])
        recipe = Recipe(method="adatsq", weights=WeightSpec(bits=4),
                        activations=ActivationSpec(bits=4),
                        options={**SMALL, "search_execution": mode})
        ran = []
        original = QuantLinear._integer_forward

        def spy(self, *args, **kwargs):
            ran.append(mode)
            return original(self, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(QuantLinear, "_integer_forward", spy)
            policy = quantize_(pipe, recipe, progress=False, stats=stats, execution="simulated")
        losses[mode] = np.array(policy.settings["search"]["candidate_losses"])
        runs[mode] = len(ran)
        assert {m.execution for m in pipe.transformer.modules()
                if isinstance(m, QuantLinear)} == {"simulated"}
    assert runs["simulated"] == 0 and runs["integer"] > 0
    np.testing.assert_allclose(losses["integer"], losses["simulated"], rtol=1e-3)
    with pytest.raises(ValueError, match="search_execution"):
        Recipe(method="adatsq", options={"search_execution": "fast"})


def test_step_weightings_pool_distinct_paths(calibrated):
    """One beam search per step weighting: the selection tries the best path of each, once."""
    _, stats = calibrated
    tried = {}
    for weights in [(0.0,), (2.0,), (0.0, 2.0)]:
        recipe = Recipe(method="adatsq", weights=WeightSpec(bits=3),
                        activations=ActivationSpec(bits=3),
                        options={**SMALL, "select_paths": 8, "loss_weights": weights})
        policy = quantize_(fresh_copy(calibrated[0]), recipe, progress=False, stats=stats)
        tried[weights] = policy.settings["search"]["tried"]
    pooled = tried[(0.0, 2.0)]
    assert len({tuple(p) for p in pooled["paths"]}) == len(pooled["paths"])
    assert pooled["paths"][0] == tried[(0.0,)]["paths"][0]
    assert tried[(2.0,)]["paths"][0] in pooled["paths"][:2]
    assert set(pooled["loss_weight"]) <= {0.0, 2.0}
    assert len(pooled["paths"]) >= max(len(tried[(0.0,)]["paths"]), len(tried[(2.0,)]["paths"]))


def test_ablation_without_pareto_keeps_uniform_bits(calibrated):
    pipe = fresh_copy(calibrated[0])
    _, stats = calibrated
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=4), activations=ActivationSpec(bits=4),
                    options={"pareto": False, "calib": "none"})
    policy = quantize_(pipe, recipe, progress=False, stats=stats)
    assert (policy.bit_matrix() == 4).all() and "search" not in policy.settings


def test_weight_only_and_activation_only_rows(calibrated):
    """W4A16 has no activation bits to search; W16A4 searches them around 16-bit weights."""
    _, stats = calibrated
    weights_only = fresh_copy(calibrated[0])
    policy = quantize_(weights_only, Recipe(method="adatsq", weights=WeightSpec(bits=4),
                                            activations=ActivationSpec(bits=16), options=SMALL),
                       progress=False, stats=stats)
    assert (policy.bit_matrix() == 16).all() and policy.weight_bits == 4
    assert "search" not in policy.settings and "alpha" in policy.settings
    acts_only = fresh_copy(calibrated[0])
    policy = quantize_(acts_only, Recipe(method="adatsq", weights=WeightSpec(bits=16),
                                         activations=ActivationSpec(bits=4), options=SMALL),
                       progress=False, stats=stats)
    assert policy.weight_bits == 16 and "search" in policy.settings
    assert 3 <= policy.average_activation_bits <= 4.1 + 1e-9


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="calib"):
        Recipe(method="adatsq", options={"calib": "magic"})
    with pytest.raises(ValueError, match="unknown key"):
        Recipe(method="adatsq", options={"temperature": 1.0})
    with pytest.raises(ValueError, match="loss_weights"):
        Recipe(method="adatsq", options={"loss_weights": ()})


def test_mixture_keeps_effective_steps(fisher):
    """Eq. 6 alone can put one layer's weight on one step; the uniform mixture keeps at least
    1 / ((1 - mix)^2 + (2 - mix) mix / T) effective steps."""
    T = fisher.scores.shape[1]
    cold = temporal_weights(fisher.scores, 1e-3)
    assert effective_steps(cold).min() < 1.01
    for mix in (0.25, 0.5, 1.0):
        alpha = temporal_weights(fisher.scores, 1e-3, mix)
        np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-12)
        bound = 1.0 / ((1 - mix) ** 2 + (2 - mix) * mix / T)
        assert (effective_steps(alpha) >= bound - 1e-9).all()
    np.testing.assert_allclose(effective_steps(temporal_weights(fisher.scores, 1.0, 1.0)), T)
    with pytest.raises(ValueError, match="mix"):
        temporal_weights(fisher.scores, 1.0, 1.5)


def test_output_fisher_does_not_depend_on_the_target(calibrated, fisher):
    """The output sensitivity is a positive estimate, different from the velocity Fisher, and
    deterministic for a seed; an unknown target is refused."""
    pipe, _ = calibrated
    out = fisher_information(pipe, PROMPTS, seed=0, micro_batch=2, progress=False,
                             target="output")
    assert out.scores.shape == fisher.scores.shape and (out.scores > 0).all()
    assert not np.allclose(out.scores, fisher.scores, rtol=0.1)
    again = fisher_information(pipe, PROMPTS, seed=0, micro_batch=2, progress=False,
                               target="output")
    np.testing.assert_allclose(again.scores, out.scores, rtol=1e-6)
    with pytest.raises(ValueError, match="target"):
        fisher_information(pipe, PROMPTS, target="loss")


def test_step_loss_sees_guidance(calibrated):
    """The guided step loss compares CFG velocities: it differs from the conditional one, and
    both rank the cheapest candidate (uniform 3 bits) worse than the widest one."""
    _, stats = calibrated
    losses = {}
    for step_loss in ("guided", "conditional"):
        pipe = fresh_copy(calibrated[0])
        recipe = Recipe(method="adatsq", weights=WeightSpec(bits=4),
                        activations=ActivationSpec(bits=4),
                        options={**SMALL, "step_loss": step_loss})
        policy = quantize_(pipe, recipe, progress=False, stats=stats)
        search = policy.settings["search"]
        assert search["step_loss"] == step_loss and search["cfg_scale"] == pipe.cfg_scale == 2.0
        losses[step_loss] = np.array(search["candidate_losses"])
        bits = np.array(search["candidate_bits"])
        assert (losses[step_loss][:, 0] > losses[step_loss][np.arange(len(bits)),
                                                            bits.argmax(1)]).all()
    assert not np.allclose(losses["guided"], losses["conditional"])


def test_selection_prefers_fidelity_when_the_task_metric_ties():
    base = np.random.default_rng(0).integers(0, 2, 40).astype(float)
    tie = base.copy()
    tie[[np.flatnonzero(base == 1)[0], np.flatnonzero(base == 0)[0]]] = [0.0, 1.0]  # swapped
    worse = np.zeros(40)  # significantly below the best: its fidelity cannot save it
    assert select_path([base, tie, worse], [20.0, 25.0, 30.0]) == 1
    assert select_path([np.ones(40), np.zeros(40)], [10.0, 40.0]) == 0
    same = [np.ones(40), np.ones(40)]
    assert select_path(same, [10.0, 40.0]) == 1
    assert select_path([0.5, 0.5], [1.0, 2.0]) == 1  # scalars: only exact ties
    assert select_path([0.6, 0.5], [1.0, 2.0]) == 0


def test_lowrank_variant_is_exact_before_quantization_and_saves(calibrated, tmp_path,
                                                                monkeypatch):
    """adatsq_lr: the 16-bit branch of the rotated weight plus the residual equals the layer; at
    W4A4 it is stored and reloaded bit-exact."""
    from adatsq.methods import get_method
    from adatsq.pipeline import load
    from adatsq.quant.lowrank import proportional_rank
    from adatsq.quant.qlinear import StepTracker
    from adatsq.zoo import registry

    pipe, stats = calibrated
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=16),
                    activations=ActivationSpec(bits=16), options={"lowrank": True,
                                                                  "calib": "none"})
    m = get_method("adatsq")(recipe)
    m.prepare(pipe, stats)
    tracker = StepTracker(pipe.schedule())
    for name, linear in pipe.adapter.quantizable_layers(pipe.transformer).items():
        q = m.quantize_layer(name, linear, stats, tracker)
        assert q.lowrank_down.shape == (proportional_rank(*linear.weight.shape),
                                        linear.in_features)
        x = torch.randn(2, 5, linear.in_features)
        # exact up to the layer's FP16 storage (a wrong split errs by O(1))
        assert (q(x) - linear(x)).abs().max() <= 2e-3 * linear(x).abs().max()
    quantized = fresh_copy(pipe)
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=4), activations=ActivationSpec(
        bits=4), options={**SMALL, "lowrank": True})
    policy = quantize_(quantized, recipe, progress=False, stats=stats)
    save(quantized, policy, tmp_path / "lr")
    monkeypatch.setitem(registry.ENTRIES, pipe.entry.name, pipe.entry)
    loaded, _ = load(tmp_path / "lr")
    want = quantized.generate(PROMPTS[:2], seed=1)
    assert torch.equal(loaded.generate(PROMPTS[:2], seed=1), want)


def test_balanced_variant_saves_and_loads(calibrated, tmp_path, monkeypatch):
    """adatsq_cb: every layer divides its input by the smoothing factors of its calibration
    ranges before the rotation, and the W4A4 artifact reloads bit-exact."""
    from adatsq.pipeline import load
    from adatsq.quant.qlinear import QuantLinear
    from adatsq.quant.smoothing import smooth_layer
    from adatsq.zoo import registry

    pipe, stats = calibrated
    quantized = fresh_copy(pipe)
    fp_layers = pipe.adapter.quantizable_layers(pipe.transformer)
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=4), activations=ActivationSpec(
        bits=4), options={**SMALL, "balance": 0.5})
    policy = quantize_(quantized, recipe, progress=False, stats=stats)
    layers = {n: m for n, m in quantized.transformer.named_modules()
              if isinstance(m, QuantLinear)}
    assert layers.keys() == fp_layers.keys()
    for name, layer in layers.items():
        want = smooth_layer(fp_layers[name].weight, stats.absmax[name], 0.5)[0]
        assert layer.rotate_input and torch.equal(layer.smooth.float(), want), name
    save(quantized, policy, tmp_path / "cb")
    monkeypatch.setitem(registry.ENTRIES, pipe.entry.name, pipe.entry)
    loaded, _ = load(tmp_path / "cb")
    want = quantized.generate(PROMPTS[:2], seed=1)
    assert torch.equal(loaded.generate(PROMPTS[:2], seed=1), want)


def test_figures_of_a_searched_policy(calibrated, tmp_path):
    """Fisher heatmap, bit map, Pareto plot and the Fig. 5 error curves are all written."""
    from adatsq.eval.figures import run_figures

    pipe, stats = calibrated
    fp = fresh_copy(pipe)
    quantized = fresh_copy(pipe)
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=3), activations=ActivationSpec(
        bits=3), options=SMALL)
    policy = quantize_(quantized, recipe, progress=False, stats=stats)
    written = run_figures(policy, stats, fp.transformer, tmp_path)
    names = {p.name for p in written}
    assert {"fisher.png", "bitmap.png", "pareto.png", "calibration_error.png"} <= names
    assert all(p.stat().st_size > 1000 for p in written)
