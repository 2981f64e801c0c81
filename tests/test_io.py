"""Artifacts: packed codes, save -> load bit-exact (per-step bits included), corruption refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from adatsq import io
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.pipeline import attach_tracker, load, quantize_, save
from adatsq.policy import LayerPolicy, Policy
from adatsq.quant.primitives import pack_codes, unpack_codes
from tests.conftest import PROMPTS, fresh_copy


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_unpack_roundtrip(bits):
    codes = torch.randint(0, 2**bits, (7, 24), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == (codes.numel() * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, tuple(codes.shape)), codes)


@pytest.fixture(scope="module", params=["rtn", "svdquant", "adatsq"])
def saved(request, calibrated, tmp_path_factory):
    pipe = fresh_copy(calibrated[0])
    options = {"adatsq": {"fisher_prompts": 4, "select_prompts": 4, "select_paths": 2,
                          "num_candidates": 4}, "svdquant": {"rank": 4}}.get(request.param, {})
    recipe = Recipe(method=request.param, weights=WeightSpec(bits=3),
                    activations=ActivationSpec(bits=3), options=options)
    policy = quantize_(pipe, recipe, progress=False, stats=calibrated[1])
    path = tmp_path_factory.mktemp("artifacts") / request.param
    save(pipe, policy, path)
    return pipe, policy, path


def _tiny_registry(monkeypatch, pipe):
    from adatsq.zoo import registry

    monkeypatch.setitem(registry.ENTRIES, pipe.entry.name, pipe.entry)


def test_save_load_is_bit_exact(saved, monkeypatch):
    pipe, policy, path = saved
    _tiny_registry(monkeypatch, pipe)
    loaded, loaded_policy = load(path)
    assert loaded_policy.to_dict() == json.loads(json.dumps(policy.to_dict()))
    want = pipe.generate(PROMPTS, seed=3)
    got = loaded.generate(PROMPTS, seed=3)
    assert torch.equal(got, want)
    assert io.model_bytes(loaded.transformer) == io.model_bytes(pipe.transformer)


def test_a_saved_policy_reapplied_restores_the_outputs(saved, tmp_path):
    """Bits reach a model only through Policy.apply_: other bits change the outputs, the saved
    policy read back and applied gives them back bit-exactly."""
    pipe, policy, _ = saved
    want = pipe.generate(PROMPTS[:2], seed=5)
    policy.with_activation_bits(policy.bit_matrix() * 0 + 8).apply_(pipe.transformer)
    assert not torch.equal(pipe.generate(PROMPTS[:2], seed=5), want)
    Policy.load(policy.save(tmp_path / "policy.json")).apply_(pipe.transformer)
    assert torch.equal(pipe.generate(PROMPTS[:2], seed=5), want)
    first, *rest = policy.layers
    with pytest.raises(ValueError, match="'no.such.layer' is not a quantized layer"):
        Policy(policy.model, policy.method, policy.schedule,
               {**policy.layers, "no.such.layer": policy.layers[first]}).apply_(pipe.transformer)
    with pytest.raises(ValueError, match=f"quantized layer '{first}' is not in the policy"):
        Policy(policy.model, policy.method, policy.schedule,
               {n: policy.layers[n] for n in rest}).apply_(pipe.transformer)
    cut = {n: LayerPolicy(lp.weight_bits, lp.activation_bits[:-1])
           for n, lp in policy.layers.items()}
    with pytest.raises(ValueError, match=f"has {policy.steps - 1} steps but layer"):
        Policy(policy.model, policy.method, policy.schedule[:-1], cut).apply_(pipe.transformer)


def test_packed_size_is_smaller_than_fp16(saved):
    pipe, _, path = saved
    fp16 = sum(p.numel() * 2 for p in pipe.entry.build_model().parameters())
    assert io.model_bytes(pipe.transformer) < fp16
    on_disk = (path / "model.safetensors").stat().st_size
    assert on_disk < fp16 * 1.05 + 20_000  # header and FP16 non-quantized parts


def test_bits_follow_the_timestep_value_not_a_counter(saved, monkeypatch):
    """The quantized transformer picks each step's bits from the timestep it is called with."""
    pipe, policy, path = saved
    _tiny_registry(monkeypatch, pipe)
    loaded, _ = load(path)
    model = loaded.transformer
    seen = []
    layer = next(m for m in model.modules() if hasattr(m, "current_bits"))
    handle = layer.register_forward_pre_hook(lambda m, i: seen.append(m.current_bits()))
    name = next(n for n, m in model.named_modules() if m is layer)
    for t in reversed(range(policy.steps)):  # any order: no counter involved
        x = torch.randn(1, 16, 48)
        cond = loaded.encode(["a 3"])
        loaded.adapter.denoise(model, x, cond, torch.tensor([policy.schedule[t]]))
    handle.remove()
    assert seen == list(reversed(policy.layers[name].activation_bits))
    hooks = len(model._forward_pre_hooks)
    tracker = attach_tracker(model, loaded.adapter, policy.schedule)
    assert len(model._forward_pre_hooks) == hooks  # re-attaching replaces, not stacks
    assert all(m.tracker is tracker for m in model.modules() if hasattr(m, "current_bits"))


def test_corrupt_and_mismatched_artifacts_are_refused(saved, tmp_path, monkeypatch):
    import shutil

    pipe, _, path = saved
    _tiny_registry(monkeypatch, pipe)
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    with open(bad / "model.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(io.ArtifactError, match="checksum"):
        load(bad)
    shutil.copytree(path, tmp_path / "manifest", dirs_exist_ok=True)
    (tmp_path / "manifest" / "manifest.json").write_text("{not json")
    with pytest.raises(io.ArtifactError, match="corrupt"):
        load(tmp_path / "manifest")
    with pytest.raises(io.ArtifactError, match="no manifest"):
        load(tmp_path / "nothing")
    wrong = tmp_path / "wrong"
    shutil.copytree(path, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["config"]["num_attention_heads"] = 4
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(io.ArtifactError):
        load(wrong)


def _copy(path, to, edit_manifest=None, edit_policy=None, tensors=None):
    """A copy of artifact ``path`` with its manifest, policy or tensors edited (and the checksum
    made to match, so that only the edit is wrong)."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(path, to)
    if tensors is not None:
        stored = load_file(str(to / "model.safetensors"))
        save_file(tensors(stored), str(to / "model.safetensors"))
    manifest = json.loads((to / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256((to / "model.safetensors").read_bytes()).hexdigest()
    if edit_manifest:
        edit_manifest(manifest)
    (to / "manifest.json").write_text(json.dumps(manifest))
    if edit_policy:
        policy = json.loads((to / "policy.json").read_text())
        edit_policy(policy)
        (to / "policy.json").write_text(json.dumps(policy))
    return to


def test_mismatched_policies_dtypes_and_models_are_refused(saved, tmp_path, monkeypatch):
    pipe, _, path = saved
    _tiny_registry(monkeypatch, pipe)

    def rename_layer(policy):
        name = next(iter(policy["layers"]))
        policy["layers"]["transformer_blocks.9.nothing"] = policy["layers"].pop(name)

    with pytest.raises(io.ArtifactError, match="different layers"):
        load(_copy(path, tmp_path / "layers", edit_policy=rename_layer))

    def float32_scale(stored):
        key = next(k for k in stored if k.endswith(".scale"))
        return {**stored, key: stored[key].float()}

    with pytest.raises(io.ArtifactError, match=r"scale is torch.float32"):
        load(_copy(path, tmp_path / "dtype", tensors=float32_scale))

    def int32_codes(stored):
        key = next(k for k in stored if k.endswith(".qweight"))
        return {**stored, key: stored[key].to(torch.int32)}

    with pytest.raises(io.ArtifactError, match=r"qweight is torch.int32"):
        load(_copy(path, tmp_path / "codes", tensors=int32_codes))

    def nan_scale(stored):
        key = next(k for k in stored if k.endswith(".scale"))
        scale = stored[key].clone()
        scale[0, 0] = float("nan")
        return {**stored, key: scale}

    with pytest.raises(io.ArtifactError, match=r"scale holds NaN or Inf"):
        load(_copy(path, tmp_path / "nan", tensors=nan_scale))

    def wider_scale(stored):
        key = next(k for k in stored if k.endswith(".scale"))
        return {**stored, key: stored[key].repeat(1, 2)}

    layer = next(k for k in load_file(str(path / "model.safetensors")) if k.endswith(".scale"))
    with pytest.raises(io.ArtifactError, match=f"layer {layer[:-6]}: scale of shape"):
        load(_copy(path, tmp_path / "shape", tensors=wider_scale))

    def another_zoo_model(manifest):
        manifest["model"] = "zimage-digits"

    with pytest.raises(io.ArtifactError, match="names zimage-digits"):
        load(_copy(path, tmp_path / "model", edit_manifest=another_zoo_model))


def test_a_policy_cut_to_fewer_steps_is_refused_when_sampling(saved, tmp_path, monkeypatch):
    """A policy whose schedule and bits were cut to T-1 steps, sampled with T: each call is
    refused by name instead of taking the bits of the nearest step."""
    pipe, policy, path = saved
    _tiny_registry(monkeypatch, pipe)
    T = policy.steps

    def cut(data):
        data["schedule"] = data["schedule"][:-1]
        for layer in data["layers"].values():
            layer["activation_bits"] = [4 if i % 2 else 3 for i in range(T - 1)]

    loaded, cut_policy = load(_copy(path, tmp_path / "cut", edit_policy=cut))
    assert cut_policy.steps == T - 1
    with pytest.raises(ValueError, match=f"on none of the {T - 1} steps"):
        loaded.generate(PROMPTS[:1], seed=0, steps=T)


def test_save_writes_nothing_half_done(saved, tmp_path, monkeypatch):
    pipe, policy, _ = saved

    def boom(tensors, path, floats=None):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(io, "write_tensors", boom)
    with pytest.raises(OSError):
        save(pipe, policy, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_a_bfloat16_model_is_stored_in_bfloat16_without_overflow(tmp_path):
    """FP16 overflows past 65504; a bf16 model (Flux, Wan) keeps such values in bf16."""
    from safetensors.torch import load_file

    from adatsq.eval.tasks import task_for
    from adatsq.zoo.pipeline import DigitPipeline
    from tests.conftest import tiny_entry

    entry = tiny_entry()
    torch.manual_seed(0)
    model = entry.build_model().eval().requires_grad_(False).to(torch.bfloat16)
    model.x_embedder.weight[0, 0] = 70000.0  # an FP16 overflow in a layer kept in 16 bits
    pipe = DigitPipeline(entry, model, task_for(entry))
    assert io.storage_dtype(model) == torch.bfloat16
    policy = quantize_(pipe, Recipe(method="rtn"), progress=False)
    path = save(pipe, policy, tmp_path / "bf16")
    stored = load_file(str(path / "model.safetensors"))
    assert stored["x_embedder.weight"].dtype == torch.bfloat16
    assert stored["x_embedder.weight"][0, 0].float().item() == pytest.approx(70000.0, rel=0.01)
    assert json.loads((path / "manifest.json").read_text())["storage_dtype"] == "bfloat16"
    assert io.storage_dtype(entry.build_model()) == torch.float16
    model32 = entry.build_model().eval().requires_grad_(False)
    model32.x_embedder.weight[0, 0] = 70000.0  # past FP16, the storage of a float32 model
    with pytest.raises(ValueError, match="x_embedder.weight has values that are not finite in "
                                         "float16 storage"):
        quantize_(DigitPipeline(entry, model32, task_for(entry)), Recipe(method="rtn"),
                  progress=False)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_weights_are_refused_before_quantizing(calibrated, bad):
    pipe = fresh_copy(calibrated[0])
    name, linear = next(iter(pipe.adapter.quantizable_layers(pipe.transformer).items()))
    linear.weight[0, 0] = bad
    with pytest.raises(ValueError, match=f"non-finite values .* {name}.weight"):
        quantize_(pipe, Recipe(method="rtn"), progress=False)
    with pytest.raises(ValueError, match="steps must be positive"):
        pipe.generate(["a 3"], steps=0)


def test_random_corruptions_load_bit_exact_or_fail_in_one_line(saved, tmp_path, monkeypatch):
    """Truncated files, flipped bits and edited manifest or policy fields: each artifact either
    loads and generates exactly what the intact one does, or is refused with a one-line
    ValueError (ArtifactError) - never another exception, never a different result."""
    import random
    import shutil

    pipe, _, path = saved
    _tiny_registry(monkeypatch, pipe)
    intact, _ = load(path)
    want = intact.generate(PROMPTS[:1], seed=1, steps=2)
    rng = random.Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(30):
        copy = tmp_path / f"c{i}"
        shutil.copytree(path, copy)
        kind = rng.choice(["truncate", "flip", "manifest", "policy"])
        if kind in ("truncate", "flip"):
            f = copy / rng.choice(["model.safetensors", "manifest.json", "policy.json"])
            data = bytearray(f.read_bytes())
            if kind == "truncate":
                data = data[:rng.randrange(len(data))]
            else:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            f.write_bytes(bytes(data))
        else:
            f = copy / f"{kind}.json"
            d = json.loads(f.read_text())
            d[rng.choice(sorted(d))] = rng.choice([None, 0, "x", [], {}, -1, 3.5])
            f.write_text(json.dumps(d))
        try:
            loaded, _ = load(copy)
            got = loaded.generate(PROMPTS[:1], seed=1, steps=2)
        except ValueError as exc:  # ArtifactError is one
            assert str(exc) and len(str(exc).splitlines()) == 1, (kind, str(exc))
            outcomes["refused"] += 1
            continue
        assert torch.equal(got, want), (i, kind, f.name)
        outcomes["loaded"] += 1
    assert outcomes["refused"] >= 10 and sum(outcomes.values()) == 30


def test_loading_builds_the_skeleton_without_its_weights():
    """Parameters built inside empty_weights live on the meta device (no memory); buffers a
    model computes at construction stay real."""
    class WithTable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4096, 4096)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    with io.empty_weights():
        model = WithTable()
    assert model.linear.weight.is_meta and model.linear.bias.is_meta
    assert torch.equal(model.table, torch.arange(4.0))
    assert not torch.nn.Linear(2, 2).weight.is_meta  # only inside


def test_modulation_weights_are_quantized_weight_only_and_saved(calibrated, tmp_path,
                                                                 monkeypatch):
    """WeightSpec.modulation packs the adaLN linears too (activations 16 bits, outside the
    policy): a smaller artifact that loads bit-exactly."""
    from adatsq.quant.qlinear import WeightOnlyLinear

    plain = fresh_copy(calibrated[0])
    quantize_(plain, Recipe(method="rtn"), progress=False)
    pipe = fresh_copy(calibrated[0])
    modulation = set(pipe.adapter.modulation_layers(pipe.transformer))
    policy = quantize_(pipe, Recipe(method="rtn", weights=WeightSpec(modulation=True)),
                       progress=False)
    assert modulation and not modulation & set(policy.layers)
    assert all(isinstance(pipe.transformer.get_submodule(n), WeightOnlyLinear)
               for n in modulation)
    assert io.model_bytes(pipe.transformer) < 0.9 * io.model_bytes(plain.transformer)
    _tiny_registry(monkeypatch, pipe)
    loaded, _ = load(save(pipe, policy, tmp_path / "modulation"))
    assert torch.equal(loaded.generate(PROMPTS[:2], seed=1), pipe.generate(PROMPTS[:2], seed=1))
