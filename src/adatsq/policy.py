"""Policies: the per-layer, per-timestep bit widths a quantization run decided, as data.

A policy is written by a search (``policy.json``) and applied by a separate step, so it can be
inspected, plotted, re-applied and shipped with an artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from adatsq.files import write_json
from adatsq.quant.primitives import FULL_PRECISION, check_bits
from adatsq.quant.qlinear import QuantLinear
from adatsq.strict import check_keys

POLICY_VERSION = 1


@dataclass(frozen=True)
class LayerPolicy:
    """Bits of one layer: static weight bits and activation bits per step (T,)."""

    weight_bits: int
    activation_bits: tuple[int, ...]

    def __post_init__(self):
        check_bits(self.weight_bits, "weight bit width")
        for b in set(self.activation_bits):
            check_bits(b, "activation bit width")


@dataclass(frozen=True)
class Policy:
    """What a quantization run decided.

    Attributes:
        model: the model it was made for.
        method: the method that made it.
        schedule: timestep values (T,) the transformer receives at each step.
        layers: layer name -> :class:`LayerPolicy`, in execution order.
        recipe: the recipe (as a dict) of the run.
        settings: method settings and search results worth keeping (JSON-serialisable).
    """

    model: str
    method: str
    schedule: tuple[float, ...]
    layers: dict[str, LayerPolicy] = field(hash=False)
    recipe: dict[str, Any] = field(default_factory=dict, hash=False)
    settings: dict[str, Any] = field(default_factory=dict, hash=False)
    version: int = POLICY_VERSION

    def __post_init__(self):
        if self.version != POLICY_VERSION:
            raise ValueError(f"policy version {self.version} is not supported")
        T = len(self.schedule)
        for name, lp in self.layers.items():
            if len(lp.activation_bits) != T:
                raise ValueError(f"layer {name} has {len(lp.activation_bits)} activation widths "
                                 f"for a {T}-step schedule")

    @property
    def steps(self) -> int:
        return len(self.schedule)

    def bit_matrix(self) -> np.ndarray:
        """Activation bits (L, T)."""
        return np.array([lp.activation_bits for lp in self.layers.values()], dtype=np.int64)

    @property
    def average_activation_bits(self) -> float:
        """Mean activation bits over quantized layers x timesteps (16 if nothing is quantized)."""
        m = self.bit_matrix()
        return float(m.mean()) if m.size else float(FULL_PRECISION)

    @property
    def weight_bits(self) -> int:
        bits = {lp.weight_bits for lp in self.layers.values()}
        return max(bits) if bits else FULL_PRECISION

    def apply_(self, model: nn.Module) -> nn.Module:
        """Sets every quantized layer of ``model`` to this policy's activation bits (in place).

        Raises:
            ValueError: naming the layer, when the policy and the model's quantized layers differ
                (names, weight bits) or the schedule the model follows has another length.
        """
        modules = dict(model.named_modules())
        unlisted = [n for n, m in modules.items() if type(m) is QuantLinear
                    and n not in self.layers]  # weight-only layers have no activation bits
        if unlisted:
            raise ValueError(f"quantized layer {unlisted[0]!r} is not in the policy "
                             f"({len(unlisted)} such layers); a policy of another model?")
        for name, lp in self.layers.items():
            layer = modules.get(name)
            if not isinstance(layer, QuantLinear):
                raise ValueError(f"policy layer {name!r} is not a quantized layer of this model")
            if layer.weight_bits != lp.weight_bits:
                raise ValueError(f"policy gives {name!r} {lp.weight_bits}-bit weights but the "
                                 f"layer holds {layer.weight_bits}-bit weights")
            if layer.tracker is not None and len(layer.tracker.schedule) != self.steps:
                raise ValueError(f"the policy has {self.steps} steps but layer {name!r} follows "
                                 f"a {len(layer.tracker.schedule)}-step schedule")
            bits = lp.activation_bits
            uniform = len(set(bits)) == 1
            layer.activation = replace(layer.activation, bits=bits[0] if uniform else tuple(bits))
        return model

    def with_settings(self, **settings: Any) -> Policy:
        """A copy with ``settings`` added to (or replacing keys of) its settings."""
        return replace(self, settings={**self.settings, **settings})

    def with_activation_bits(self, bits: np.ndarray) -> Policy:
        """A copy with activation bits (L, T) replaced."""
        layers = {n: LayerPolicy(lp.weight_bits, tuple(int(b) for b in row))
                  for (n, lp), row in zip(self.layers.items(), bits)}
        return replace(self, layers=layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = {n: {"weight_bits": lp.weight_bits,
                           "activation_bits": list(lp.activation_bits)}
                       for n, lp in self.layers.items()}
        d["schedule"] = list(self.schedule)
        d["average_activation_bits"] = self.average_activation_bits
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        data = dict(data)
        data.pop("average_activation_bits", None)
        check_keys(data, ("model", "method", "schedule", "layers", "recipe", "settings",
                          "version"), "policy")
        layers = {n: LayerPolicy(int(v["weight_bits"]), tuple(int(b) for b in v["activation_bits"]))
                  for n, v in data.pop("layers").items()}
        return cls(layers=layers, schedule=tuple(float(t) for t in data.pop("schedule")), **data)

    def save(self, path: str | Path) -> Path:
        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a valid policy file ({exc})") from None
