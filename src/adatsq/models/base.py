"""The adapter protocol: everything the algorithms need to know about a model family.

Algorithms never look at a model's class. They ask its adapter which ``nn.Linear`` layers are
quantizable (and their names), how to call the transformer once (conditioning, latents, timestep)
and where the timestep is among the arguments of a call (so hooks can tell the sampling step).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

Conditioning = dict[str, torch.Tensor]
"""Batch-first text conditioning tensors, keyed by the transformer argument they feed."""

_ADAPTERS: dict[str, type[Adapter]] = {}


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


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry."""
    _ADAPTERS[cls.name] = cls
    return cls


def registered() -> dict[str, type[Adapter]]:
    """All registered adapters by name."""
    return dict(_ADAPTERS)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model`` (matched by class name along its MRO)."""
    names = {c.__name__ for c in type(model).__mro__}
    for cls in _ADAPTERS.values():
        if names & set(cls.model_classes):
            return cls()
    known = ", ".join(c for a in _ADAPTERS.values() for c in a.model_classes)
    raise TypeError(f"no adapter for {type(model).__name__}; supported transformers: {known}")
