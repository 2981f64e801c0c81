"""Recipes: frozen, validated, versioned descriptions of a quantization run.

A recipe round-trips through ``to_dict``/``from_dict`` (JSON and YAML); ``from_dict`` rejects
unknown keys instead of ignoring them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adatsq.quant.primitives import ACTIVATION_GRANULARITIES, FULL_PRECISION, check_bits

RECIPE_VERSION = 1


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(names))}")
    return cls(**data)


@dataclass(frozen=True)
class WeightSpec:
    """Weight quantization: bit width (16 = off), symmetry and group size (None = per channel)."""

    bits: int = 4
    symmetric: bool = True
    group_size: int | None = None

    def __post_init__(self):
        check_bits(self.bits, "weight bit width")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"weight group_size must be positive or null, got {self.group_size}")


@dataclass(frozen=True)
class ActivationSpec:
    """Activation quantization: nominal bit width, granularity, symmetry, group size."""

    bits: int = 4
    granularity: str = "token"
    symmetric: bool = False
    group_size: int = 64

    def __post_init__(self):
        check_bits(self.bits, "activation bit width")
        if self.granularity not in ACTIVATION_GRANULARITIES:
            raise ValueError(f"activation granularity must be one of "
                             f"{', '.join(ACTIVATION_GRANULARITIES)}, got {self.granularity!r}")
        if self.group_size <= 0:
            raise ValueError("activation group_size must be positive")


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration prompts (disjoint from evaluation prompts), their seed and the sampling steps.

    ``memory_gb`` bounds the calibration Hessians held at once: a model whose per-step Hessians
    exceed it (Flux-Dev: about 100 GB at 50 steps) is captured and quantized in groups of
    consecutive layers, one sampling pass of the calibration prompts per group.
    """

    num_prompts: int = 32
    seed: int = 1
    steps: int | None = None
    memory_gb: float = 8.0

    def __post_init__(self):
        if self.num_prompts <= 0:
            raise ValueError(f"calibration needs at least one prompt, got {self.num_prompts}")
        if not self.memory_gb > 0:
            raise ValueError(f"the calibration memory budget must be positive, got "
                             f"{self.memory_gb}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError("calibration steps must be positive")


@dataclass(frozen=True)
class Recipe:
    """A complete quantization run.

    Example:
        >>> r = Recipe(method="rtn", weights=WeightSpec(bits=4), activations=ActivationSpec(bits=4))
        >>> Recipe.from_dict(r.to_dict()) == r
        True
    """

    method: str = "rtn"
    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec = field(default_factory=ActivationSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    version: int = RECIPE_VERSION

    def __post_init__(self):
        if self.version != RECIPE_VERSION:
            raise ValueError(f"recipe version {self.version} is not supported (expected "
                             f"{RECIPE_VERSION})")
        from adatsq.methods import get_method

        get_method(self.method).options_class.from_dict(self.options)  # validates the options

    @property
    def label(self) -> str:
        """``W4A4``-style label."""
        a = "16" if self.activations.bits == FULL_PRECISION else str(self.activations.bits)
        return f"W{self.weights.bits}A{a}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        data = dict(data)
        parts = {"weights": WeightSpec, "activations": ActivationSpec,
                 "calibration": CalibrationSpec}
        for key, sub in parts.items():
            if key in data:
                data[key] = _from_dict(sub, data[key], f"recipe.{key}")
        return _from_dict(cls, data, "recipe")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Reads a recipe from ``.json`` or ``.yaml``/``.yml``."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.from_dict(yaml.safe_load(text))
        return cls.from_dict(json.loads(text))

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class MethodOptions:
    """Base of the methods' frozen option dataclasses; ``from_dict`` rejects unknown keys."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data or {}, f"{cls.__name__} (method options)")
