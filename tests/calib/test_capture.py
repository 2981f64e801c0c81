import pytest
import torch

from adatsq.calib.capture import CaptureConfig, capture, memory_estimate


def test_capture_matches_manual_statistics(tiny_pipeline):
    pipe = tiny_pipeline
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    name = next(iter(layers))
    seen = []
    handle = layers[name].register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    stats = capture(pipe, ["a 3", "two 5s"], seed=0, progress=False)
    handle.remove()
    T = pipe.default_steps
    assert len(seen) == T and stats.steps == T
    for t in range(T):
        X = seen[t].reshape(-1, seen[t].shape[-1])
        torch.testing.assert_close(stats.hessian[name][t], X.T @ X, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats.absmax[name][t], X.abs().amax(0))
        assert stats.rows[name][t] == X.shape[0]
    assert stats.latents.shape[0] == T
    H = stats.hessian_sum(name)
    assert H.shape == (layers[name].in_features,) * 2


def test_without_hessians_the_other_statistics_are_the_same(tiny_pipeline):
    per_step = capture(tiny_pipeline, ["a 3"], progress=False)
    bare = capture(tiny_pipeline, ["a 3"], config=CaptureConfig(hessian="none"), progress=False)
    assert not bare.hessian and bare.nbytes() < per_step.nbytes()
    for name in per_step.layers:
        assert torch.equal(bare.absmax[name], per_step.absmax[name])
        assert torch.equal(bare.minmax[name], per_step.minmax[name])
    with pytest.raises(KeyError, match="per_step"):
        bare.hessian_sum(per_step.layers[0])


def test_memory_estimate_and_bad_config(tiny_pipeline):
    layers = tiny_pipeline.adapter.quantizable_layers(tiny_pipeline.transformer)
    per = sum(m.in_features ** 2 for m in layers.values()) * 4
    assert memory_estimate(layers, 50) == 50 * per
    assert memory_estimate(layers, 50, "none") == 0
    with pytest.raises(ValueError, match="hessian must be"):
        CaptureConfig(hessian="all")


def test_nan_calibration_is_refused(tiny_pipeline):
    pipe = tiny_pipeline
    with torch.no_grad():
        pipe.transformer.x_embedder.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite activations"):
        capture(pipe, ["a 3"], progress=False)


def test_streamed_calibration_equals_one_capture(tiny_pipeline):
    """A memory budget below the model's Hessians: groups of layers, the same quantized model."""
    from tests.conftest import fresh_copy

    from adatsq.config import ActivationSpec, CalibrationSpec, Recipe, WeightSpec
    from adatsq.pipeline import layer_groups, quantize_

    layers = tiny_pipeline.adapter.quantizable_layers(tiny_pipeline.transformer)
    budget = 8 * memory_estimate(dict(list(layers.items())[:1]), 4) / 2**30
    groups = layer_groups(layers, 4, "per_step", budget)
    assert len(groups) >= 2 and [n for g in groups for n in g] == list(layers)

    outputs = []
    for memory_gb in (8.0, budget):
        pipe = fresh_copy(tiny_pipeline)
        recipe = Recipe(method="gptq", weights=WeightSpec(bits=4),
                        activations=ActivationSpec(bits=8),
                        calibration=CalibrationSpec(num_prompts=3, memory_gb=memory_gb))
        quantize_(pipe, recipe, progress=False)
        outputs.append(pipe.generate(["a 3", "two 5s"], seed=0))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)

    q_dit = Recipe(method="q_dit", calibration=CalibrationSpec(num_prompts=3, memory_gb=budget))
    with pytest.raises(ValueError, match="all layers at once"):
        quantize_(fresh_copy(tiny_pipeline), q_dit, progress=False)
