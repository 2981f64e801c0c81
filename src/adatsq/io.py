"""Artifacts: a quantized transformer as packed safetensors + ``manifest.json`` + ``policy.json``.

Layout of an artifact directory::

    model.safetensors   quantized layers: b-bit codes packed densely into bytes (``*.qweight``),
                        FP16 scales and zero points, FP16 bias / smoothing / low-rank branch;
                        every other transformer parameter in FP16 (all of these in BF16 for a
                        bfloat16 model: :func:`storage_dtype`)
    manifest.json       format version, model, transformer class and config, storage dtype,
                        per-layer layout, SHA-256 of model.safetensors
    policy.json         the policy (per-step activation bits, recipe, settings)

Quantization rounds every stored float to the storage dtype before the model is used, so that
loading an artifact gives a model whose outputs are bit-exact to the model that was saved. Writing
goes to a temporary directory renamed at the end: a failed save leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adatsq.files import atomic_dir, write_json
from adatsq.policy import Policy
from adatsq.quant.primitives import FULL_PRECISION, pack_codes, unpack_codes
from adatsq.quant.qlinear import ActivationQuant, QuantLinear, set_module

FORMAT = "adatsq-artifact"
FORMAT_VERSION = 2
"""Version written; 2 adds randomized rotations (``rotation_signs``). Versions in
:data:`READABLE_VERSIONS` load."""
READABLE_VERSIONS = (1, 2)
STORAGE_DTYPE = torch.float16
"""Storage of every float of a float16 or float32 model; a bfloat16 model (Flux and Wan ship in
bf16) is stored in bfloat16, whose range holds its values (FP16 overflows past 65504)."""


def storage_dtype(model: nn.Module) -> torch.dtype:
    """The dtype an artifact of ``model`` stores its floats in (see :data:`STORAGE_DTYPE`)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.bfloat16 if dtype == torch.bfloat16 else STORAGE_DTYPE
_OPTIONAL = ("bias", "smooth", "rotation_signs", "lowrank_down", "lowrank_up")


class ArtifactError(ValueError):
    """A missing, corrupt or mismatched artifact."""


_MANIFEST = {"model": str, "model_class": str, "config": dict, "layers": dict, "sha256": str}
"""Required manifest fields and their JSON types."""
_LAYER = {"in_features": int, "out_features": int, "weight_bits": int, "rotate_input": bool,
          "activation": dict, "tensors": list}
"""Required fields of a layer's layout in the manifest."""


def round_to_storage_(model: nn.Module) -> nn.Module:
    """Rounds every float parameter and persistent buffer (what an artifact stores) to values
    representable in :func:`storage_dtype`, in place; buffers a model recomputes
    (non-persistent, such as Wan's rotary tables) keep their precision, as in a model rebuilt
    from its config."""
    dtype = storage_dtype(model)
    with torch.no_grad():
        for key, t in model.state_dict().items():  # shares storage with the model's tensors
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(t.dtype))
                if not torch.isfinite(t).all():
                    raise ValueError(f"{key} has values that are not finite in "
                                     f"{str(dtype).removeprefix('torch.')} storage (overflow "
                                     "past its range, or NaN); check the model's weights")
        for m in model.modules():
            if isinstance(m, QuantLinear) and m.weight_bits != FULL_PRECISION:
                m.refresh_weight()
    return model


def _layer_meta(q: QuantLinear) -> dict[str, Any]:
    a = q.activation
    return {"in_features": q.in_features, "out_features": q.out_features,
            "weight_bits": q.weight_bits, "group_size": q.group_size,
            "rotate_input": q.rotate_input,
            "activation": {"granularity": a.granularity, "symmetric": a.symmetric,
                           "group_size": a.group_size},
            "tensors": [k for k in _OPTIONAL if getattr(q, k) is not None]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: nn.Module, policy: Policy, path: str | Path, source: dict[str, Any]) -> Path:
    """Writes the artifact of a quantized ``model`` to directory ``path``.

    Args:
        source: how to rebuild the transformer skeleton: ``{"model": name or path,
            "model_class": ..., "config": {...}}``.
    """
    path = Path(path)
    dtype = storage_dtype(model)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for name, q in quantized.items():
        layers[name] = _layer_meta(q)
        if q.weight_bits == FULL_PRECISION:
            tensors[f"{name}.weight"] = q.weight.to(dtype)
        else:
            tensors[f"{name}.qweight"] = pack_codes(q.codes, q.weight_bits)
            tensors[f"{name}.scale"] = q.scale.to(dtype)
            tensors[f"{name}.zero"] = q.zero.to(dtype)
        for key in layers[name]["tensors"]:
            tensors[f"{name}.{key}"] = getattr(q, key).to(dtype)
    prefixes = tuple(f"{n}." for n in quantized)
    for key, value in model.state_dict().items():
        if not key.startswith(prefixes):
            tensors[key] = value.to(dtype) if value.is_floating_point() else value
    with atomic_dir(path, replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, **source,
                    "storage_dtype": str(dtype).removeprefix("torch."), "layers": layers,
                    "sha256": _sha256(tmp / "model.safetensors")}
        write_json(manifest, tmp / "manifest.json")
        policy.save(tmp / "policy.json")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of artifact ``path``, validated; raises :class:`ArtifactError`."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise ArtifactError(f"{path} is not an artifact directory (no manifest.json); "
                            "create one with 'adatsq quantize'")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}/manifest.json is corrupt ({exc.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{path} is not an adatsq artifact of a version this adatsq reads "
                            f"({', '.join(map(str, READABLE_VERSIONS))}); re-create it with "
                            "'adatsq quantize'")
    for key, kind in _MANIFEST.items():
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{path}/manifest.json: {key!r} is missing or not a "
                                f"{kind.__name__}; the artifact is corrupt, re-create it")
    for name, meta in manifest["layers"].items():
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t)
                                             for k, t in _LAYER.items()):
            raise ArtifactError(f"{path}/manifest.json: the layout of layer {name} is corrupt; "
                                "re-create the artifact")
    return manifest


def load_quantized(skeleton: nn.Module, path: str | Path) -> tuple[nn.Module, Policy]:
    """Loads artifact ``path`` into ``skeleton`` (the transformer built from the manifest's class
    and config) and returns it with its policy; verifies the checksum and every shape."""
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / "model.safetensors"
    if not weights.is_file() or _sha256(weights) != manifest["sha256"]:
        raise ArtifactError(f"{weights} is missing or does not match its manifest checksum; "
                            "the artifact is corrupt, re-create it with 'adatsq quantize'")
    try:
        policy = Policy.load(path / "policy.json")
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}/policy.json: {exc}") from None
    if set(policy.layers) != set(manifest["layers"]):
        odd = sorted(set(policy.layers) ^ set(manifest["layers"]))
        raise ArtifactError(f"{path}/policy.json and the manifest name different layers (e.g. "
                            f"{odd[0]}); the artifact is corrupt, re-create it")
    tensors = load_file(str(weights))
    _check_dtypes(tensors, manifest, path)
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{path}/model.safetensors: {key} holds NaN or Inf values; the "
                                "artifact is corrupt, re-create it")
    modules = dict(skeleton.named_modules())
    for name, meta in manifest["layers"].items():
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear) or (linear.out_features, linear.in_features) != (
                meta["out_features"], meta["in_features"]):
            raise ArtifactError(f"artifact layer {name} does not match the transformer "
                                f"({type(linear).__name__}); wrong model for this artifact?")
        extra = {k: tensors[f"{name}.{k}"].float() for k in meta["tensors"]}
        lowrank = None
        if "lowrank_down" in extra:
            lowrank = (extra.pop("lowrank_down"), extra.pop("lowrank_up"))
        a = meta["activation"]
        bits = policy.layers[name].activation_bits
        activation = ActivationQuant(bits[0] if len(set(bits)) == 1 else tuple(bits),
                                     a["granularity"], a["symmetric"], a["group_size"])
        common = dict(bias=extra.pop("bias", None), activation=activation,
                      rotate_input=meta["rotate_input"], lowrank=lowrank, **extra)
        if meta["weight_bits"] == FULL_PRECISION:
            q = QuantLinear(meta["in_features"], meta["out_features"], weight_bits=FULL_PRECISION,
                            weight=tensors[f"{name}.weight"].float(), **common)
        else:
            codes = unpack_codes(tensors[f"{name}.qweight"], meta["weight_bits"],
                                 (meta["out_features"], meta["in_features"]))
            q = QuantLinear(meta["in_features"], meta["out_features"],
                            weight_bits=meta["weight_bits"], codes=codes,
                            scale=tensors[f"{name}.scale"].float(),
                            zero=tensors[f"{name}.zero"].float(), **common)
        set_module(skeleton, name, q)
    prefixes = tuple(f"{n}." for n in manifest["layers"])
    rest = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
    dtype = next(skeleton.parameters()).dtype
    rest = {k: v.to(dtype) if v.is_floating_point() else v for k, v in rest.items()}
    missing, unexpected = skeleton.load_state_dict(rest, strict=False)
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ArtifactError(f"artifact tensors do not match the transformer (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]})")
    return skeleton.eval().requires_grad_(False), policy


def _check_dtypes(tensors: dict[str, torch.Tensor], manifest: dict[str, Any], path: Path) -> None:
    """Every stored tensor in the dtype the format gives it: packed codes in uint8, floats in the
    manifest's storage dtype (FP16 before it was recorded)."""
    floats = getattr(torch, manifest.get("storage_dtype", "float16"), None)
    if floats not in (torch.float16, torch.bfloat16):
        raise ArtifactError(f"{path}/manifest.json: unknown storage dtype "
                            f"{manifest.get('storage_dtype')!r}")
    for key, t in tensors.items():
        want = torch.uint8 if key.endswith(".qweight") else floats
        if t.is_floating_point() or key.endswith(".qweight"):
            if t.dtype != want:
                raise ArtifactError(f"{path}/model.safetensors: {key} is {t.dtype}, the format "
                                    f"stores {want}; the artifact is corrupt, re-create it")


def model_bytes(model: nn.Module) -> int:
    """Bytes of the transformer's weights as stored: packed codes, FP16 for everything else."""
    total = 0
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for q in quantized.values():
        if q.weight_bits == FULL_PRECISION:
            total += q.weight.numel() * 2
        else:
            total += (q.codes.numel() * q.weight_bits + 7) // 8
            total += (q.scale.numel() + q.zero.numel()) * 2
        total += sum(getattr(q, k).numel() * 2 for k in _OPTIONAL if getattr(q, k) is not None)
    prefixes = tuple(f"{n}." for n in quantized)
    for key, value in model.state_dict().items():
        if not key.startswith(prefixes):
            total += value.numel() * (2 if value.is_floating_point() else value.element_size())
    return total
