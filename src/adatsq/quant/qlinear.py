"""A quantized linear layer whose activation bit width can change with the sampling timestep.

The layer computes ``y = Q_w(W') Q_a(T(x)) + b (+ L2 L1 T(x))`` where ``T`` is an optional input
transform (division by per-channel smoothing factors, then an orthogonal Hadamard rotation, both
folded into ``W'`` offline), ``Q_a`` the activation fake-quantizer at the bit width of the current
timestep, and ``L2 L1`` an optional 16-bit low-rank branch (SVDQuant).

The current timestep index comes from a :class:`StepTracker` shared by all layers of a model. The
tracker is updated by a forward pre-hook on the transformer from the *timestep value* the
transformer is called with (matched to the nearest entry of the schedule), so the layer works inside
any sampling loop, including diffusers' own pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adatsq.quant.primitives import (
    FULL_PRECISION,
    WeightQuantizer,
    dequantize,
    quantize_activation,
)
from adatsq.quant.rotation import rotate


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: saved and loaded layers then run the very same kernels (bit-exact)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


class StepTracker:
    """Maps the timestep value of the current transformer call to a step index of the schedule.

    Args:
        schedule: the timestep values (T,) the transformer receives at steps 0..T-1.
    """

    def __init__(self, schedule: torch.Tensor):
        self.schedule = torch.as_tensor(schedule, dtype=torch.float64).flatten()
        self.index: int | None = None
        self.off_schedule: float | None = None
        """The timestep of the current call when it lies on no step of the schedule."""
        s = self.schedule
        gaps = (s[1:] - s[:-1]).abs()
        # a call matches step i when within a tenth of the gap to i's neighbours, and never
        # closer than BF16 rounding of the timestep (a 1/256 part of the largest)
        near = torch.full_like(s, float("inf"))
        near[:-1] = gaps
        near[1:] = torch.minimum(near[1:], gaps)
        floor = s.abs().max() / 256 if len(s) else 0.0
        self.tolerance = torch.maximum(near / 10, torch.as_tensor(floor, dtype=torch.float64))

    def update(self, timestep: torch.Tensor | float) -> int:
        t = float(torch.as_tensor(timestep).flatten()[0])
        distance = (self.schedule - t).abs()
        self.index = int(torch.argmin(distance))
        on = bool(distance[self.index] <= self.tolerance[self.index])
        self.off_schedule = None if on else t
        return self.index

    def check(self) -> None:
        """Raises ``ValueError`` when the current call is on no step of the schedule (a model
        whose bits change per step then cannot know which step it is at)."""
        if self.off_schedule is not None:
            raise ValueError(f"the transformer was called at timestep {self.off_schedule:g}, "
                             f"which is on none of the {len(self.schedule)} steps its per-step "
                             f"activation bits were chosen for; sample with "
                             f"{len(self.schedule)} steps (and the schedule of the policy) or "
                             "quantize for this schedule")

    def attach(self, model: nn.Module, timestep_of) -> torch.utils.hooks.RemovableHandle:
        """Registers the pre-hook; ``timestep_of(args, kwargs)`` extracts the timestep."""

        def hook(_module, args, kwargs):
            self.update(timestep_of(args, kwargs))

        return model.register_forward_pre_hook(hook, with_kwargs=True)


@dataclass(frozen=True)
class ActivationQuant:
    """How a layer quantizes its input.

    Attributes:
        bits: bit width per step (T,) as a tuple, or a single width for every step.
        granularity: see :func:`adatsq.quant.primitives.quantize_activation`.
        symmetric: symmetric ranges instead of MinMax.
        group_size: channels per group for ``"group"``.
    """

    bits: tuple[int, ...] | int = FULL_PRECISION
    granularity: str = "token"
    symmetric: bool = False
    group_size: int = 64

    def per_step(self, steps: int) -> tuple[int, ...]:
        """The bit width of each of ``steps`` sampling steps."""
        if isinstance(self.bits, int):
            return (self.bits,) * steps
        if len(self.bits) != steps:
            raise ValueError(f"{len(self.bits)} activation widths for {steps} steps")
        return tuple(self.bits)

    def bits_at(self, index: int | None) -> int:
        if isinstance(self.bits, int):
            return self.bits
        if index is None:
            return max(self.bits)  # outside a tracked call: the safest width
        return self.bits[min(index, len(self.bits) - 1)]


class QuantLinear(nn.Module):
    """Fake-quantized replacement of an ``nn.Linear`` (see the module docstring).

    Weights are held as integer codes with per-group scales and zero points (so they can be packed
    exactly) or, for 16-bit weights, as a float matrix.
    """

    def __init__(self, in_features: int, out_features: int, *, weight_bits: int,
                 codes: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 zero: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, activation: ActivationQuant = ActivationQuant(),
                 tracker: StepTracker | None = None, smooth: torch.Tensor | None = None,
                 rotate_input: bool = False, rotation_signs: torch.Tensor | None = None,
                 lowrank: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits = weight_bits
        self.activation = activation
        self.tracker = tracker
        self.rotate_input = rotate_input
        if weight_bits == FULL_PRECISION:
            if weight is None:
                raise ValueError("a 16-bit QuantLinear needs its float weight")
            self.register_buffer("weight", _own(weight))
        else:
            if codes is None or scale is None or zero is None:
                raise ValueError("a quantized QuantLinear needs codes, scale and zero")
            if codes.shape != (out_features, in_features):
                raise ValueError(f"codes of shape {tuple(codes.shape)} do not match the layer "
                                 f"({out_features}, {in_features})")
            self.register_buffer("codes", codes.to(torch.uint8))
            self.register_buffer("scale", scale.to(torch.float32))
            self.register_buffer("zero", zero.to(torch.float32))
            self.register_buffer("weight", torch.empty(0), persistent=False)
            self.refresh_weight()
        self.register_buffer("bias", None if bias is None else _own(bias))
        self.register_buffer("smooth", None if smooth is None else _own(smooth))
        if rotation_signs is not None and (not rotate_input or rotation_signs.shape != (
                in_features,)):
            raise ValueError(f"rotation signs of shape {tuple(rotation_signs.shape)} need "
                             f"rotate_input and shape ({in_features},)")
        self.register_buffer("rotation_signs",
                             None if rotation_signs is None else _own(rotation_signs))
        down, up = (None, None) if lowrank is None else (_own(t) for t in lowrank)
        self.register_buffer("lowrank_down", down)
        self.register_buffer("lowrank_up", up)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weights, activation: ActivationQuant,
                    tracker: StepTracker | None, *, weight: torch.Tensor | None = None,
                    codes: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                    zero: torch.Tensor | None = None, **transforms) -> QuantLinear:
        """A QuantLinear for ``linear`` under ``weights`` (a :class:`adatsq.config.WeightSpec`).

        Round-to-nearest on ``weight`` (default: the layer's own; pass the transformed weight when
        ``transforms`` such as ``smooth`` or ``rotate_input`` are given) unless a solver supplies
        ``codes``, ``scale`` and ``zero``.
        """
        W = (linear.weight if weight is None else weight).detach().float()  # (out, in)
        if weights.bits != FULL_PRECISION and codes is None:
            quantizer = weight_quantizer(weights)
            scale, zero = quantizer.group_params(W)
            codes = quantizer.codes(W, scale, zero)
        return cls(linear.in_features, linear.out_features, weight_bits=weights.bits, codes=codes,
                   scale=scale, zero=zero, weight=W if weights.bits == FULL_PRECISION else None,
                   bias=linear.bias, activation=activation, tracker=tracker, **transforms)

    def refresh_weight(self) -> None:
        """Recomputes the dequantized weight from codes, scale and zero."""
        group = self.in_features // self.scale.shape[1]
        self.weight = dequantize(self.codes.float(), self.scale, self.zero, group)

    @property
    def group_size(self) -> int | None:
        if self.weight_bits == FULL_PRECISION:
            return None
        return self.in_features // self.scale.shape[1]

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input transform T(x) the stored weight expects."""
        if self.smooth is not None:
            x = x / self.smooth
        if self.rotate_input:
            x = rotate(x, None if self.rotation_signs is None else self.rotation_signs.to(x.dtype))
        return x

    def current_bits(self) -> int:
        if self.tracker is None:
            return self.activation.bits_at(None)
        if not isinstance(self.activation.bits, int):
            self.tracker.check()
        return self.activation.bits_at(self.tracker.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform_input(x)
        bits = self.current_bits()
        xq = quantize_activation(x, bits, self.activation.granularity, self.activation.symmetric,
                                 self.activation.group_size)
        y = nn.functional.linear(xq, self.weight.to(x.dtype), None if self.bias is None else
                                 self.bias.to(x.dtype))
        if self.lowrank_down is not None:
            y = y + (x @ self.lowrank_down.T.to(x.dtype)) @ self.lowrank_up.T.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        bits = self.activation.bits if isinstance(self.activation.bits, int) else 'per-step'
        return (f"in={self.in_features}, out={self.out_features}, w_bits={self.weight_bits}, "
                f"a_bits={bits}, "
                f"granularity={self.activation.granularity}, rotate={self.rotate_input}"
                f"{' (randomized)' if self.rotation_signs is not None else ''}, "
                f"smooth={self.smooth is not None}, lowrank={self.lowrank_down is not None}")



def weight_quantizer(spec) -> WeightQuantizer:
    """The :class:`WeightQuantizer` of a :class:`adatsq.config.WeightSpec`."""
    return WeightQuantizer(spec.bits, spec.symmetric, spec.group_size)


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replaces the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
