"""The adapter contract, checked on a tiny random model of every registered adapter."""

import inspect

import pytest
import torch
from tests.models.examples import EXAMPLES, PIPELINES
from tests.models.examples import example as tiny
from torch import nn

from adatsq.models import adapter_for, registered
from adatsq.models.families import FAMILIES
from adatsq.quant.qlinear import StepTracker

ADAPTERS = sorted(registered())


@pytest.fixture(params=ADAPTERS)
def example(request):
    adapter = registered()[request.param]()
    model, latents, cond = tiny(adapter.name)
    return adapter, model, latents, cond


def test_registry_finds_the_adapter(example):
    adapter, model, _, _ = example
    assert type(adapter_for(model)) is type(adapter)


def test_quantizable_layers_are_named_linears_in_blocks(example):
    adapter, model, _, _ = example
    layers = adapter.quantizable_layers(model)
    assert layers, "an adapter must expose quantizable layers"
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        assert isinstance(layer, nn.Linear) and modules[name] is layer
        assert not name.endswith(adapter.skip_suffixes)


def test_denoise_shape_and_determinism(example):
    adapter, model, latents, cond = example
    sigma = torch.full((latents.shape[0],), 0.5)
    with torch.no_grad():
        out = adapter.denoise(model, latents, cond, sigma)
        again = adapter.denoise(model, latents, cond, sigma)
    assert out.shape == latents.shape
    assert torch.equal(out, again)
    assert torch.isfinite(out).all()


def test_every_quantizable_layer_runs_once_per_call(example):
    adapter, model, latents, cond = example
    counts = {}
    layers = adapter.quantizable_layers(model)
    def count(name):
        return lambda m, i, o: counts.__setitem__(name, counts.get(name, 0) + 1)

    hooks = [m.register_forward_hook(count(n)) for n, m in layers.items()]
    with torch.no_grad():
        adapter.denoise(model, latents, cond, torch.full((latents.shape[0],), 0.3))
    for h in hooks:
        h.remove()
    assert counts == {n: 1 for n in layers}


def test_timestep_reaches_the_tracker(example):
    adapter, model, latents, cond = example
    sigmas = torch.tensor([1.0, 0.6, 0.2])
    tracker = StepTracker(adapter.model_timestep(sigmas))
    handle = tracker.attach(model, adapter.timestep_of)
    with torch.no_grad():
        for i, s in enumerate(sigmas):
            adapter.denoise(model, latents, cond, torch.full((latents.shape[0],), float(s)))
            assert tracker.index == i
    handle.remove()


def test_timestep_of_reads_the_call_positional_or_keyword(example):
    adapter, model, latents, cond = example
    sigma = torch.full((latents.shape[0],), 0.4)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, k: calls.append((a, k)),
                                             with_kwargs=True)
    with torch.no_grad():
        adapter.denoise(model, latents, cond, sigma)
    handle.remove()
    [(args, kwargs)] = calls
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    expected = adapter.model_timestep(sigma)
    assert torch.equal(adapter.timestep_of(args, kwargs), expected)
    assert torch.equal(adapter.timestep_of(bound.args, bound.kwargs), expected)
    assert torch.equal(adapter.timestep_of((), dict(bound.arguments)), expected)


def test_every_adapter_has_an_example_and_every_family_an_adapter():
    assert set(EXAMPLES) == set(registered())
    classes = {c for a in registered().values() for c in a.model_classes}
    assert {f.transformer_class for f in FAMILIES.values()} <= classes
    assert set(FAMILIES) >= {"FluxPipeline", "ZImagePipeline", "WanPipeline"}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_family_has_a_tiny_pipeline(name):
    """The integration tests run each example of :data:`PIPELINES`; every registered family
    needs one, of its class, with a transformer of the family's class."""
    assert {e.family for e in PIPELINES.values()} == set(FAMILIES)
    e = PIPELINES[name]
    pipe = e.build()
    assert type(pipe).__name__ == e.family
    assert type(pipe.transformer).__name__ == FAMILIES[e.family].transformer_class
