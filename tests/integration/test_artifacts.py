"""Artifacts that travel and fit diffusers, on tiny pipelines built and saved here.

A copied artifact loads without the folder it was made from; diffusers' own pipelines take the
quantized transformer (``transformer=load_transformer(art)``) and sample as adatsq does; plain
diffusers refuses the folder rather than build random weights; ``save_pretrained`` writes an
artifact; ``quantize_`` takes a diffusers pipeline object; no file names a path of this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import diffusers
import pytest
import torch

from adatsq.config import CalibrationSpec, Recipe
from adatsq.io import ArtifactError
from adatsq.pipeline import load, load_pipeline, load_transformer, quantize_, save
from adatsq.quant.qlinear import QuantLinear
from tests.integration.test_diffusers_pipelines import (
    BUILDERS,
    PROMPTS,
    SIZES,
    W4A4,
    call_diffusers,
)
from tests.models.examples import one_per_family

pytestmark = pytest.mark.slow  # end to end (make test-unit skips it)

RECIPE = Recipe(method="rtn", **W4A4, calibration=CalibrationSpec(num_prompts=2, steps=2))
FAMILIES = one_per_family()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Per family: the pipeline folder, an artifact of it, and its samples before saving."""
    torch.set_num_threads(1)  # as the tests compare against: A4 codes flip with float order
    root = tmp_path_factory.mktemp("made")
    out = {}
    old = os.umask(0o022)
    try:
        for name in FAMILIES:
            folder = root / name
            BUILDERS[name]().save_pretrained(folder)
            pipe = load_pipeline(str(folder), **SIZES[name])
            policy = quantize_(pipe, RECIPE, progress=False)
            art = save(pipe, policy, root / f"{name}-w4a4", command=f"adatsq quantize {name}")
            out[name] = {"folder": folder, "art": art, "pipe": pipe,
                         "samples": pipe.generate(PROMPTS, seed=3, steps=2)}
    finally:
        os.umask(old)
    return out


def test_a_copied_artifact_loads_bit_identically_without_its_source(made, tmp_path):
    m = made[FAMILIES[0]]
    elsewhere = tmp_path / "moved" / "art"
    shutil.copytree(m["art"], elsewhere)
    base = tmp_path / "base-copy"
    shutil.copytree(m["folder"], base)
    source = tmp_path / "gone"  # the maker's folder is gone: the recorded name resolves nowhere
    assert not source.exists()
    with pytest.raises(ArtifactError, match="pass base="):
        load(elsewhere)
    pipe, policy = load(elsewhere, base=str(base))
    assert torch.equal(pipe.generate(PROMPTS, seed=3, steps=2), m["samples"])
    transformer = load_transformer(elsewhere)  # the artifact alone
    assert transformer.adatsq_policy == policy
    assert any(isinstance(q, QuantLinear) for q in transformer.modules())


@pytest.mark.parametrize("name", FAMILIES)
def test_no_path_of_this_machine_in_any_artifact_file(made, name):
    art = made[name]["art"]
    machine = {str(art.parent), str(made[name]["folder"]), os.getcwd(), os.path.expanduser("~")}
    files = sorted(p for p in art.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"model.safetensors", "manifest.json", "policy.json",
                                       "config.json", "README.md"}
    for path in files:
        data = path.read_bytes()
        for text in machine:
            assert text.encode() not in data, f"{path.name} holds {text}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(art.stat().st_mode) == 0o755
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"] == name  # the folder's name, as the user gave it minus its path


@pytest.mark.parametrize("name", FAMILIES)
def test_diffusers_pipelines_take_the_quantized_transformer(made, name):
    """``<Pipeline>.from_pretrained(base, transformer=load_transformer(art))`` samples as adatsq
    samples the artifact, through diffusers' own ``__call__``."""
    m = made[name]
    pipe = m["pipe"]
    cls = type(pipe.pipe)
    theirs = cls.from_pretrained(m["folder"], transformer=load_transformer(m["art"]))
    images = call_diffusers(theirs, pipe.sampling, 2, pipe.noise(len(PROMPTS), seed=3))
    ours = (m["samples"] / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, ours, rtol=0, atol=1e-4)


def test_plain_diffusers_refuses_the_artifact(made):
    """diffusers' own loader on the folder stops with a clear error, never random weights."""
    art = made[FAMILIES[0]]["art"]
    with pytest.raises(ValueError, match="adatsq"):
        diffusers.FluxTransformer2DModel.from_pretrained(art)
    config = json.loads((art / "config.json").read_text())
    assert config["_class_name"] == "FluxTransformer2DModel"
    assert config["quantization_config"]["quant_method"] == "adatsq"


def test_save_pretrained_writes_an_artifact(made, tmp_path):
    """A quantized transformer's ``save_pretrained`` (and so its pipeline's) writes an artifact
    that loads bit-exactly; pushing to the hub through diffusers is refused in one line."""
    m = made["zimage"]
    pipe = m["pipe"]
    pipe.transformer.save_pretrained(tmp_path / "t")
    again = load_transformer(tmp_path / "t")
    assert again.adatsq_policy == pipe.transformer.adatsq_policy
    for key, value in pipe.transformer.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    pipe.pipe.save_pretrained(tmp_path / "whole")  # diffusers' pipeline save
    reloaded, _ = load(tmp_path / "whole" / "transformer", base=str(m["folder"]))
    assert torch.equal(reloaded.generate(PROMPTS, seed=3, steps=2), m["samples"])
    with pytest.raises(ValueError, match="hf upload"):
        pipe.transformer.save_pretrained(tmp_path / "hub", push_to_hub=True)


def test_quantize_takes_a_diffusers_pipeline_object(made, tmp_path):
    m = made[FAMILIES[0]]
    raw = type(m["pipe"].pipe).from_pretrained(m["folder"])
    policy = quantize_(raw, RECIPE, progress=False)
    assert any(isinstance(q, QuantLinear) for q in raw.transformer.modules())
    assert policy.model == FAMILIES[0]  # the folder's name, not its path
    out = raw([PROMPTS[0]], height=16, width=16, num_inference_steps=2, max_sequence_length=16,
              output_type="np").images
    assert out.shape == (1, 16, 16, 3) and torch.isfinite(torch.from_numpy(out)).all()
    art = raw.transformer.save_pretrained(tmp_path / "art")
    assert json.loads((art / "manifest.json").read_text())["model"] == FAMILIES[0]


def test_model_card_records_what_a_user_needs(made):
    card = (made["wan"]["art"] / "README.md").read_text()
    for text in ("base_model: wan", "rtn W4A4", "adatsq quantize wan", "torch ", "diffusers ",
                 "load_transformer", "not measured"):
        assert text in card, text
