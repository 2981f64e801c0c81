"""The two contracts of the core: the :class:`Adapter` of a transformer class and the
:class:`Pipeline` around it.

Algorithms never look at a model's class. They ask its adapter which ``nn.Linear`` layers are
quantizable (and their names), how to call the transformer once (conditioning, latents, timestep)
and where the timestep is among the arguments of a call (so hooks can tell the sampling step).
Families with adaLN modulation may also describe where it feeds which linears
(:meth:`Adapter.modulation_sites`), which :mod:`adatsq.models.massive` needs.

Everything else (prompts, pixels, sampling, seeds) comes from the pipeline: the embedded models'
:class:`~adatsq.zoo.pipeline.DigitPipeline` and :class:`~adatsq.models.pipelines.DiffusersPipeline`
both implement :class:`Pipeline`, on the shared :class:`~adatsq.models.sampling.SamplingPipeline`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

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
    #: layer-name suffixes of the timestep modulation (one row per sample, cheap to run): no
    #: activation quantization; their weights only with ``WeightSpec.modulation``.
    skip_suffixes: ClassVar[tuple[str, ...]] = ()
    #: module lists whose linears are quantized (the transformer blocks).
    block_lists: ClassVar[tuple[str, ...]] = ()

    def _block_linears(self, model: nn.Module, modulation: bool) -> dict[str, nn.Linear]:
        layers = {}
        for block_list in self.block_lists:
            blocks = getattr(model, block_list, None)
            if blocks is None:
                continue
            for name, module in blocks.named_modules():
                full = f"{block_list}.{name}"
                if isinstance(module, nn.Linear) and full.endswith(self.skip_suffixes) == \
                        modulation:
                    layers[full] = module
        return layers

    def quantizable_layers(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Name -> linear layer for every quantizable layer, in execution order."""
        return self._block_linears(model, modulation=False)

    def modulation_layers(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Name -> linear layer of the timestep modulation (:attr:`skip_suffixes`)."""
        return self._block_linears(model, modulation=True)

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

    def modulation_sites(self, model: nn.Module) -> list[ModulationSite]:
        """Every adaLN modulation of ``model`` and the linears it feeds (optional: families
        without such sites raise ``ValueError``)."""
        raise no_modulation_sites(type(model).__name__)


@runtime_checkable
class Pipeline(Protocol):
    """What the quantization flow needs of a pipeline (a text-to-image or -video sampler).

    Attributes:
        name: the zoo name, hub id or folder (recorded in policies and artifacts).
        transformer: the DiT being quantized.
        adapter: its :class:`Adapter`.
        default_steps: sampling steps when none are given.
        cfg_scale: the classifier-free guidance scale of the sampler (1: unguided).
    """

    name: str
    transformer: nn.Module
    adapter: Adapter
    default_steps: int
    cfg_scale: float

    def encode(self, prompts: list[str]) -> Conditioning:
        """The conditioning of ``prompts`` (the keys the adapter's ``denoise`` reads)."""

    def null_conditioning(self) -> Conditioning:
        """The conditioning of the empty prompt (the unconditional half of guidance)."""

    def schedule(self, steps: int | None = None) -> torch.Tensor:
        """Timestep values (T,) the transformer receives at each sampling step."""

    def generate(self, prompts: list[str], seed: int = 0, steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int | None = None,
                 callback=None, progress: bool | str = False, first: int = 0) -> torch.Tensor:
        """Samples in [-1, 1] (float32, CPU) for ``prompts``, deterministic given ``seed``;
        ``first``: index of ``prompts[0]`` in the prompt list this is a share of (its noise)."""

    def to_latents(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples (pixels) to the transformer's latents (Fisher re-noises generations)."""

    def calibration_prompts(self, n: int, seed: int = 1) -> list[str]:
        """``n`` calibration prompts, disjoint from any evaluation prompts."""

    def selection_set(self, n: int, seed: int = 2) -> tuple[list[str], Any]:
        """Prompts for end-to-end selection and their task metric ``metric(samples) -> scores``
        (higher is better), or None where the pipeline has no task (fidelity decides)."""

    def source(self) -> dict[str, Any]:
        """How to rebuild the transformer (stored in artifact manifests)."""


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
