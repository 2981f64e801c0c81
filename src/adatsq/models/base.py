"""The adapter protocol: everything the algorithms need to know about a model family.

Algorithms never look at a model's class. They ask its adapter which ``nn.Linear`` layers are
quantizable (and their names), how to call the transformer once (conditioning, latents, timestep)
and where the timestep is among the arguments of a call (so hooks can tell the sampling step).
Families with adaLN modulation may also describe where it feeds which linears
(:meth:`Adapter.modulation_sites`), which :mod:`adatsq.models.massive` needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

Conditioning = dict[str, torch.Tensor]
"""Batch-first text conditioning tensors, keyed by the transformer argument they feed."""

_ADAPTERS: dict[str, type[Adapter]] = {}


@dataclass(frozen=True)
class ModulationSite:
    """One adaLN modulation and the linears that read the input it modulates.

    The modulated input is ``norm(x) * (1 + scale) + shift`` (``shift`` absent in some families),
    where ``scale`` and ``shift`` are chunks of the output of the linear ``modulation``, split
    into ``chunks`` equal parts along the features, one value per hidden channel.

    Attributes:
        modulation: name of the modulation linear (one row per output channel of every chunk).
        chunks: equal chunks its output splits into (6 for Flux's ``AdaLayerNormZero``).
        scale: index of the ``scale`` chunk.
        shift: index of the ``shift`` chunk, or None where the family has none.
        consumers: names of the linears whose input is the modulated tensor.
    """

    modulation: str
    chunks: int
    scale: int
    shift: int | None
    consumers: tuple[str, ...]


class Adapter(ABC):
    """One model family (a diffusers transformer class and its conventions)."""

    name: ClassVar[str]
    model_classes: ClassVar[tuple[str, ...]]
    #: layer-name suffixes kept in full precision (timestep modulation: one row per sample, cheap).
    skip_suffixes: ClassVar[tuple[str, ...]] = ()
    #: module lists whose linears are quantized (the transformer blocks).
    block_lists: ClassVar[tuple[str, ...]] = ()

    def quantizable_layers(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Name -> linear layer for every quantizable layer, in execution order."""
        layers = {}
        for block_list in self.block_lists:
            blocks = getattr(model, block_list, None)
            if blocks is None:
                continue
            for name, module in blocks.named_modules():
                full = f"{block_list}.{name}"
                if isinstance(module, nn.Linear) and not full.endswith(self.skip_suffixes):
                    layers[full] = module
        return layers

    @abstractmethod
    def timestep_of(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        """The timestep tensor among the arguments of a transformer call."""

    @abstractmethod
    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep value the transformer receives at noise level ``sigma`` (B,)."""

    @abstractmethod
    def denoise(self, model: nn.Module, latents: torch.Tensor, cond: Conditioning,
                sigma: torch.Tensor) -> torch.Tensor:
        """One transformer call; returns the flow-matching velocity (noise - x0) for ``latents``."""

    @abstractmethod
    def text_conditioning(self, states: torch.Tensor, pooled: torch.Tensor) -> Conditioning:
        """The conditioning of an embedded model from its text encoder's token states (B, L, D)
        (padding positions zeroed) and pooled vectors (B, D)."""

    @abstractmethod
    def example(self, seed: int = 0) -> tuple[nn.Module, torch.Tensor, Conditioning]:
        """A tiny random model of this family with latents and conditioning (contract tests)."""

    @abstractmethod
    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels of an embedded model (images (B, C, H, W) or, for video models, clips
        (B, C, F, H, W)) to the latents the transformer works on."""

    @abstractmethod
    def from_latents(self, latents: torch.Tensor, sample_shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`to_latents`."""

    def modulation_sites(self, model: nn.Module) -> list[ModulationSite]:
        """Every adaLN modulation of ``model`` and the linears it feeds (optional: families
        without such sites raise ``ValueError``)."""
        raise no_modulation_sites(type(model).__name__)


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry."""
    _ADAPTERS[cls.name] = cls
    return cls


def registered() -> dict[str, type[Adapter]]:
    """All registered adapters by name."""
    return dict(_ADAPTERS)


def modulated_classes() -> tuple[str, ...]:
    """The transformer classes whose adapter describes their modulation sites."""
    return tuple(c for a in _ADAPTERS.values() if a.modulation_sites is not Adapter.modulation_sites
                 for c in a.model_classes)


def no_modulation_sites(model_class: str) -> ValueError:
    """The error for a transformer class without modulation sites."""
    return ValueError(f"massive-activation variants are defined for "
                      f"{', '.join(modulated_classes())}; {model_class} has none")


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model`` (matched by class name along its MRO)."""
    names = {c.__name__ for c in type(model).__mro__}
    for cls in _ADAPTERS.values():
        if names & set(cls.model_classes):
            return cls()
    known = ", ".join(c for a in _ADAPTERS.values() for c in a.model_classes)
    raise TypeError(f"no adapter for {type(model).__name__}; supported transformers: {known}")
