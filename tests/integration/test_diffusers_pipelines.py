"""Real diffusers pipelines (Flux, Z-Image, Wan) from a folder: tiny ones built and saved here.

Loading by folder -> quantization -> artifact -> reloading gives bit-exact outputs; our sampler,
prompt encoding and VAE decoding reproduce each diffusers pipeline's own ``__call__``; the
command line works end to end and refuses bad input with one line and exit code 2.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from PIL import Image

from adatsq.cli import main
from adatsq.config import ActivationSpec, CalibrationSpec, Recipe, WeightSpec
from adatsq.io import ArtifactError
from adatsq.models import families, sources
from adatsq.models.base import Pipeline
from adatsq.models.pipelines import DiffusersPipeline
from adatsq.pipeline import load, load_pipeline, quantize_, save
from tests.models.examples import PIPELINES

pytestmark = pytest.mark.slow  # end to end (make test-unit skips it)

BUILDERS = {name: e.build for name, e in PIPELINES.items()}
SIZES = {name: e.sizes for name, e in PIPELINES.items()}
SHAPES = {name: e.shape for name, e in PIPELINES.items()}
PROMPTS = ["a red cat", "two dogs to the left of a bench"]
W4A4 = dict(weights=WeightSpec(bits=4), activations=ActivationSpec(bits=4))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny pipeline saved with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("pipelines")
    out = {}
    for name, build in BUILDERS.items():
        build().save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _load(folders, name, **extra) -> DiffusersPipeline:
    return load_pipeline(folders[name], **SIZES[name], **extra)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_quantize_save_load_generate_is_bit_exact(folders, tmp_path, name):
    pipe = _load(folders, name)
    assert isinstance(pipe, DiffusersPipeline) and isinstance(pipe, Pipeline)
    fp = pipe.generate(PROMPTS, seed=3, steps=2)
    assert fp.shape == (2, *SHAPES[name]) and fp.dtype == torch.float32
    assert fp.abs().max() <= 1 and fp.std() > 0.01
    layers = set(pipe.adapter.quantizable_layers(pipe.transformer))
    recipe = Recipe(method="rtn", **W4A4, calibration=CalibrationSpec(num_prompts=2, steps=2))
    policy = quantize_(pipe, recipe, progress=False)
    assert set(policy.layers) == layers and layers
    before = pipe.generate(PROMPTS, seed=3, steps=2)
    assert not torch.equal(before, fp)
    save(pipe, policy, tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["model"] == name  # the folder's name: no path of this machine
    assert manifest["sampling"]["height"] == SIZES[name]["height"]
    reloaded, policy2 = load(tmp_path / "art", base=folders[name])
    assert reloaded.sampling == pipe.sampling and policy2.schedule == policy.schedule
    after = reloaded.generate(PROMPTS, seed=3, steps=2)
    assert torch.equal(after, before)


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return (images / 2 + 0.5).clamp(0, 1)


def call_diffusers(pipe, sampling, steps: int, latents: torch.Tensor) -> torch.Tensor:
    """:data:`PROMPTS` through the diffusers pipeline's own ``__call__`` at ``sampling``'s
    settings from ``latents``: pixels in [0, 1], video as (B, C, F, H, W) like ours."""
    s = sampling
    video = {} if s.frames is None else {"num_frames": s.frames}
    # a copy: diffusers' ZImagePipeline formats the caller's prompt list in place
    out = pipe(list(PROMPTS), height=s.height, width=s.width, num_inference_steps=steps,
               latents=latents.clone(), guidance_scale=s.guidance_scale,
               max_sequence_length=s.max_sequence_length, output_type="pt", return_dict=False,
               **video)[0].float()
    return out if s.frames is None else out.permute(0, 2, 1, 3, 4)  # (B, F, C, ..) -> (B, C, F, ..)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_generate_reproduces_the_diffusers_pipeline(folders, name):
    """Prompt encoding, latent layout, the pipeline's own solver (Euler; Wan's multistep UniPC,
    whose second and third steps use the earlier velocities), guidance and VAE decoding as
    diffusers' ``__call__`` does them: within 1e-4 for every family."""
    pipe = _load(folders, name)
    assert type(pipe.scheduler(3)) is type(pipe.pipe.scheduler)  # the pipeline's own solver
    ours = pipe.generate(PROMPTS, seed=5, steps=3)
    theirs = call_diffusers(pipe.pipe, pipe.sampling, 3, pipe.noise(len(PROMPTS), seed=5))
    torch.testing.assert_close(_to_unit(ours), theirs, rtol=0, atol=1e-4)
    timesteps = pipe.pipe.scheduler.timesteps.double()  # the transformer saw these at each step
    torch.testing.assert_close(pipe.schedule(3).double(),
                               pipe.adapter.model_timestep(timesteps / 1000), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name, keys", [
    ("flux-schnell", {"encoder_hidden_states", "pooled_projections", "img_ids"}),
    ("flux-dev", {"encoder_hidden_states", "pooled_projections", "img_ids", "guidance"}),
    ("zimage", {"cap_feats", "cap_mask"}),
    ("wan", {"encoder_hidden_states"})])
def test_conditioning_has_the_adapter_keys_and_one_length(folders, name, keys):
    pipe = _load(folders, name)
    cond, null = pipe.encode(PROMPTS), pipe.null_conditioning()
    assert set(cond) == set(null) == keys
    for k in keys:  # batch-first, the same shape for every prompt and the empty one
        assert cond[k].shape[0] == 2 and cond[k].shape[1:] == null[k].shape[1:]
    if name == "zimage":
        lengths = cond["cap_mask"].sum(1)
        assert lengths[0] < lengths[1] < cond["cap_mask"].shape[1]
        assert cond["cap_feats"][0, lengths[0]:].abs().sum() == 0
    if name == "flux-dev":
        assert cond["guidance"].tolist() == [3.5, 3.5]


def test_scheduler_shift_is_the_pipelines():
    """Flux's resolution-dependent shift (``exp(mu)``), a static one, Wan's UniPC flow shift."""
    dynamic = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
    assert families.scheduler_shift(dynamic, 256) == pytest.approx(math.exp(0.5))
    assert families.scheduler_shift(dynamic, 4096) == pytest.approx(math.exp(1.15))
    assert families.scheduler_shift({"shift": 3.0}, 4096) == 3.0
    assert families.scheduler_shift({"use_flow_sigmas": True, "flow_shift": 5.0}, 1) == 5.0


def test_adatsq_selects_by_fidelity_without_a_task_metric(folders):
    pipe = _load(folders, "flux-dev")
    prompts, metric = pipe.selection_set(2, seed=2)
    assert metric is None and prompts == pipe.calibration_prompts(2, seed=2)
    options = dict(fisher_prompts=2, select_prompts=2, select_paths=2, num_candidates=3,
                   num_clusters=2)
    recipe = Recipe(method="adatsq", **W4A4, calibration=CalibrationSpec(num_prompts=2, steps=3),
                    options=options)
    policy = quantize_(pipe, recipe, progress=False)
    search = policy.settings["search"]
    assert all(task == fidelity for task, fidelity in search["selection_scores"])
    assert policy.average_activation_bits <= 4.1 + 1e-9
    assert all(len(layer.activation_bits) == 3 for layer in policy.layers.values())
    scores = torch.tensor(policy.settings["fisher"]["scores"])
    assert scores.shape == (len(policy.layers), 3) and (scores > 0).all()
    assert pipe.generate(PROMPTS[:1], steps=3).shape == (1, *SHAPES["flux-dev"])


def test_calibration_prompts_from_the_package_or_a_file(folders, tmp_path):
    pipe = _load(folders, "zimage")
    pool = pipe._prompts()
    assert len(pool) == 204 and len(set(pool)) == 204
    drawn = pipe.calibration_prompts(32, seed=1)
    assert len(set(drawn)) == 32 and drawn == pipe.calibration_prompts(32, seed=1)
    assert drawn != pipe.calibration_prompts(32, seed=2)
    own = tmp_path / "prompts.txt"
    own.write_text("# mine\na cat\n\na dog\n")
    pipe = _load(folders, "zimage", calibration_file=str(own))
    cycled = pipe.calibration_prompts(5, seed=0)  # each pass over the file in a new order
    assert sorted(Counter(cycled).values()) == [2, 3] and set(cycled[:2]) == {"a cat", "a dog"}


@pytest.mark.parametrize("name", ["zimage", "wan"])
def test_cli_quantize_then_generate_from_the_artifact(folders, tmp_path, capsys, name):
    prompts = tmp_path / "calib.txt"
    prompts.write_text("a blue car\nthree apples\n")
    size = [f"--{k}={v}" for k, v in SIZES[name].items() if k != "guidance_scale"]
    video = name == "wan"
    art, sample = tmp_path / "art", tmp_path / ("sample.gif" if video else "sample.png")
    assert main(["quantize", folders[name], "--method", "rtn", "--calib-prompts", "2",
                 "--calib-prompts-file", str(prompts), "--steps", "2", "--out", str(art),
                 *size]) == 0
    assert f"wrote {art}" in capsys.readouterr().out
    # the artifact records the folder's name only: elsewhere, --base says where it is
    assert "--base" in _error(capsys, ["generate", "--artifact", str(art), "--prompt", "a cat",
                                       "--out", str(sample)])
    assert main(["generate", "--artifact", str(art), "--base", folders[name], "--prompt",
                 "a cat", "--steps", "2", "--out", str(sample)]) == 0
    shape = SHAPES[name]
    with Image.open(sample) as image:  # the sample at the size it was made at, every frame
        assert image.size == (shape[-1], shape[-2])
        assert getattr(image, "n_frames", 1) == (shape[1] if video else 1)


def _error(capsys, argv, loaded: bool = False) -> str:
    """The error line; alone on stderr unless the pipeline ``loaded`` (diffusers' loading bars)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if loaded:
        err = err.splitlines()[-1]
    assert err.startswith("adatsq: error:") and "\n" not in err
    return err


def test_bad_models_are_one_line_errors(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-folder")
    assert "no such pipeline folder" in _error(capsys, ["quantize", missing, "--out", "x"])
    hub = ["generate", "nobody-adatsq/no-such-model", "--prompt", "a cat"]
    assert "local Hugging Face cache" in _error(capsys, hub)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    assert "local Hugging Face cache" in _error(capsys, hub)
    (tmp_path / "plain").mkdir()
    assert "no model_index.json" in _error(capsys, ["generate", str(tmp_path / "plain"),
                                                    "--prompt", "a cat"])
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    assert "not supported" in _error(capsys, ["generate", str(other), "--prompt", "a cat"])
    assert "multiples of 4" in _error(capsys, ["generate", folders["zimage"], "--prompt", "a",
                                               "--height", "18"], loaded=True)
    assert "calibration prompt file" in _error(capsys, [
        "quantize", folders["zimage"], "--calib-prompts-file", "missing.txt", "--out", "x"],
        loaded=True)
    assert "only for diffusers" in _error(capsys, [
        "quantize", "flux-digits", "--height", "32", "--out", "x"])


def test_an_artifact_is_checked_against_its_model_folder(folders, tmp_path):
    """A manifest whose transformer config is not the folder's is refused by key, before the
    weights are read."""
    pipe = _load(folders, "flux-schnell")
    recipe = Recipe(method="rtn", **W4A4, calibration=CalibrationSpec(num_prompts=2, steps=2))
    save(pipe, quantize_(pipe, recipe, progress=False), tmp_path / "art")
    manifest_path = tmp_path / "art" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["axes_dims_rope"] = list(reversed(manifest["config"]["axes_dims_rope"]))
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="axes_dims_rope="):
        load(tmp_path / "art", base=folders["flux-schnell"])
    manifest["model_class"] = "WanTransformer3DModel"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="holds a WanTransformer3DModel"):
        load(tmp_path / "art", base=folders["flux-schnell"])


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_transformer_is_read_as_diffusers_loads_it(folders, name, dtype):
    """Read tensor by tensor into a meta-device skeleton (one copy of the weights, no memory
    map), the transformer equals diffusers' own loading bit for bit, in its dtype."""
    import diffusers

    cls_name = type(BUILDERS[name]().transformer).__name__
    ours = sources.read_transformer(folders[name], cls_name, dtype, True)
    theirs = getattr(diffusers, cls_name).from_pretrained(f"{folders[name]}/transformer",
                                                          torch_dtype=dtype)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert not any(p.is_meta for p in ours.parameters())
    assert not ours.training
