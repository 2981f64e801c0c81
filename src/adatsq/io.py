"""Artifacts: a quantized transformer as packed safetensors + ``manifest.json`` + ``policy.json``.

Layout of an artifact directory::

    model.safetensors   quantized layers: b-bit codes packed densely into bytes (``*.qweight``),
                        FP16 scales and zero points, FP16 bias / smoothing / low-rank branch;
                        every other transformer parameter in FP16 (all of these in BF16 for a
                        bfloat16 model: :func:`storage_dtype`)
    manifest.json       format version, model, transformer class and config, storage dtype,
                        per-layer layout (each quantized layer's ``QuantLinear.layout()``: the
                        quantization map), SHA-256 of model.safetensors
    policy.json         the policy (per-step activation bits, recipe, settings)
    config.json         the transformer's diffusers config, with a ``quantization_config``
                        that makes diffusers' own loader refuse the folder (:mod:`adatsq.card`)
    README.md           the model card

Nothing in it names a path of the machine that made it: the base pipeline is recorded as a hub
id, a zoo name or a folder name (:func:`adatsq.models.sources.reference`), so a copied or moved
artifact loads anywhere.

A quantized layer holds exactly what is stored (its ``state_dict``: packed codes and 16-bit
floats), so it is written and read as is; the rest of a float32 model is rounded to FP16 when it
is quantized, so that the model that runs is the model that is saved and loading is bit-exact.
Loading never materializes a full-precision model: the transformer is built with its parameters
on the meta device and every tensor is read straight into place (:func:`load_quantized`).
Writing goes to a temporary directory renamed at the end: a failed save leaves nothing
half-written.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adatsq import card
from adatsq.files import atomic_dir, write_json, write_text
from adatsq.policy import Policy
from adatsq.quant.qlinear import QuantLinear, set_module
from adatsq.quant.qlinear import storage_dtype as layer_storage_dtype

FORMAT = "adatsq-artifact"
FORMAT_VERSION = 2
"""Version written; 2 adds randomized rotations (``rotation_signs``). Versions in
:data:`READABLE_VERSIONS` load."""
READABLE_VERSIONS = (1, 2)


def storage_dtype(model: nn.Module) -> torch.dtype:
    """The 16-bit dtype an artifact of ``model`` stores its floats in: that of its quantized
    layers (:func:`adatsq.quant.qlinear.storage_dtype` of the dtype most of its weights have)."""
    sizes: dict[torch.dtype, int] = {}
    for t in model.parameters():
        if t.is_floating_point():
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    return layer_storage_dtype(max(sizes, key=sizes.get) if sizes else torch.float32)


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
                if t.dtype != dtype:  # quantized layers hold the storage dtype already
                    t.copy_(t.to(dtype).to(t.dtype))
                if not torch.isfinite(t).all():
                    raise ValueError(f"{key} has values that are not finite in "
                                     f"{str(dtype).removeprefix('torch.')} storage (overflow "
                                     "past its range, or NaN); check the model's weights")
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: nn.Module, policy: Policy, path: str | Path, source: dict[str, Any],
         command: str | None = None) -> Path:
    """Writes the artifact of a quantized ``model`` to directory ``path``.

    Args:
        source: how to rebuild the transformer skeleton: ``{"model": hub id, zoo name or folder
            name, "model_class": ..., "config": {...}}``.
        command: the command that made it, for the model card.
    """
    path = Path(path)
    dtype = storage_dtype(model)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    layers = {name: q.layout() for name, q in quantized.items()}
    with atomic_dir(path, replace=True) as tmp:
        write_tensors(model.state_dict(), tmp / "model.safetensors", floats=dtype)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, **source,
                    "storage_dtype": str(dtype).removeprefix("torch."), "layers": layers,
                    "sha256": _sha256(tmp / "model.safetensors")}
        write_json(manifest, tmp / "manifest.json")
        policy.save(tmp / "policy.json")
        write_json(card.diffusers_config(source, FORMAT_VERSION), tmp / "config.json")
        write_text(card.model_card(policy, source, command), tmp / "README.md")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of artifact ``path``, validated; raises :class:`ArtifactError`."""
    path = Path(path)
    if not (path / "manifest.json").is_file() and (path / "checkpoint").is_dir():
        raise ArtifactError(f"{path} is an unfinished quantization run (a checkpoint, no "
                            "manifest.json); rerun the same 'adatsq quantize' command to finish "
                            "it")
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


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
"""safetensors dtype names."""


def write_tensors(tensors: dict[str, torch.Tensor], path: Path,
                  floats: torch.dtype | None = None,
                  metadata: dict[str, str] | None = None) -> None:
    """Writes a safetensors file one tensor at a time (floats cast to ``floats`` as they are
    written), so that no serialized copy of the model is ever held in memory; ``metadata``
    goes in the header (strings).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> write_tensors({"w": torch.ones(2, 3)}, path, floats=torch.bfloat16)
        >>> from safetensors.torch import load_file
        >>> load_file(str(path))["w"].dtype
        torch.bfloat16
    """
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}

    def stored(t: torch.Tensor) -> torch.dtype:
        return floats if floats is not None and t.is_floating_point() else t.dtype

    header, offset = {}, 0
    for key in sorted(tensors):
        t = tensors[key]
        nbytes = t.numel() * stored(t).itemsize
        header[key] = {"dtype": names[stored(t)], "shape": list(t.shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little") + head)
        for key in sorted(tensors):
            t = tensors[key].detach().to("cpu", stored(tensors[key])).contiguous()
            fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file (plain reads, no memory map) and its metadata; raises
    :class:`ArtifactError` on a corrupt or truncated file."""
    stored = _TensorFile(path)
    with open(path, "rb") as fh:
        return {key: stored.read(fh, key) for key in stored.keys()}, stored.metadata


class _TensorFile:
    """A safetensors file read one tensor at a time with plain reads into fresh tensors: no
    memory map, so a loaded model is the only copy of the weights in memory."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= self.size - 8:
                raise ArtifactError(f"{path} is not a safetensors file; re-create the artifact")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ArtifactError(f"{path} has a corrupt header; re-create the "
                                    "artifact") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, e in header.items():
            try:
                dtype, shape = SAFETENSORS_DTYPES[e["dtype"]], tuple(int(d) for d in e["shape"])
                begin, end = (int(o) for o in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ArtifactError(f"{path}: tensor {key} has a corrupt header entry; "
                                    "re-create the artifact") from None
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes or begin < 0 or self.start + end > self.size:
                raise ArtifactError(f"{path}: tensor {key} lies outside the file or does not "
                                    "fit its shape; re-create the artifact")
            self.entries[key] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, fh, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[key]
        out = torch.empty(end - begin, dtype=torch.uint8)
        fh.seek(self.start + begin)
        if end > begin and fh.readinto(out.numpy()) != end - begin:
            raise ArtifactError(f"{self.path} is truncated at {key}; re-create the artifact")
        return out.view(dtype).reshape(shape)


@contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no
    initialisation); buffers stay real, so tables a model computes at construction (rotary
    frequencies) are kept. :func:`load_quantized` then puts the stored tensors in place."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def load_quantized(build: Callable[[], nn.Module], path: str | Path,
                   dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, Policy]:
    """Loads artifact ``path`` and returns its transformer and policy, verifying the checksum,
    every dtype, shape and value, without ever holding a full-precision copy of the model.

    Args:
        build: builds the transformer (the manifest's class and config); it is built with its
            parameters on the meta device, then every stored tensor is read straight into place.
        dtype: the dtype of the 16-bit rest of the model (float32 on the CPU, bfloat16 on a GPU;
            modules the class keeps in float32 stay float32); quantized layers keep their stored
            16-bit floats and compute in the dtype of their input.
        device: where the tensors go.
    """
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
    searched = {n for n, layout in manifest["layers"].items() if not layout.get("weight_only")}
    if set(policy.layers) != searched:
        odd = sorted(set(policy.layers) ^ searched)
        raise ArtifactError(f"{path}/policy.json and the manifest name different layers (e.g. "
                            f"{odd[0]}); the artifact is corrupt, re-create it")
    floats = _storage_of(manifest, path)
    with empty_weights():
        skeleton = build()
    modules = dict(skeleton.named_modules())
    stored = _TensorFile(weights)
    keys = set(stored.keys())
    by_layer: dict[str, list[str]] = {}  # layer name -> its tensors' local names
    for key in keys:
        layer, _, local = key.rpartition(".")
        by_layer.setdefault(layer, []).append(local)
    with open(weights, "rb") as fh:

        def read(key: str) -> torch.Tensor:
            t = stored.read(fh, key).to(device)
            want = torch.uint8 if key.endswith(".qweight") else floats
            if (t.is_floating_point() or key.endswith(".qweight")) and t.dtype != want:
                raise ArtifactError(f"{weights}: {key} is {t.dtype}, the format stores {want}; "
                                    "the artifact is corrupt, re-create it")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ArtifactError(f"{weights}: {key} holds NaN or Inf values; the artifact "
                                    "is corrupt, re-create it")
            return t

        for name, layout in manifest["layers"].items():
            linear = modules.get(name)
            if not isinstance(linear, nn.Linear) or (linear.out_features, linear.in_features) != (
                    layout["out_features"], layout["in_features"]):
                raise ArtifactError(f"artifact layer {name} does not match the transformer "
                                    f"({type(linear).__name__}); wrong model for this artifact?")
            own = {k: read(f"{name}.{k}") for k in by_layer.get(name, ())}
            bits = policy.layers[name].activation_bits if name in policy.layers else (16,)
            try:
                q = QuantLinear.from_state(layout, own, bits[0] if len(set(bits)) == 1 else bits,
                                           dtype=floats)
            except (ValueError, KeyError, TypeError) as exc:
                raise ArtifactError(f"{weights}: layer {name}: {exc}; the artifact is corrupt, "
                                    "re-create it") from None
            set_module(skeleton, name, q)
        prefixes = tuple(f"{n}." for n in manifest["layers"])
        keep = _float32_keys(skeleton)
        rest = {}
        for key in sorted(keys):
            if not key.startswith(prefixes):
                t = read(key)
                if t.is_floating_point():
                    t = t.to(torch.float32 if keep(key) else dtype)
                rest[key] = t
    try:
        missing, unexpected = skeleton.load_state_dict(rest, strict=False, assign=True)
    except RuntimeError as exc:  # a shape that does not fit
        raise ArtifactError(f"artifact tensors do not match the transformer "
                            f"({str(exc).strip().splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ArtifactError(f"artifact tensors do not match the transformer (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]})")
    skeleton.to(device)  # buffers built at construction
    return skeleton.eval().requires_grad_(False), policy


def load_weights_(skeleton: nn.Module, paths: list[Path], dtype: torch.dtype,
                  device: str | torch.device = "cpu") -> nn.Module:
    """Fills a skeleton built under :func:`empty_weights` with the tensors of safetensors files
    (a diffusers folder's shards), read one at a time with plain reads and cast to ``dtype``
    (modules the class keeps in float32 stay float32): one copy of the weights in memory, never
    a memory map of the files besides it. Raises ``ValueError`` when the tensors do not fit."""
    keep = _float32_keys(skeleton)
    state = {}
    for path in paths:
        stored = _TensorFile(path)
        with open(path, "rb") as fh:
            for key in stored.keys():
                t = stored.read(fh, key)
                if t.is_floating_point():
                    t = t.to(torch.float32 if keep(key) else dtype)
                state[key] = t.to(device)
    try:
        missing, unexpected = skeleton.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit the model "
                         f"({str(exc).strip().splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise ValueError(f"the weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return skeleton.to(device)  # buffers built at construction


def _float32_keys(model: nn.Module) -> Callable[[str], bool]:
    """Whether a state key is one a diffusers class keeps in float32 (``_keep_in_fp32_modules``
    names modules or parameters, matched against the key's dotted parts, as diffusers does)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    return lambda key: bool(keep.intersection(key.split(".")))


def _storage_of(manifest: dict[str, Any], path: Path) -> torch.dtype:
    """The float dtype of an artifact's tensors (FP16 before the manifest recorded it)."""
    floats = getattr(torch, str(manifest.get("storage_dtype", "float16")), None)
    if floats not in (torch.float16, torch.bfloat16):
        raise ArtifactError(f"{path}/manifest.json: unknown storage dtype "
                            f"{manifest.get('storage_dtype')!r}")
    return floats


def model_bytes(model: nn.Module) -> int:
    """Bytes of the transformer's weights as stored: packed codes, 16 bits for every float."""
    return sum(t.numel() * (2 if t.is_floating_point() else t.element_size())
               for t in model.state_dict().values())
