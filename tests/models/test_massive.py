"""Massive-activation variants: the same function, a few hidden channels k times larger."""

import copy

import numpy as np
import pytest
import torch
from tests.models.examples import example

from adatsq.bench import activation_outliers
from adatsq.config import Recipe
from adatsq.models import massive_activations_, registered
from adatsq.pipeline import load, load_pipeline, quantize_, save
from adatsq.zoo.pipeline import DigitPipeline

#: outputs of a transformed model equal the original's within this fraction of their largest value
TOLERANCE = 1e-5


def consumer_inputs(adapter, model, latents, cond, layers):
    """The output of one call and the per-channel input absmax (d,) of every layer in ``layers``."""
    absmax = {}

    def record(name):
        return lambda m, args, out: absmax.__setitem__(
            name, args[0].abs().flatten(0, -2).amax(0))

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in layers]
    with torch.no_grad():
        out = adapter.denoise(model, latents, cond, torch.full((latents.shape[0],), 0.4))
    for h in hooks:
        h.remove()
    return out, absmax


@pytest.mark.parametrize("strength", [10.0, 100.0])
@pytest.mark.parametrize("family", ["flux", "zimage"])
def test_same_function_and_chosen_channels_grow_by_strength(family, strength):
    adapter = registered()[family]()
    model, latents, cond = example(adapter.name)
    changed = copy.deepcopy(model)
    info = massive_activations_(changed, strength)
    sites = adapter.modulation_sites(model)
    assert info["layers"] == [n for s in sites for n in s.consumers]
    assert info["strength"] == strength and len(info["channels"]) == 2
    before_out, before = consumer_inputs(adapter, model, latents, cond, info["layers"])
    after_out, after = consumer_inputs(adapter, changed, latents, cond, info["layers"])
    error = (after_out - before_out).abs().max() / before_out.abs().max()
    assert error <= TOLERANCE
    chosen = torch.tensor(info["channels"])
    others = torch.ones(before[info["layers"][0]].numel(), dtype=torch.bool)
    others[chosen] = False
    for name in info["layers"]:
        growth = after[name] / before[name]  # (d,)
        torch.testing.assert_close(growth[chosen], torch.full((2,), strength), rtol=1e-4, atol=0)
        torch.testing.assert_close(growth[others], torch.ones(int(others.sum())), rtol=1e-4,
                                   atol=0)


def test_probe_measures_the_channels_on_the_models_inputs():
    adapter = registered()["flux"]()
    model, latents, cond = example(adapter.name)
    calls = []

    def probe(m):
        calls.append(m)
        adapter.denoise(m, latents, cond, torch.full((2,), 0.4))

    info = massive_activations_(model, 30.0, channels=3, probe=probe)
    assert calls == [model] and len(info["channels"]) == 3
    with pytest.raises(ValueError, match="did not run"):
        massive_activations_(copy.deepcopy(model), 30.0, probe=lambda m: None)


@pytest.mark.parametrize("strength, channels", [(1.0, 2), (0.5, 2), (float("nan"), 2),
                                                (float("inf"), 2), (30.0, 0), (30.0, 64)])
def test_bad_strength_or_channels_leave_the_model_unchanged(strength, channels):
    model, _, _ = example("flux")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as info:
        massive_activations_(model, strength, channels)
    assert "\n" not in str(info.value)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_families_without_sites_and_quantized_models_are_refused():
    wan, _, _ = example("wan")
    with pytest.raises(ValueError, match="defined for FluxTransformer2DModel.*"
                                         "WanTransformer3DModel has none"):
        massive_activations_(wan, 30.0)
    flux, _, _ = example("flux")
    flux.transformer_blocks[0].attn.to_q = torch.nn.Identity()  # e.g. a quantized layer
    with pytest.raises(ValueError, match="nn.Linear at transformer_blocks.0.attn.to_q"):
        massive_activations_(flux, 30.0)


@pytest.fixture(scope="module")
def flux():
    return load_pipeline("flux-digits")


@pytest.fixture(scope="module")
def flux_ma30():
    return load_pipeline("flux-digits@ma30")


def test_zoo_variant_generates_the_same_images_and_scores(flux, flux_ma30):
    assert flux_ma30.name == "flux-digits@ma30"
    evaluation = flux.task.evaluation_set(2)
    assert len(evaluation.prompts) == 12
    ref = flux.generate(evaluation.prompts, seed=0, steps=4)
    out = flux_ma30.generate(evaluation.prompts, seed=0, steps=4)
    assert (out - ref).abs().max() <= 1e-4  # images in [-1, 1]; measured 1e-5
    assert not torch.equal(out, ref)  # a different model, not the same one loaded twice
    score, score_ma30 = (pipe.task.score(images, evaluation.specs)
                         for pipe, images in ((flux, ref), (flux_ma30, out)))
    assert score_ma30["eval"]["total"] == score["eval"]["total"]
    assert score_ma30["per_sample"] == score["per_sample"]


def test_zoo_variant_reaches_its_outlier_ratio(flux, flux_ma30):
    prompts = flux.calibration_prompts(4)
    affected = [n for s in flux.adapter.modulation_sites(flux.transformer) for n in s.consumers]
    ratio = {name: {n: max(r) for n, r in activation_outliers(pipe, prompts, 4)[
        "outlier_ratio"].items()} for name, pipe in (("base", flux), ("ma30", flux_ma30))}
    assert min(ratio["ma30"][n] for n in affected) >= 30  # measured 42
    assert max(ratio["base"][n] for n in affected) < 30  # measured 9
    assert np.median(list(ratio["base"].values())) < 10  # measured 4.4


def test_artifact_of_a_variant_loads_as_the_variant(flux_ma30, tmp_path):
    pipe = DigitPipeline(flux_ma30.entry, copy.deepcopy(flux_ma30.transformer), flux_ma30.task)
    policy = quantize_(pipe, Recipe(method="rtn"), progress=False)
    save(pipe, policy, tmp_path / "art")
    loaded, _ = load(tmp_path / "art")
    assert loaded.name == "flux-digits@ma30" and loaded.entry.massive_strength == 30
    prompts = ["a red 3", "two 7s"]
    torch.testing.assert_close(loaded.generate(prompts, steps=2), pipe.generate(prompts, steps=2),
                               rtol=0, atol=0)


@pytest.mark.parametrize("name, error, match", [
    ("flux-digits@ma1", ValueError, "> 1"), ("flux-digits@ma-5", ValueError, "> 1"),
    ("flux-digits@maxx", ValueError, "> 1"), ("flux-digits@mc30", KeyError, "unknown suffix"),
    ("zimage-digits@mb30", ValueError, "needs modulations with a shift"),
    ("wan-digits@ma30", ValueError, "has none"), ("flux-xl@ma30", ValueError, "unknown model")])
def test_bad_variant_names_end_with_one_line_errors(name, error, match):
    with pytest.raises(error, match=match) as info:
        load_pipeline(name)
    assert "\n" not in str(info.value)


def _smoothed_weights(model, latents, cond, layers, alpha=0.5):
    """Every layer's SmoothQuant-smoothed weight ``W diag(s)`` on the inputs of one call."""
    from adatsq.quant.smoothing import smooth_weight, smoothing_factors
    _, absmax = consumer_inputs(registered()["flux"](), model, latents, cond, layers)
    return {n: smooth_weight(model.get_submodule(n).weight,
                             smoothing_factors(absmax[n], model.get_submodule(n).weight, alpha))
            for n in layers}


@pytest.mark.parametrize("strength", [10.0, 110.0])
def test_bias_variant_keeps_the_function_and_smoothing_cannot_undo_it(strength):
    adapter = registered()["flux"]()
    model, latents, cond = example("flux")
    absorbable, biased = copy.deepcopy(model), copy.deepcopy(model)
    massive_activations_(absorbable, strength)
    info = massive_activations_(biased, strength, variant="bias", probe=lambda m: adapter.denoise(
        m, latents, cond, torch.full((latents.shape[0],), 0.4)))
    assert info["variant"] == "bias" and set(info["offsets"]) == set(info["modulations"])
    layers = info["layers"]
    before_out, before = consumer_inputs(adapter, model, latents, cond, layers)
    after_out, after = consumer_inputs(adapter, biased, latents, cond, layers)
    assert (after_out - before_out).abs().max() / before_out.abs().max() <= TOLERANCE
    chosen = torch.tensor(info["channels"])
    for name in layers:  # the chosen channels stand about `strength` medians out
        ratio = after[name][chosen] / after[name].median()
        assert ((ratio > 0.5 * strength) & (ratio < 2 * strength)).all(), (name, ratio)
    # the consumers keep their weights and carry the offset in their bias
    for name in layers:
        torch.testing.assert_close(biased.get_submodule(name).weight,
                                   model.get_submodule(name).weight, rtol=0, atol=0)
        assert not torch.equal(biased.get_submodule(name).bias, model.get_submodule(name).bias)
    # SmoothQuant undoes the absorbable variant exactly (up to the FP16 factor) but not this one
    base = _smoothed_weights(model, latents, cond, layers)
    undone = _smoothed_weights(absorbable, latents, cond, layers)
    kept = _smoothed_weights(biased, latents, cond, layers)
    for name in layers:
        scale = base[name].abs().max()
        assert (undone[name] - base[name]).abs().max() <= 1e-3 * scale
        assert (kept[name] - base[name]).abs().max() >= 0.5 * scale


def test_bias_variant_is_refused_without_modulation_shifts_and_unknown_variants():
    zimage, _, _ = example("zimage")
    with pytest.raises(ValueError, match="needs modulations with a shift; "
                                         "ZImageTransformer2DModel has none"):
        massive_activations_(zimage, 30.0, variant="bias")
    flux, _, _ = example("flux")
    state = copy.deepcopy(flux.state_dict())
    with pytest.raises(ValueError, match="unknown massive-activation variant 'scaled'"):
        massive_activations_(flux, 30.0, variant="scaled")
    assert all(torch.equal(state[k], v) for k, v in flux.state_dict().items())


def test_rotated_ratio_states_strengths_comparably_with_flux_dev():
    from adatsq.models.massive import rotated_ratio
    assert rotated_ratio(110.0, 128) == pytest.approx(110 / 128 ** 0.5)
    assert rotated_ratio(10.0, 3072) < 0.2  # Flux-Dev's width dilutes 10x to 0.18x


def test_zoo_names_the_bias_variant():
    from adatsq.zoo.registry import get
    entry = get("flux-digits@mb30")
    assert (entry.massive_variant, entry.massive_strength) == ("bias", 30.0)
    assert get("flux-digits@ma30").massive_variant == "absorbable"
    with pytest.raises(KeyError, match="known: @ma<strength> and @mb<strength>"):
        get("flux-digits@mc30")
    with pytest.raises(ValueError, match="e.g. flux-digits@mb30"):
        get("flux-digits@mbx")
