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
from typing import Any

import torch
from torch import nn

from adatsq.quant import integer
from adatsq.quant.primitives import (
    FULL_PRECISION,
    WeightQuantizer,
    dequantize,
    pack_codes,
    quantize_activation,
    unpack_codes,
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
        self.step: torch.Tensor | None = None
        """The step index as a 0-d tensor, inside a compiled graph (else None)."""
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

    def update(self, timestep: torch.Tensor | float) -> int | torch.Tensor:
        if torch.compiler.is_compiling():
            # inside a compiled graph the step stays a tensor: no host sync, no graph break (a
            # call off the schedule then takes the nearest step instead of being refused)
            t = torch.as_tensor(timestep).flatten()[0].to(torch.float64)
            self.step = torch.argmin((self.schedule.to(t.device) - t).abs())
            self.index = self.off_schedule = None
            return self.step
        t = float(torch.as_tensor(timestep).flatten()[0])
        self.step = None
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


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The 16-bit dtype a quantized layer of a ``dtype`` model holds its floats in: bfloat16 for a
    bfloat16 model (Flux and Wan ship in bf16; FP16 overflows past 65504), else float16."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


EXECUTIONS = ("integer", "simulated")
"""How a quantized layer computes: int8 matrix multiplies where its quantization maps onto them
(:mod:`adatsq.quant.integer`), else, or when asked, the simulated reference (dequantized weights,
fake-quantized activations, a float matrix multiply)."""

OPTIONAL_TENSORS = ("bias", "smooth", "rotation_signs", "lowrank_down", "lowrank_up")
"""Tensors a quantized layer holds only when its method uses them."""
OPERAND_BLOCK = 1 << 24
"""Weights of an uncached integer layer unpacked to int8 at once: row blocks of about 16 M
(16 MB; a whole layer up to Flux-Dev's 3072 x 3072 attention projections)."""
BLOCK = 1 << 20
"""Weights of more elements than this are never dequantized whole when uncached: the layer
multiplies by blocks of about this many (output rows x inputs), so its temporaries stay near
7 bytes per block element (codes, one float32 temporary, the 16-bit block: 7 MB) however wide
the layer (Flux-Dev's largest holds 57 M weights)."""


class QuantLinear(nn.Module):
    """Fake-quantized replacement of an ``nn.Linear`` (see the module docstring).

    Its state is what an artifact stores, and nothing more: b-bit weight codes packed densely into
    bytes (``qweight``: two 4-bit codes per byte, 3-bit codes across bytes) with per-group
    ``scale`` and ``zero`` (or, for 16-bit weights, the ``weight`` matrix), and the optional
    ``bias``, smoothing factors, rotation signs and low-rank branch, every float in one 16-bit
    dtype (:func:`storage_dtype`). The weight is dequantized to the input's dtype at each call
    (``cache=True`` keeps it, trading memory for speed). :meth:`layout` and :meth:`from_state`
    describe and rebuild a layer exactly, so saving and loading are bit-exact. The given tensors
    are copied, unless ``adopt`` (then contiguous ones are kept as they are: :meth:`from_state`
    takes tensors just read, and a second copy would double the memory a load needs).
    """

    def __init__(self, in_features: int, out_features: int, *, weight_bits: int,
                 codes: torch.Tensor | None = None, qweight: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, zero: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 activation: ActivationQuant = ActivationQuant(),
                 tracker: StepTracker | None = None, smooth: torch.Tensor | None = None,
                 rotate_input: bool = False, rotation_signs: torch.Tensor | None = None,
                 lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float16, cache: bool = False,
                 adopt: bool = False, execution: str = "integer"):
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"a QuantLinear stores floats in float16 or bfloat16, not {dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits = weight_bits
        self.activation = activation
        self.tracker = tracker
        self.rotate_input = rotate_input
        self.cache = cache
        self.storage_dtype = dtype
        self._cached: torch.Tensor | None = None
        self._operand: torch.Tensor | None = None
        self._weight_sums: torch.Tensor | None = None  # rows of the operand summed, when needed
        self._factors = integer.hadamard_factors(in_features) if rotate_input else None
        self.execution = execution

        def own(t: torch.Tensor | None, shape: tuple[int, ...], what: str) -> torch.Tensor | None:
            if t is None:
                return None
            if tuple(t.shape) != shape:
                raise ValueError(f"{what} of shape {tuple(t.shape)} does not match the layer "
                                 f"({in_features} -> {out_features}): {shape} expected")
            t = t.to(dtype) if t.is_floating_point() else t
            return t if adopt and t.is_contiguous() else _own(t)

        if weight_bits == FULL_PRECISION:
            if weight is None:
                raise ValueError("a 16-bit QuantLinear needs its float weight")
            self.register_buffer("weight", own(weight, (out_features, in_features), "weight"))
        else:
            if (codes is None) == (qweight is None) or scale is None or zero is None:
                raise ValueError("a quantized QuantLinear needs codes (or packed qweight), "
                                 "scale and zero")
            if codes is not None:
                if tuple(codes.shape) != (out_features, in_features):
                    raise ValueError(f"codes of shape {tuple(codes.shape)} does not match the "
                                     f"layer ({in_features} -> {out_features}): "
                                     f"{(out_features, in_features)} expected")
                qweight = pack_codes(codes, weight_bits)
            n = (out_features * in_features * weight_bits + 7) // 8
            if qweight.dtype != torch.uint8:
                raise ValueError(f"packed codes must be uint8, not {qweight.dtype}")
            self.register_buffer("qweight", own(qweight.reshape(-1), (n,), "packed codes"))
            groups = scale.shape[1] if scale.dim() == 2 and scale.shape[1] else 0
            if not groups or in_features % groups:
                raise ValueError(f"scale of shape {tuple(scale.shape)} does not split "
                                 f"{in_features} input channels into groups")
            self.register_buffer("scale", own(scale, (out_features, groups), "scale"))
            self.register_buffer("zero", own(zero, (out_features, groups), "zero"))
        self.register_buffer("bias", own(bias, (out_features,), "bias"))
        self.register_buffer("smooth", own(smooth, (in_features,), "smooth"))
        if rotation_signs is not None and not rotate_input:
            raise ValueError("rotation signs need rotate_input")
        self.register_buffer("rotation_signs",
                             own(rotation_signs, (in_features,), "rotation signs"))
        if lowrank is not None:
            rank = lowrank[0].shape[0]
            lowrank = (own(lowrank[0], (rank, in_features), "low-rank down"),
                       own(lowrank[1], (out_features, rank), "low-rank up"))
        self.register_buffer("lowrank_down", None if lowrank is None else lowrank[0])
        self.register_buffer("lowrank_up", None if lowrank is None else lowrank[1])
        self._beta = self._weight_centre_offset()

    @property
    def execution(self) -> str:
        """``"integer"`` (int8 matrix multiplies where the layer maps onto them) or
        ``"simulated"`` (the float reference); see :data:`EXECUTIONS`."""
        return self._execution

    @execution.setter
    def execution(self, mode: str) -> None:
        if mode not in EXECUTIONS:
            raise ValueError(f"unknown execution {mode!r}; use one of {', '.join(EXECUTIONS)}")
        self._execution = mode
        self._operand = None

    def _weight_centre_offset(self) -> torch.Tensor | None:
        """``2^(b-1) - zero`` per output row (int32) for per-row integer weights whose zero
        points are not all the centre (None for symmetric weights, or no integer path)."""
        if self.weight_bits == FULL_PRECISION or self.zero.shape[1] != 1 or self.zero.is_meta:
            return None
        beta = (2 ** (self.weight_bits - 1) - self.zero[:, 0].float()).to(torch.int32)
        return beta if bool(beta.any()) else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, weights, activation: ActivationQuant,
                    tracker: StepTracker | None, *, weight: torch.Tensor | None = None,
                    codes: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                    zero: torch.Tensor | None = None, **transforms) -> QuantLinear:
        """A QuantLinear for ``linear`` under ``weights`` (a :class:`adatsq.config.WeightSpec`).

        Round-to-nearest on ``weight`` (default: the layer's own; pass the transformed weight when
        ``transforms`` such as ``smooth`` or ``rotate_input`` are given) unless a solver supplies
        ``codes``, ``scale`` and ``zero``. Floats are held in the 16-bit dtype of the linear's.
        """
        W = (linear.weight if weight is None else weight).detach()  # (out, in)
        if weights.bits != FULL_PRECISION and codes is None:
            # row blocks (parameters are per row): float32 temporaries of one block, not of
            # the whole layer, which at Flux-Dev's width would be several times its size
            quantizer = weight_quantizer(weights)
            rows = max(1, BLOCK // W.shape[1])
            parts = []
            for r in range(0, W.shape[0], rows):
                Wb = W[r:r + rows].float()
                s, z = quantizer.group_params(Wb)
                parts.append((quantizer.codes(Wb, s, z).to(torch.uint8), s, z))
            codes, scale, zero = (torch.cat(p) for p in zip(*parts))
        return cls(linear.in_features, linear.out_features, weight_bits=weights.bits, codes=codes,
                   scale=scale, zero=zero, weight=W if weights.bits == FULL_PRECISION else None,
                   bias=linear.bias, activation=activation, tracker=tracker,
                   dtype=storage_dtype(linear.weight.dtype), **transforms)

    # -- state ------------------------------------------------------------------------------

    def layout(self) -> dict[str, Any]:
        """What, besides its tensors, rebuilds this layer (JSON; an artifact's quantization map)."""
        a = self.activation
        return {"in_features": self.in_features, "out_features": self.out_features,
                "weight_bits": self.weight_bits, "group_size": self.group_size,
                "rotate_input": self.rotate_input,
                "activation": {"granularity": a.granularity, "symmetric": a.symmetric,
                               "group_size": a.group_size},
                "tensors": [k for k in OPTIONAL_TENSORS if getattr(self, k) is not None],
                **({"weight_only": True} if isinstance(self, WeightOnlyLinear) else {})}

    @classmethod
    def from_state(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor],
                   activation_bits: int | tuple[int, ...],
                   dtype: torch.dtype | None = torch.float16) -> QuantLinear:
        """The layer :meth:`layout` and ``state_dict()`` describe, with ``activation_bits`` (the
        policy's); it keeps ``tensors`` (no copy) where they are contiguous and in ``dtype``
        (None: the dtype its stored floats have). Raises ``ValueError`` naming a missing tensor
        or a shape that does not fit."""
        need = (["weight"] if layout["weight_bits"] == FULL_PRECISION else
                ["qweight", "scale", "zero"]) + list(layout["tensors"])
        missing = [k for k in need if k not in tensors]
        if missing:
            raise ValueError(f"tensor {missing[0]} is missing")
        extra = {k: tensors[k] for k in need}
        if dtype is None:
            dtype = extra["weight" if layout["weight_bits"] == FULL_PRECISION else "scale"].dtype
        if layout["weight_bits"] != FULL_PRECISION:
            shape = (layout["out_features"], layout["in_features"] // layout["group_size"])
            for key in ("scale", "zero"):
                if tuple(extra[key].shape) != shape:
                    raise ValueError(f"{key} of shape {tuple(extra[key].shape)} does not match "
                                     f"the layout: {shape} expected")
        lowrank = None
        if "lowrank_down" in extra:
            lowrank = (extra.pop("lowrank_down"), extra.pop("lowrank_up"))
        a = layout["activation"]
        activation = ActivationQuant(activation_bits, a["granularity"], a["symmetric"],
                                     a["group_size"])
        if layout.get("weight_only"):
            cls, activation = WeightOnlyLinear, ActivationQuant()
        return cls(layout["in_features"], layout["out_features"],
                   weight_bits=layout["weight_bits"], activation=activation,
                   rotate_input=layout["rotate_input"], lowrank=lowrank, dtype=dtype,
                   adopt=True, **extra)

    @property
    def codes(self) -> torch.Tensor:
        """The weight codes (out, in), unpacked."""
        return unpack_codes(self.qweight, self.weight_bits, (self.out_features, self.in_features))

    @property
    def group_size(self) -> int | None:
        if self.weight_bits == FULL_PRECISION:
            return None
        return self.in_features // self.scale.shape[1]

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) the layer multiplies by, in ``dtype`` (computed in float32)."""
        if self.weight_bits == FULL_PRECISION:
            return self.weight.to(dtype)
        if self._cached is not None and self._cached.dtype == dtype:
            return self._cached
        W = dequantize(self.codes, self.scale, self.zero, self.group_size, dtype)
        if self.cache:
            self._cached = W
        return W

    def _blocks(self) -> list[tuple[int, int]] | None:
        """Row blocks of the output for an uncached, large packed weight (None: in one go)."""
        n_out, n_in = self.out_features, self.in_features
        if self.weight_bits == FULL_PRECISION or self.cache or n_out * n_in <= BLOCK or \
                n_in % 8:  # rows start on whole bytes only when 8 codes fill whole bytes
            return None
        rows = max(1, BLOCK // n_in)
        return [(r, min(r + rows, n_out)) for r in range(0, n_out, rows)]

    def _weight_rows(self, r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``r0:r1`` of the dequantized weight, unpacking only their codes."""
        per_row = self.in_features * self.weight_bits // 8  # bytes (in_features % 8 == 0)
        codes = unpack_codes(self.qweight[r0 * per_row:r1 * per_row], self.weight_bits,
                             (r1 - r0, self.in_features))
        return dequantize(codes, self.scale[r0:r1], self.zero[r0:r1], self.group_size, dtype)

    def _apply(self, fn, recurse=True):
        """Moves follow ``model.to(device)``; dtype casts do not touch the stored floats (they
        define the quantized layer; the compute dtype follows the input)."""
        self._cached = self._operand = self._weight_sums = None
        anchor = self.weight if self.weight_bits == FULL_PRECISION else self.qweight
        device = fn(torch.zeros(1, dtype=self.storage_dtype, device=anchor.device)).device
        for name, buf in self._buffers.items():
            if buf is not None:
                self._buffers[name] = buf.to(device)
        if self._factors is not None:
            self._factors = tuple(f.to(device) for f in self._factors)
        self._beta = self._weight_centre_offset()
        return self

    # -- compute ----------------------------------------------------------------------------

    def transform_input(self, x: torch.Tensor, factored: bool = False) -> torch.Tensor:
        """The input transform T(x) the stored weight expects; ``factored`` rotates by two
        matrix multiplies (:func:`adatsq.quant.integer.rotate_factored`: the same map, other
        float rounding, several times faster) instead of the reference :func:`rotate`."""
        if self.smooth is not None:
            x = x / self.smooth.to(x.dtype)
        if self.rotate_input:
            signs = None if self.rotation_signs is None else self.rotation_signs.to(x.dtype)
            if not factored:
                return rotate(x, signs)
            x = x if signs is None else x * signs
            x = integer.rotate_factored(x, *(f.to(x.dtype) for f in self._factors))
        return x

    def current_bits(self) -> int | torch.Tensor:
        """The activation bits of the current call: an int, or inside a compiled graph, for
        per-step bits, a 0-d tensor looked up from the tracker's step."""
        if self.tracker is None or isinstance(self.activation.bits, int):
            return self.activation.bits_at(None)
        if self.tracker.step is not None:
            table = torch.tensor(self.activation.bits, device=self.tracker.step.device)
            return table.index_select(0, self.tracker.step.view(1)).view(())
        self.tracker.check()
        return self.activation.bits_at(self.tracker.index)

    def runs_integer(self, bits: int | torch.Tensor, x: torch.Tensor | None = None) -> bool:
        """Whether a call at ``bits`` activation bits (on input ``x``) takes the integer path
        (a 0-d tensor stands for any of the layer's per-step widths but 16)."""
        return (self._execution == "integer"
                and (isinstance(bits, torch.Tensor) or bits != FULL_PRECISION)
                and self.weight_bits != FULL_PRECISION and self.scale.shape[1] == 1
                and self.activation.granularity in integer.INTEGER_GRANULARITIES
                and integer.supports(self.weight_bits, self.in_features)
                and (x is None or x.device.type != "cuda" or _cuda_int_mm_fits(x, self)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.current_bits()
        if isinstance(bits, torch.Tensor) and FULL_PRECISION in self.activation.bits:
            # a compiled graph with a 16-bit step among quantized ones: both, chosen in-graph
            return torch.cond(bits == FULL_PRECISION, self._forward_at_16,
                              self._forward_quantized, (x, bits))
        return self._forward_quantized(x, bits)

    def _forward_at_16(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        return self._forward_quantized(x, FULL_PRECISION)

    def _forward_quantized(self, x: torch.Tensor, bits: int | torch.Tensor) -> torch.Tensor:
        if self.runs_integer(bits, x):
            return self._integer_forward(x, bits)
        x = self.transform_input(x, factored=self._execution == "integer")
        xq = quantize_activation(x, bits, self.activation.granularity, self.activation.symmetric,
                                 self.activation.group_size)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        blocks = self._blocks()
        if blocks is None:
            y = nn.functional.linear(xq, self.dequantized_weight(x.dtype), bias)
        else:  # output rows a block at a time: no dequantized copy of the whole weight
            y = torch.empty(*xq.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
            for r0, r1 in blocks:
                y[..., r0:r1] = nn.functional.linear(xq, self._weight_rows(r0, r1, x.dtype),
                                                     None if bias is None else bias[r0:r1])
        return self._add_lowrank(y, x)

    def _add_lowrank(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y`` plus the 16-bit low-rank branch of the transformed input ``x`` (if any)."""
        if self.lowrank_down is not None:
            y = y + (x @ self.lowrank_down.T.to(x.dtype)) @ self.lowrank_up.T.to(x.dtype)
        return y

    # -- integer execution ------------------------------------------------------------------

    def _operand_rows(self, r0: int, r1: int) -> torch.Tensor:
        """The int8 weight operand of output rows ``r0:r1``: with ``cache``, the whole operand
        in the natural column order, kept; else unpacked now in the packed column order."""
        if self.cache:
            if self._operand is None:
                B = integer.weight_operand(self.qweight, self.weight_bits, self.out_features,
                                           self.in_features)
                order = integer.column_order(self.in_features, self.weight_bits)
                self._operand = B[:, torch.argsort(order).to(B.device)].contiguous()
            return self._operand[r0:r1]
        per_row = self.in_features * self.weight_bits // 8
        return integer.weight_operand(self.qweight[r0 * per_row:r1 * per_row], self.weight_bits,
                                      r1 - r0, self.in_features)

    def _sums(self) -> torch.Tensor | None:
        """Row sums of the int8 weight operand (int32), kept from the first eager call that
        needs them (8-bit asymmetric activations); None inside a compiled graph until then."""
        if self._weight_sums is None and not torch.compiler.is_compiling():
            rows = max(1, OPERAND_BLOCK // self.in_features)
            self._weight_sums = torch.cat([
                self._operand_rows(r, min(r + rows, self.out_features)).sum(1, dtype=torch.int32)
                for r in range(0, self.out_features, rows)])
        return self._weight_sums

    def _integer_forward(self, x: torch.Tensor, bits: int | torch.Tensor) -> torch.Tensor:
        xt = self.transform_input(x, factored=True)
        eight = None if isinstance(bits, int) else 8 in self.activation.bits
        A, x_scale, alpha = integer.activation_operand(
            xt, bits, self.activation.granularity, self.activation.symmetric,
            8 if self.cache else self.weight_bits, eight)
        sums = None if alpha is None else self._sums()
        n_out = self.out_features
        rows = n_out if self.cache else max(1, min(n_out, OPERAND_BLOCK // self.in_features))
        w_scale, beta, bias = self.scale[:, 0], self._beta, self.bias
        if rows >= n_out or torch.compiler.is_compiling():
            Y = integer.int_matmul(A, self._operand_rows(0, n_out), alpha, beta, sums)
            y = integer.rescale(Y, x_scale, w_scale, bias, x.dtype)
        else:  # output rows a block at a time: one block's int8 operand at once
            y = torch.empty(A.shape[0], n_out, dtype=x.dtype, device=x.device)
            for r0 in range(0, n_out, rows):
                r1 = min(r0 + rows, n_out)
                Y = integer.int_matmul(A, self._operand_rows(r0, r1), alpha,
                                       None if beta is None else beta[r0:r1],
                                       None if sums is None else sums[r0:r1])
                integer.rescale(Y, x_scale, w_scale[r0:r1],
                                None if bias is None else bias[r0:r1], x.dtype, out=y[:, r0:r1])
        return self._add_lowrank(y.view(*x.shape[:-1], n_out), xt)

    def extra_repr(self) -> str:
        bits = self.activation.bits if isinstance(self.activation.bits, int) else 'per-step'
        return (f"in={self.in_features}, out={self.out_features}, w_bits={self.weight_bits}, "
                f"a_bits={bits}, "
                f"granularity={self.activation.granularity}, rotate={self.rotate_input}"
                f"{' (randomized)' if self.rotation_signs is not None else ''}, "
                f"smooth={self.smooth is not None}, lowrank={self.lowrank_down is not None}")


def _cuda_int_mm_fits(x: torch.Tensor, layer: QuantLinear) -> bool:
    """cuBLASLt's int8 GEMM needs more than 16 rows and widths that are multiples of 8."""
    return x.numel() // x.shape[-1] > 16 and layer.in_features % 8 == 0 and \
        layer.out_features % 8 == 0


class WeightOnlyLinear(QuantLinear):
    """A layer with quantized weights and 16-bit activations outside any policy (the timestep
    modulation, :attr:`adatsq.config.WeightSpec.modulation`)."""


def cache_weights_(model: nn.Module, on: bool = True) -> nn.Module:
    """Turns the weight cache of every quantized layer of ``model`` on (faster sampling: the
    int8 operand, 1 byte more per weight, on the integer path; the dequantized weight, 4 bytes
    more, on the simulated one) or off (the cache is freed)."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.cache = on
            m._cached = m._operand = None
            if on and m.runs_integer(8):  # built now, outside any compiled graph
                m._operand_rows(0, 0)
    return model


def set_execution_(model: nn.Module, execution: str) -> nn.Module:
    """Sets how every quantized layer of ``model`` computes (:data:`EXECUTIONS`): ``"integer"``
    (the default) or ``"simulated"`` (the float reference the methods are defined by)."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.execution = execution
    return model


def weight_quantizer(spec) -> WeightQuantizer:
    """The :class:`WeightQuantizer` of a :class:`adatsq.config.WeightSpec`."""
    return WeightQuantizer(spec.bits, spec.symmetric, spec.group_size)


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replaces the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
