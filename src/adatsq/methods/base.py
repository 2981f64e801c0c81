"""What a quantization method is: a small object that turns calibration statistics into layers.

Every method shares one driver (:func:`adatsq.pipeline.quantize_`): capture (if the method needs
calibration), ``prepare``, ``quantize_layer`` for each quantizable layer, ``finalize``. Methods
never see model classes, only layers, their names and statistics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from adatsq import distributed
from adatsq.calib.capture import CalibrationStats
from adatsq.calib.gptq import gptq_quantize
from adatsq.checkpoint import Checkpoint
from adatsq.config import GPTQOptions, Recipe
from adatsq.policy import Policy
from adatsq.quant.lowrank import lowrank_split
from adatsq.quant.primitives import FULL_PRECISION
from adatsq.quant.qlinear import ActivationQuant, QuantLinear, StepTracker, weight_quantizer
from adatsq.quant.rotation import random_signs, rotate, rotate_hessian
from adatsq.quant.smoothing import smooth_hessian, smooth_weight

_METHODS: dict[str, type[Method]] = {}


class Method(ABC):
    """Base class of the quantization methods.

    Attributes:
        name: registry name (``rtn``, ``gptq``, ...), also the ``method`` of report rows.
        source: the paper and repository whose recommended settings the method follows.
        capture: Hessian mode the method needs from calibration (``"none"`` for no Hessian);
            ``None`` if the method needs no calibration at all.
        streams: whether :meth:`quantize_layer` needs only its own layer's statistics, so that a
            model too large for one capture is calibrated group by group (``prepare`` and
            ``finalize`` then see every layer's small statistics but no Hessian).
    """

    name: ClassVar[str]
    source: ClassVar[str] = ""
    capture: ClassVar[str | None] = None
    streams: ClassVar[bool] = True
    #: the run's :class:`~adatsq.checkpoint.Checkpoint` (set by the driver; None: not resumable)
    checkpoint: Checkpoint | None = None
    #: whether long phases show a bar (set by the driver from ``quantize_(progress=...)``)
    progress: bool = True

    @property
    def search_execution(self) -> str:
        """How the quantized layers compute while :meth:`finalize` samples with them."""
        return "simulated"

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.options = recipe.options  # the method's typed options (adatsq.config)

    def activation(self) -> ActivationQuant:
        """The activation quantizer the recipe asks for."""
        a = self.recipe.activations
        return ActivationQuant(a.bits, a.granularity, a.symmetric, a.group_size)

    def granularity(self) -> dict[str, str]:
        """Weight and activation granularity, as recorded in report rows."""
        w, a = self.recipe.weights, self.recipe.activations
        wg = f"group {w.group_size}" if w.group_size else "per-channel"
        ag = {"token": "per-token", "group": f"per-token group {a.group_size}",
              "sample": "per-sample"}[a.granularity]
        return {"weights": f"{wg} {'sym' if w.symmetric else 'asym'}",
                "activations": f"{ag} dynamic {'sym' if a.symmetric else 'asym'}"}

    def prepare(self, pipeline, stats: CalibrationStats | None) -> None:
        """Model-wide preparation before layers are quantized (default: nothing)."""

    @abstractmethod
    def quantize_layer(self, name: str, linear: nn.Linear, stats: CalibrationStats | None,
                       tracker: StepTracker) -> QuantLinear:
        """The quantized replacement of ``linear``."""

    def resumable(self, name: str, what: str) -> tuple[dict, Callable | None]:
        """``(done, save)`` of loop ``name`` in the run's checkpoint: the items an interrupted
        run finished (the same on every rank, else ``ValueError``) and ``save(i, value)`` for
        new ones (JSON values); ``({}, None)`` without a checkpoint."""
        if self.checkpoint is None:
            return {}, None
        done = self.checkpoint.results(name)
        distributed.current().agree(sorted(done), f"finished {what} in the checkpoint")
        return done, lambda i, value: self.checkpoint.save_result(name, i, value)

    def map_items(self, name: str, n: int, compute, desc: str = "") -> list:
        """``[compute(i) for i in range(n)]`` over the ranks of a distributed run
        (:func:`adatsq.distributed.map_items`), resuming from and saving to the run's checkpoint
        under ``name`` (:meth:`resumable`)."""
        done, save = self.resumable(name, desc or name)
        return distributed.map_items(n, compute, done=done, on_result=save,
                                     desc=desc or name, progress=self.progress)

    def finalize(self, pipeline, stats: CalibrationStats | None, tracker: StepTracker,
                 layers: dict[str, QuantLinear], policy: Policy) -> Policy:
        """Model-wide work after all layers are quantized (a search over activation bits, say).

        Args:
            policy: the layers' bits as :meth:`quantize_layer` built them.

        Returns:
            The policy to apply (:meth:`Policy.apply_` is the only way bits reach the model),
            with the settings worth keeping.
        """
        return policy


def solve_weights(W: torch.Tensor, H: torch.Tensor | None, spec,
                  gptq: GPTQOptions | None) -> dict[str, torch.Tensor]:
    """Codes, scales and zeros of ``W`` (out, in) under ``spec`` (a WeightSpec).

    GPTQ on the Hessian ``H`` (in, in) of the layer's (transformed) input when ``gptq`` is given,
    round-to-nearest otherwise; nothing for 16-bit weights.
    """
    if spec.bits == FULL_PRECISION:
        return {}
    quantizer = weight_quantizer(spec)
    if gptq is None or H is None:
        scale, zero = quantizer.group_params(W)
        return {"codes": quantizer.codes(W, scale, zero), "scale": scale, "zero": zero}

    result = gptq_quantize(W, H, quantizer, block_size=gptq.block_size, damp=gptq.damp,
                           act_order=gptq.act_order, static_groups=spec.group_size is not None)
    return {"codes": result.codes, "scale": result.scale, "zero": result.zero}


def layer_signs(method: Method, name: str, width: int) -> torch.Tensor | None:
    """The random signs of layer ``name``'s input rotation, seeded by the calibration seed, or
    None when the method's ``random_signs`` option is off (a plain Hadamard rotation)."""
    if not getattr(method.options, "random_signs", False):
        return None
    return random_signs(width, method.recipe.calibration.seed, name)


def rotated_layer(method: Method, name: str, linear: nn.Linear, H: torch.Tensor | None,
                  tracker: StepTracker, gptq: GPTQOptions | None,
                  rank: int | None = None, smooth: torch.Tensor | None = None) -> QuantLinear:
    """A layer whose input is rotated online (``R = D H_had``, random signs ``D`` per
    :func:`layer_signs`) and whose weight ``W R`` is solved by GPTQ on the rotated Hessian
    ``Rᵀ H R`` (``gptq`` given) or rounded to nearest (QuaRot, AdaTSQ).

    ``rank``: a 16-bit low-rank branch of ``W R`` (SVDQuant's split, on the rotated input); only
    the residual is quantized.
    ``smooth``: (in,) smoothing factors ``s`` applied before the rotation (channel balancing as
    ViDiT-Q's): the input becomes ``(x / s) R``, the weight ``W diag(s) R`` and the Hessian
    ``Rᵀ diag(1/s) H diag(1/s) R``.
    """
    signs = layer_signs(method, name, linear.in_features)
    W = linear.weight.detach().double()
    if smooth is not None:
        W = smooth_weight(W, smooth).double()
        H = None if H is None else smooth_hessian(H.double(), smooth)
    W = rotate(W, signs).float()  # (W diag(s)) R
    lowrank = None
    if rank is not None:
        down, up, W = lowrank_split(W, rank)
        lowrank = (down, up)
    Hr = None if H is None or gptq is None else rotate_hessian(H.double(), signs).float()
    solved = solve_weights(W, Hr, method.recipe.weights, gptq)
    return QuantLinear.from_linear(linear, method.recipe.weights, method.activation(), tracker,
                                   weight=W, smooth=smooth, rotate_input=True,
                                   rotation_signs=signs, lowrank=lowrank, **solved)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry."""
    _METHODS[cls.name] = cls
    return cls


def registered() -> dict[str, type[Method]]:
    """Every registered method by name (import :mod:`adatsq.methods` to register them all)."""
    return dict(_METHODS)
