from dataclasses import replace

import numpy as np
import pytest
import torch

from adatsq.models import adapter_for
from adatsq.zoo import registry
from adatsq.zoo.codec import codec_for


@pytest.mark.parametrize("name", sorted(registry.ENTRIES))
def test_every_entry_trains_one_step_on_its_own_data(name):
    """Build, text conditioning, latents and flow-matching loss of each embedded model."""
    entry = registry.get(name)
    torch.manual_seed(0)
    model = entry.build_model()
    assert type(model).__name__ == entry.model_class
    prompts = ["", *entry.all_prompts()]
    table = {"index": {p: i % 4 for i, p in enumerate(prompts)},  # random stand-in embeddings
             "states": torch.randn(4, entry.text_length, 384), "pooled": torch.randn(4, 384)}
    loss = entry.training_loss(model, np.random.default_rng(0), torch.Generator().manual_seed(0),
                               2, 0.1, table)
    assert torch.isfinite(loss) and loss.item() > 0.1  # an untrained model is far from zero
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(registry.ENTRIES))
def test_latents_round_trip_to_samples(name):
    entry = registry.get(name)
    codec = codec_for(entry.model_class)
    samples = torch.rand(2, *entry.sample_shape) * 2 - 1
    latents = codec.to_latents(samples)
    torch.testing.assert_close(codec.from_latents(latents, entry.sample_shape), samples,
                               rtol=0, atol=0)
    # the latents feed the transformer: its input shape (one sample at a time)
    model = entry.build_model()
    assert adapter_for(model).quantizable_layers(model)
    if entry.model_class == "FluxTransformer2DModel":
        assert latents.shape[-1] == model.config.in_channels
    else:
        assert latents.shape[1] == model.config.in_channels


def test_still_images_fold_like_flux_tokens_and_one_frame_clips():
    """A (3, 16, 16) image is 16 tokens of 48 values for every class; Wan sees it as a clip."""
    images = torch.rand(2, 3, 16, 16)
    flux = codec_for("FluxTransformer2DModel").to_latents(images)
    zimage = codec_for("ZImageTransformer2DModel").to_latents(images)
    wan = codec_for("WanTransformer3DModel").to_latents(images)
    assert flux.shape == (2, 16, 48) and zimage.shape == (2, 12, 8, 8)
    assert wan.shape == (2, 12, 1, 8, 8) and torch.equal(wan[:, :, 0], zimage)
    back = codec_for("WanTransformer3DModel").from_latents(wan, (3, 16, 16))
    assert torch.equal(back, images)
    with pytest.raises(ValueError, match="no embedded model"):
        codec_for("SD3Transformer2DModel")


def test_video_entry_describes_clips_and_unknown_names_are_refused():
    wan = registry.get("wan-digits")
    assert wan.is_video and wan.sample_shape == (3, wan.frames, 16, 16)
    assert registry.get("flux-digits-schnell").weights == registry.get("flux-digits").weights
    with pytest.raises(KeyError, match="known"):
        registry.get("flux-digits-xl")


def test_training_settings_come_from_the_entry_unless_given(monkeypatch, tmp_path):
    from adatsq.zoo import train

    seen = []
    monkeypatch.setattr(train, "train", lambda name, out, cfg, *a: seen.append(cfg) or out)
    train.main(["zimage-digits", "--out", str(tmp_path)])
    train.main(["zimage-digits", "--out", str(tmp_path), "--steps", "7"])
    train.main(["flux-digits", "--out", str(tmp_path)])
    entry = registry.get("zimage-digits").training
    assert (seen[0].steps, seen[0].batch_size) == (entry["steps"], entry["batch_size"])
    assert (seen[1].steps, seen[1].batch_size) == (7, entry["batch_size"])
    assert seen[2] == train.TrainConfig()


def test_massive_variants_are_entries_of_the_base_weights(tmp_path):
    entry, base = registry.get("flux-digits-schnell@ma10"), registry.get("flux-digits-schnell")
    assert (entry.name, entry.massive_strength, base.massive_strength) == (
        "flux-digits-schnell@ma10", 10.0, None)
    assert (entry.weights, entry.steps, entry.guidance_scale, entry.transformer_config) == (
        base.weights, base.steps, base.guidance_scale, base.transformer_config)
    assert registry.get("zimage-digits@ma2.5").massive_strength == 2.5
    assert sorted(registry.ENTRIES) == ["flux-digits", "flux-digits-schnell", "wan-digits",
                                        "zimage-digits"]
    assert registry.is_zoo_name("flux-digits@ma30") and registry.is_zoo_name("flux-digits")
    assert not registry.is_zoo_name("flux-xl@ma30")
    assert not registry.is_zoo_name("black-forest-labs/FLUX.1-dev")
    with pytest.raises(ValueError, match="export its base model"):
        entry.export(tmp_path / "missing.safetensors", None)


@pytest.mark.parametrize("name, error", [
    ("flux-digits@ma1", ValueError), ("flux-digits@ma", ValueError),
    ("flux-digits@maxx", ValueError), ("flux-digits@manan", ValueError),
    ("flux-digits@mainf", ValueError),
    ("wan-digits@ma30", ValueError), ("flux-digits@x30", KeyError), ("flux-digits@", KeyError),
    ("flux-xl@ma30", KeyError)])
def test_bad_variant_names_are_refused_in_one_line(name, error):
    with pytest.raises(error) as info:
        registry.get(name)
    message = info.value.args[0]
    assert "\n" not in message and name.partition("@")[0] in message


def test_flow_shift_of_an_entry_reaches_the_sampler_and_the_schedule():
    """wan-digits samples with a flow shift like Wan2.1: the sampler's noise levels and the
    schedule quantization tracks follow the entry's shift."""
    from tests.conftest import tiny_entry

    from adatsq.models.sampling import sigmas
    from adatsq.zoo.pipeline import DigitPipeline
    from adatsq.zoo.registry import get

    assert get("wan-digits").shift == 5.0 and get("flux-digits").shift == 1.0
    entry = replace(tiny_entry(), shift=5.0)
    torch.manual_seed(0)
    pipe = DigitPipeline(entry, entry.build_model().eval().requires_grad_(False))
    seen = []
    pipe.generate(["a 3"], seed=0, callback=lambda i, sigma, x: seen.append(float(sigma[0])))
    torch.testing.assert_close(torch.tensor(seen), sigmas(entry.steps, 5.0))
    assert not torch.allclose(sigmas(entry.steps, 5.0), sigmas(entry.steps))
    torch.testing.assert_close(pipe.schedule(), pipe.adapter.model_timestep(sigmas(4, 5.0)))
