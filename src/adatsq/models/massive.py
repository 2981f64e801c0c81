"""Function-preserving "massive activation" variants of a DiT.

Real DiTs (SD3, Flux) carry *massive activations*: a few hidden channels far larger than the rest
on every token (like those Sun et al. found in LLMs, "Massive Activations in Large Language
Models", 2024), their size set by the timestep through adaLN modulation. The small embedded models
lack them, so they do not exercise what quantization methods do against them (rotation,
smoothing, low-rank branches).

:func:`massive_activations_` gives a model such channels without changing what it computes. At
every modulation site (:meth:`~adatsq.models.base.Adapter.modulation_sites`) the modulated input
``n = norm(x) * (1 + scale) + shift`` becomes ``k n`` in channels ``C`` (the same in every block)
and the linears reading ``n`` divide their input columns ``C`` by ``k``:

* shift rows of the modulation linear: ``W -> k W``, ``b -> k b``;
* scale rows: ``W -> k W``, ``b -> k b + (k - 1)``, so that ``1 + scale -> k (1 + scale)``;
* consumer linears: ``W[:, C] -> W[:, C] / k``.

The arithmetic is done in float64 and cast back, so outputs change only by float rounding.

Which channels: those that are already large at every site, so that ``k`` times them is about
``k`` times the median channel of every consumer's input, the outlier ratio of
:func:`adatsq.bench.activation_outliers` (channel absmax / median channel absmax). A
channel's *size* at a site is measured while ``probe(model)`` runs the model on representative
inputs (e.g. a few sampling runs): per call, its input absmax over the median channel's, then the
largest over calls. Without a probe it is estimated from the weights alone: ``|1 + b_c|`` over
its median, ``b`` the bias of the scale chunk (the gain at zero modulation input, blind to the
tokens). Channels are then picked greedily, the same in every block: each next one maximises
the smallest over sites of the largest size among the chosen (ties: the lower index), since one
large chosen channel per site is enough for its ratio to reach ``k``. On flux-digits and
zimage-digits (4 calibration prompts, 4 steps) the smallest ratio of an affected layer is 1.4
and 1.8 ``k`` with the zoo's probe (:meth:`adatsq.zoo.registry.ZooEntry.probe`), 1.1 ``k``
without.

That variant is *absorbable*: the consumers' input columns carry exactly ``1 / k``, so channel
balancing (SmoothQuant's ``s_c = max|X_c|^a / max|W_c|^(1 - a)``) scales channel ``c`` by ``k``
and recovers the original model's smoothed inputs and weights. Real massive activations come with
no such weights. ``variant="bias"`` gives instead a *bias-compensated* offset: the modulated input
becomes ``n + o`` with a constant ``o_c = k m`` in the chosen channels (``m``: the median channel
absmax of the site's input, measured by the probe, else estimated as the median ``|1 + b|`` of
the scale chunk), the same on every token and at every timestep, added through the shift chunk's
bias; the consumers keep their weights and absorb it in their bias, ``b -> b - W[:, C] o_C``.
The chosen channels' absmax becomes about ``k`` times the median's, and no per-channel rescaling
of the input can remove a constant (it needs families whose modulation has a shift: Flux).

A rotation by an orthogonal Hadamard matrix spreads one such channel over all ``d``: its ratio
after rotation is about ``k / sqrt(d)`` (:func:`rotated_ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from adatsq.models.base import ModulationSite, adapter_for


def relative_size(absmax: torch.Tensor) -> torch.Tensor:
    """``a / median(a)`` (..., d) of per-channel sizes ``a`` (..., d)."""
    a = absmax.double()
    return a / a.median(-1, keepdim=True).values.clamp_min(1e-12)


def choose_channels(sizes: torch.Tensor, channels: int) -> list[int]:
    """Greedy cover of the sites by ``channels`` large channels (see the module docstring).

    Args:
        sizes: (S, d) relative size of every channel at every site.
    """
    covered = torch.zeros(sizes.shape[0], dtype=sizes.dtype)  # (S,) best chosen size per site
    chosen: list[int] = []
    for _ in range(channels):
        cover = torch.maximum(covered[:, None], sizes).amin(0)  # (d,)
        cover[chosen] = -math.inf
        c = int(cover.argmax())  # the first maximum: the lower index on ties
        chosen.append(c)
        covered = torch.maximum(covered, sizes[:, c])
    return sorted(chosen)


VARIANTS = ("absorbable", "bias")
"""The kinds of massive activation :func:`massive_activations_` gives (module docstring)."""


def rotated_ratio(strength: float, width: int) -> float:
    """The outlier ratio of one massive channel after a Hadamard rotation of ``width`` channels,
    ``strength / sqrt(width)``: 10x at width 128 is 0.9x, 110x is 9.7x; Flux-Dev's 3072 channels
    dilute 10x to 0.18x.

    Example:
        >>> round(rotated_ratio(110.0, 128), 2)
        9.72
    """
    return float(strength) / math.sqrt(width)


def measured_absmax(model: nn.Module, inputs: list[nn.Linear],
                    probe: Callable[[nn.Module], object]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per site (one consumer in ``inputs`` each), over the calls made by ``probe(model)``: the
    largest relative input absmax (S, d) and the largest absolute one (S, d)."""
    calls: list[list[torch.Tensor]] = [[] for _ in inputs]

    def record(i):
        return lambda module, args, out: calls[i].append(
            args[0].detach().abs().flatten(0, -2).amax(0).cpu())  # (d,)

    hooks = [layer.register_forward_hook(record(i)) for i, layer in enumerate(inputs)]
    try:
        probe(model)
    finally:
        for hook in hooks:
            hook.remove()
    if any(not c for c in calls):
        raise ValueError("the probe did not run every modulated layer of the model")
    return (torch.stack([relative_size(torch.stack(c)).amax(0) for c in calls]),
            torch.stack([torch.stack(c).amax(0).double() for c in calls]))


def amplify_modulation(W: torch.Tensor, b: torch.Tensor, site: ModulationSite,
                       idx: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Modulation weight (chunks*d, E) and bias (chunks*d,) whose modulated input is ``k`` times
    larger in channels ``idx``."""
    W, b = W.double().clone(), b.double().clone()
    d = W.shape[0] // site.chunks
    rows = site.scale * d + idx
    W[rows] *= k
    b[rows] = k * b[rows] + (k - 1)  # 1 + scale -> k (1 + scale)
    if site.shift is not None:
        rows = site.shift * d + idx
        W[rows] *= k
        b[rows] *= k
    return W, b


def offset_modulation(b: torch.Tensor, site: ModulationSite, idx: torch.Tensor,
                      offset: torch.Tensor) -> torch.Tensor:
    """Modulation bias (chunks*d,) whose modulated input is ``offset`` (|idx|,) larger in
    channels ``idx``, on every token (through the shift chunk)."""
    b = b.double().clone()
    d = b.shape[0] // site.chunks
    b[site.shift * d + idx] += offset
    return b


def _linear(modules: dict[str, nn.Module], name: str) -> nn.Linear:
    module = modules.get(name)
    if not isinstance(module, nn.Linear):
        found = "missing" if module is None else type(module).__name__
        raise ValueError(f"massive_activations_ needs a full-precision nn.Linear at {name}, "
                         f"found {found}")
    return module


@torch.no_grad()
def massive_activations_(model: nn.Module, strength: float, channels: int = 2,
                         probe: Callable[[nn.Module], object] | None = None,
                         variant: str = "absorbable") -> dict:
    """Gives ``model`` massive activations of ``strength`` in ``channels`` hidden channels, in
    place, without changing its function (up to float rounding); see the module docstring.

    Args:
        model: a full-precision transformer whose adapter has modulation sites (Flux, Z-Image).
        strength: ``k > 1``, the factor on the chosen channels of every modulated input.
        channels: how many hidden channels (fewer than half of them).
        probe: runs ``model`` on representative inputs, to measure which channels are large
            (without one, they are estimated from the modulation biases).
        variant: ``"absorbable"`` (channels scaled by ``k``, consumer columns by ``1 / k``) or
            ``"bias"`` (constant offsets compensated through the consumers' biases).

    Returns:
        ``{"strength", "variant", "channels" (indices), "modulations" (linear names), "layers"
        (consumer linear names), "offsets" (per modulation, the offset added; bias variant)}``.

    Example:
        >>> from diffusers import FluxTransformer2DModel
        >>> _ = torch.manual_seed(0)
        >>> model = FluxTransformer2DModel(patch_size=1, in_channels=48, num_layers=1,
        ...     num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        ...     joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
        >>> massive_activations_(model, 30.0)["channels"]
        [8, 18]
    """
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 1):
        raise ValueError(f"massive-activation strength must be a finite number > 1, "
                         f"got {strength!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown massive-activation variant {variant!r}; "
                         f"known: {', '.join(VARIANTS)}")
    sites = adapter_for(model).modulation_sites(model)
    if variant == "bias" and any(s.shift is None for s in sites):
        raise ValueError(f"the bias-compensated variant needs modulations with a shift; "
                         f"{type(model).__name__} has none (use variant='absorbable')")
    modules = dict(model.named_modules())
    consumers = [name for s in sites for name in s.consumers]
    if len(set(consumers)) != len(consumers):
        raise ValueError("a linear reads more than one modulation site")
    # every layer checked before any is changed: an error leaves the model as it was
    linears = {name: _linear(modules, name)
               for name in [s.modulation for s in sites] + consumers}
    width = {linears[s.modulation].out_features // s.chunks for s in sites}
    if len(width) != 1:
        raise ValueError(f"modulation sites of different widths {sorted(width)}")
    (d,) = width
    if not (isinstance(channels, int) and 1 <= channels < d / 2):
        raise ValueError(f"channels must be an integer in [1, {math.ceil(d / 2) - 1}], "
                         f"got {channels!r}")
    if any(linears[s.modulation].bias is None for s in sites):
        raise ValueError("massive_activations_ needs modulation linears with a bias")
    if probe is None:
        absmax = torch.stack([
            (1 + linears[s.modulation].bias.detach().view(s.chunks, d)[s.scale].double()).abs()
            for s in sites])  # (S, d)
        sizes = relative_size(absmax)
    else:
        sizes, absmax = measured_absmax(model, [linears[s.consumers[0]] for s in sites], probe)
    chosen = choose_channels(sizes, channels)
    offsets = {}
    for site, typical in zip(sites, absmax.median(-1).values.tolist()):
        mod = linears[site.modulation]
        idx = torch.tensor(chosen, device=mod.weight.device)
        if variant == "bias":
            offset = torch.full((len(chosen),), strength * typical, dtype=torch.float64,
                                device=mod.weight.device)
            mod.bias.copy_(offset_modulation(mod.bias, site, idx, offset))
            offsets[site.modulation] = float(offset[0])
        else:
            W, b = amplify_modulation(mod.weight, mod.bias, site, idx, strength)
            mod.weight.copy_(W)
            mod.bias.copy_(b)
        for name in site.consumers:
            consumer = linears[name]
            if variant == "bias":
                if consumer.bias is None:
                    consumer.bias = nn.Parameter(consumer.weight.new_zeros(consumer.out_features),
                                                 requires_grad=False)
                shift = consumer.weight.double()[:, idx] @ offset  # (out,)
                consumer.bias.copy_(consumer.bias.double() - shift)
            else:
                W = consumer.weight.double()  # (out, d)
                W[:, idx] /= strength
                consumer.weight.copy_(W)
    info = {"strength": float(strength), "variant": variant, "channels": chosen,
            "modulations": sorted({s.modulation for s in sites}), "layers": consumers}
    return {**info, "offsets": offsets} if variant == "bias" else info
