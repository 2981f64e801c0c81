"""The quantization flow shared by every method, and model loading by name.

``quantize_(pipeline, recipe)``: calibration capture (if the method needs it) -> method preparation
-> every quantizable layer replaced by its quantized version (a bar per layer) -> method
finalisation (e.g. AdaTSQ's search) -> a :class:`~adatsq.policy.Policy` describing the result.
"""

from __future__ import annotations

import json
import logging
import time
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import nn

from adatsq import distributed, io
from adatsq.calib.capture import CaptureConfig, capture, memory_estimate
from adatsq.checkpoint import Checkpoint, digest
from adatsq.config import Recipe
from adatsq.eval.fidelity import psnr_per_image
from adatsq.eval.tasks import task_for
from adatsq.io import round_to_storage_
from adatsq.methods import get_method
from adatsq.methods.base import Method
from adatsq.models.base import adapter_for
from adatsq.models.pipelines import load_diffusers_pipeline, wrap
from adatsq.models.sources import check_transformer
from adatsq.policy import LayerPolicy, Policy
from adatsq.quant.qlinear import (
    EXECUTIONS,
    ActivationQuant,
    QuantLinear,
    StepTracker,
    WeightOnlyLinear,
    cache_weights_,
    set_execution_,
    set_module,
)
from adatsq.zoo import registry
from adatsq.zoo.pipeline import DigitPipeline

log = logging.getLogger(__name__)


def load_pipeline(model: str, **settings):
    """A pipeline for ``model``: a zoo name, a local diffusers folder or a hub id.

    ``settings`` (diffusers pipelines only): see
    :func:`adatsq.models.pipelines.load_diffusers_pipeline`.
    """
    if registry.is_zoo_name(model):
        if settings:
            raise ValueError(f"{', '.join(sorted(settings))}: only for diffusers pipelines, "
                             f"not the embedded model {model}")
        return DigitPipeline.from_zoo(model, task_for(registry.get(model)))
    if Path(model).exists() or "/" in model:
        return load_diffusers_pipeline(model, **settings)
    raise ValueError(f"unknown model {model!r}: not a zoo model ({', '.join(registry.ENTRIES)}), "
                     "a local folder or a hub id; see 'adatsq zoo'")


def attach_tracker(model: nn.Module, adapter, schedule) -> StepTracker:
    """Shares one :class:`StepTracker` among the quantized layers of ``model`` (replacing any)."""
    old = getattr(model, "_adatsq_tracker_handle", None)
    if old is not None:
        old.remove()
    tracker = StepTracker(schedule)
    model._adatsq_tracker_handle = tracker.attach(model, adapter.timestep_of)
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.tracker = tracker
    return tracker


def quantize_(pipeline, recipe: Recipe, progress: bool = True, stats=None,
              metric=None, checkpoint: str | Path | None = None,
              execution: str = "integer") -> Policy:
    """Quantizes ``pipeline.transformer`` in place with ``recipe``; returns the policy.

    Args:
        pipeline: a zoo or diffusers pipeline (see :func:`load_pipeline`), or a diffusers
            ``FluxPipeline``, ``ZImagePipeline`` or ``WanPipeline`` object (sampled with its
            family's defaults; its transformer is quantized in place).
        recipe: what to do.
        stats: calibration statistics to reuse (captured if the method needs them and none given).
        metric: ``metric(images, prompts) -> float`` (higher is better) for methods that select
            end to end (AdaTSQ); default: the pipeline's task metric, else fidelity to FP.
        checkpoint: a folder to keep the run's progress in (:mod:`adatsq.checkpoint`); a run
            killed part way and started again with the same folder, model and recipe resumes
            from it and returns the same result.
        execution: how the quantized layers compute afterwards: ``"integer"`` (int8 matrix
            multiplies wherever the method maps onto them) or ``"simulated"`` (the float
            reference, for research; :func:`adatsq.quant.qlinear.set_execution_`). A search
            (AdaTSQ's) samples on the path its options name (``search_execution``).

    In a ``torchrun`` process group (:mod:`adatsq.distributed`) every rank calls this: the
    calibration prompts, the layers to solve and AdaTSQ's search are split over the ranks, and
    every rank ends with the same quantized model (rank 0 writes the checkpoint).

    Example:
        >>> pipe = load_pipeline("flux-digits")
        >>> policy = quantize_(pipe, Recipe(method="rtn"))
        >>> policy.average_activation_bits
        4.0
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; use one of {', '.join(EXECUTIONS)}")
    if isinstance(pipeline, diffusers.DiffusionPipeline):
        pipeline = wrap(pipeline)
    run = _start(pipeline, recipe, progress, metric, checkpoint)
    stats, groups = _calibrate(run, stats)
    tracker = StepTracker(pipeline.schedule(run.steps))
    _prepare(run, stats)
    quantized = _solve_layers(run, groups, stats, tracker)
    tracker = _install(run, quantized, tracker)
    policy = _search(run, stats, tracker, quantized, execution)
    return _finish(run, policy)


@dataclass
class _Run:
    """What the steps of :func:`quantize_` share."""

    pipeline: Any
    recipe: Recipe
    method: Method
    ranks: distributed.Ranks
    progress: bool
    steps: int
    layers: dict[str, nn.Linear | None]
    """The quantizable layers by name (``None`` once replaced in place)."""
    ckpt: Checkpoint | None
    restored: dict[str, QuantLinear]
    """Layers a checkpoint already holds."""
    prompts: list[str] | None
    started: float
    phases: dict[str, float] = field(default_factory=dict)

    def calibration_prompts(self) -> list[str]:
        if self.prompts is None:
            calib = self.recipe.calibration
            self.prompts = self.pipeline.calibration_prompts(calib.num_prompts, calib.seed)
        return self.prompts

    def timed(self, phase: str, since: float) -> None:
        self.phases[phase] = time.time() - since


def _start(pipeline, recipe: Recipe, progress: bool, metric, checkpoint) -> _Run:
    """The method, the layers to quantize (refusing a quantized or non-finite model) and the
    checkpoint to resume from."""
    t0 = time.time()
    ranks = distributed.current()
    progress = progress and ranks.main
    method = get_method(recipe.method)(recipe)
    method.fidelity = psnr_per_image
    if metric is not None:
        method.metric = metric
    model = pipeline.transformer
    layers = pipeline.adapter.quantizable_layers(model)
    if any(isinstance(m, QuantLinear) for m in layers.values()):
        raise ValueError("this transformer is already quantized; load a fresh one")
    for name, param in model.named_parameters():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise ValueError(f"non-finite values (NaN or Inf) in the weights {name}; check the "
                             "model checkpoint")
    run = _Run(pipeline, recipe, method, ranks, progress,
               recipe.calibration.steps or pipeline.default_steps, layers, ckpt=None,
               restored={}, prompts=None, started=t0)
    if checkpoint is not None:
        identity = {"model": pipeline.name, "recipe": recipe.to_dict(),
                    "sampling": pipeline.source().get("sampling"),
                    "calibration_prompts": digest(run.calibration_prompts())}
        run.ckpt = Checkpoint(checkpoint, identity, writer=ranks.main)
        ranks.barrier()  # run.json exists before any rank reads the folder
        run.restored = run.ckpt.layers()
    method.checkpoint, method.progress = run.ckpt, progress
    ranks.agree(sorted(run.restored), "solved layers in the checkpoint")
    return run


def _calibrate(run: _Run, stats):
    """The calibration statistics of the first group of layers (all layers unless their
    Hessians exceed the memory budget), and the groups."""
    groups = [list(run.layers)]
    calib, method = run.recipe.calibration, run.method
    if method.capture is not None and stats is None:
        groups = layer_groups(run.layers, run.steps, method.capture, calib.memory_gb)
        if len(groups) > 1 and not method.streams:
            need = memory_estimate(run.layers, run.steps, method.capture) / 2**30
            raise ValueError(f"{run.recipe.method} needs the Hessians of all layers at once "
                             f"({need:.1f} GB); raise the calibration memory budget "
                             f"(memory_gb, now {calib.memory_gb:g}) or use another method")
        stats = _group_stats(run, groups, 0)
    run.timed("capture", run.started)
    if stats is not None and stats.steps != run.steps:
        raise ValueError(f"calibration statistics cover {stats.steps} steps but the recipe "
                         f"samples {run.steps}; capture them with the same number of steps")
    return stats, groups


def _group_stats(run: _Run, groups: list[list[str]], i: int):
    """Group ``i``'s calibration statistics, from the checkpoint or captured."""
    saved = run.ckpt.stats(i) if run.ckpt is not None else None
    run.ranks.agree(saved is None, f"calibration statistics of group {i} in the checkpoint")
    if saved is not None:
        return saved
    group = groups[i]
    if len(groups) > 1:
        log.info("calibration group %d/%d: %d layers", i + 1, len(groups), len(group))
    calib = run.recipe.calibration
    captured = capture(run.pipeline, run.calibration_prompts(), seed=calib.seed, steps=run.steps,
                       config=CaptureConfig(hessian=run.method.capture), progress=run.progress,
                       only=group if len(groups) > 1 else None)
    if run.ckpt is not None:
        run.ckpt.save_stats(i, captured)
    return captured


def _prepare(run: _Run, stats) -> None:
    """The method's preparation (e.g. Fisher scores), resumed from the checkpoint's."""
    t1, ckpt = time.time(), run.ckpt
    if ckpt is not None and stats is not None:
        saved = ckpt.derived()
        run.ranks.agree(sorted(map(repr, saved)), "derived results in the checkpoint")
        stats.derived.update(saved)
        known = set(stats.derived)
    run.method.prepare(run.pipeline, stats)
    if ckpt is not None and stats is not None and set(stats.derived) != known:
        ckpt.save_derived(stats.derived)
    run.timed("prepare", t1)


def _solve_layers(run: _Run, groups: list[list[str]], stats,
                  tracker: StepTracker) -> dict[str, QuantLinear]:
    """Every layer quantized by the method, group by group (a bar per layer), split over the
    ranks; a single group is replaced in place at once (one copy of the weights at a time)."""
    t1 = time.time()
    model, ckpt, ranks, layers = run.pipeline.transformer, run.ckpt, run.ranks, run.layers
    quantized = {}
    device = next(model.parameters()).device
    for i, group in enumerate(groups):
        group_stats = stats
        todo = [name for name in group if name not in run.restored]
        if i > 0:  # stream: this group's statistics, then keep only their small part
            stats.drop_hessians()
            group_stats = _group_stats(run, groups, i)
            stats.absorb(group_stats)

        def install(name, q):
            quantized[name] = q
            if len(groups) == 1:
                set_module(model, name, q)
                layers[name] = None

        def solve(k):
            q = run.method.quantize_layer(todo[k], layers[todo[k]], group_stats, tracker)
            if ranks.world == 1:
                return q
            return q.layout(), q.activation.bits, {key: t.cpu()
                                                   for key, t in q.state_dict().items()}

        def place(k, result):
            if ranks.world > 1:  # a layer another rank solved (this rank's own too: one path)
                layout, bits, state = result
                result = QuantLinear.from_state(layout, state, bits, dtype=None).to(device)
                result.tracker = tracker
            if ckpt is not None:
                ckpt.save_layer(todo[k], result)
            install(todo[k], result)

        for name in group:
            if name in run.restored:
                run.restored[name].tracker = tracker
                install(name, run.restored[name].to(device))
        distributed.map_items(len(todo), solve, on_result=place,
                              desc=f"{run.recipe.method} {run.recipe.label}",
                              progress=run.progress)
        if ckpt is not None and len(groups) > 1:  # solved: the Hessians are no longer needed
            ckpt.save_stats(i, group_stats, hessians=False)
    run.timed("layers", t1)
    return {name: quantized[name] for name in layers}  # the model's order


def _install(run: _Run, quantized: dict[str, QuantLinear], tracker: StepTracker) -> StepTracker:
    """The quantized layers in the model (later groups were captured on the 16-bit model), the
    modulation weights packed if asked, the step tracker attached, tensors rounded to storage."""
    t1 = time.time()
    model, adapter = run.pipeline.transformer, run.pipeline.adapter
    for name, q in quantized.items():
        set_module(model, name, q)
    if run.recipe.weights.modulation:
        for name, linear in adapter.modulation_layers(model).items():
            set_module(model, name, WeightOnlyLinear.from_linear(linear, run.recipe.weights,
                                                                 ActivationQuant(), None))
    tracker = attach_tracker(model, adapter, tracker.schedule)
    round_to_storage_(model)
    run.phases["layers"] += time.time() - t1
    return tracker


def _search(run: _Run, stats, tracker: StepTracker, quantized: dict[str, QuantLinear],
            execution: str) -> Policy:
    """The method's finalisation (AdaTSQ's search decides the bits per step) on the path the
    method names, then the model left on ``execution``."""
    t1 = time.time()
    model, recipe = run.pipeline.transformer, run.recipe
    # the layers as the method built them; a search (finalize) returns the bits it decided
    T = len(tracker.schedule)
    nominal = Policy(model=run.pipeline.name, method=recipe.method,
                     schedule=tuple(float(t) for t in tracker.schedule),
                     layers={n: LayerPolicy(q.weight_bits, q.activation.per_step(T))
                             for n, q in quantized.items()},
                     recipe=recipe.to_dict())
    set_execution_(model, run.method.search_execution)
    cache_weights_(model)  # a search samples many times with the same weights
    try:
        policy = run.method.finalize(run.pipeline, stats, tracker, quantized, nominal)
    finally:
        cache_weights_(model, on=False)
        set_execution_(model, execution)
    run.timed("finalize", t1)
    return policy


def _finish(run: _Run, policy: Policy) -> Policy:
    """The policy with the run's settings and times, applied to the model, which is marked as
    quantized (:func:`_mark_quantized`)."""
    method, model = run.method, run.pipeline.transformer
    run.phases.update(getattr(method, "phases", {}))
    seconds = time.time() - run.started
    policy = replace(policy, settings={"granularity": method.granularity(),
                                       "source": method.source, **policy.settings,
                                       "seconds": seconds, "phases": run.phases})
    policy.apply_(model)
    _mark_quantized(model, policy, run.pipeline.source())
    log.info("%s %s done in %.1fs", run.recipe.method, run.recipe.label, seconds)
    return policy


def _mark_quantized(transformer: nn.Module, policy: Policy, source: dict) -> None:
    """Gives a quantized transformer its policy and a ``save_pretrained`` that writes an
    artifact: diffusers' own would write packed tensors that no diffusers loader reads (a
    pipeline's ``save_pretrained`` calls it for its transformer too)."""
    transformer.adatsq_policy = policy
    transformer.adatsq_source = source
    # bound to the model: a deep copy of the model saves itself
    transformer.save_pretrained = types.MethodType(_save_pretrained, transformer)


def _save_pretrained(transformer: nn.Module, save_directory: str | Path,
                     push_to_hub: bool = False, **ignored) -> Path:
    if push_to_hub:
        raise ValueError("diffusers does not push an adatsq transformer; save it, then upload "
                         "the folder ('hf upload')")
    return io.save(transformer, transformer.adatsq_policy, save_directory,
                   transformer.adatsq_source)


def layer_groups(layers: dict[str, nn.Linear], steps: int, mode: str,
                 memory_gb: float) -> list[list[str]]:
    """Consecutive groups of layers whose calibration Hessians fit in ``memory_gb`` each
    (one group when all fit; a layer larger than the budget gets a group of its own)."""
    budget = memory_gb * 2**30
    groups, current, used = [], [], 0
    for name, layer in layers.items():
        need = memory_estimate({name: layer}, steps, mode)
        if current and used + need > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += need
    return groups + [current] if current else groups


def save(pipeline, policy: Policy, path: str | Path, command: str | None = None) -> Path:
    """Writes the quantized transformer of ``pipeline`` and its ``policy`` as an artifact
    (:mod:`adatsq.io`; ``command``, the one that made it, goes in its model card);
    :func:`load` reads it back, :func:`load_transformer` its transformer alone.

    Example:
        >>> import tempfile
        >>> pipe = load_pipeline("flux-digits")
        >>> policy = quantize_(pipe, Recipe(method="rtn"), progress=False)
        >>> path = save(pipe, policy, Path(tempfile.mkdtemp()) / "flux-w4a4")
        >>> again, same = load(path)
        >>> same == policy
        True
    """
    return io.save(pipeline.transformer, policy, path, pipeline.source(), command)


def load_transformer(path: str | Path, dtype: torch.dtype | None = None,
                     device: str | torch.device | None = None) -> nn.Module:
    """The quantized transformer of the artifact at ``path``, from the artifact alone: a
    diffusers model (``FluxTransformer2DModel``, ...) that the base model's diffusers pipeline
    takes as ``transformer=``; its policy is ``transformer.adatsq_policy``, and its
    ``save_pretrained`` writes the artifact again.

    Args:
        dtype: of its 16-bit rest (default: bfloat16 on CUDA, float32 on the CPU).
        device: default: CUDA when available, else the CPU.

    Example:
        >>> transformer = load_transformer("flux-w4a4")  # doctest: +SKIP
        >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev",
        ...                                     transformer=transformer)  # doctest: +SKIP
    """
    manifest = io.read_manifest(path)
    cls = _transformer_class(path, manifest)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    transformer, policy = io.load_quantized(_builder(path, cls, manifest), path, dtype, device)
    attach_tracker(transformer, adapter_for(transformer), policy.schedule)
    _mark_quantized(transformer, policy, {k: manifest[k] for k in ("model", "model_class",
                                                                    "config", "sampling")
                                          if k in manifest})
    return transformer


def _transformer_class(path, manifest: dict) -> type[nn.Module]:
    cls = getattr(diffusers, manifest["model_class"], None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise io.ArtifactError(f"{path}: {manifest['model_class']!r} is not a diffusers model "
                               "class; the manifest is corrupt, re-create the artifact")
    return cls


def _builder(path, cls: type[nn.Module], manifest: dict):
    def build() -> nn.Module:
        try:
            return cls(**manifest["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise io.ArtifactError(f"{path}: cannot rebuild the transformer ({exc})") from None
    return build


def _recorded_base(path: str | Path, recorded: str) -> str:
    """The base an artifact records, found as given (a zoo name, hub id or folder from the
    working directory) or, for a folder name, beside the artifact."""
    sibling = Path(path).parent / recorded
    if not Path(recorded).exists() and (sibling / "model_index.json").is_file():
        return str(sibling)
    return recorded


def load(path: str | Path, base: str | None = None, **settings):
    """``(pipeline, policy)`` of the artifact at ``path``: a pipeline whose transformer is the
    quantized model, as :func:`save` wrote it.

    Args:
        base: the pipeline the rest (text encoders, VAE, scheduler) comes from: a hub id or a
            folder; default: the one the artifact records (a hub id or zoo name as given; an
            artifact made from a local folder records only the folder's name, found in the
            working directory or beside the artifact; pass ``base`` where it is elsewhere).
        settings: sampling settings of a diffusers pipeline, which otherwise samples as it did
            when quantized (see :func:`adatsq.models.pipelines.load_diffusers_pipeline`;
            ``dtype`` also sets the dtype of the transformer's 16-bit rest).

    The full-precision transformer is never built: memory stays near the artifact's size
    (:func:`adatsq.io.load_quantized`).
    """
    manifest = io.read_manifest(path)
    recorded = manifest["model"]
    if base is not None and registry.is_zoo_name(recorded) and base != recorded:
        raise ValueError(f"{path} was made from the embedded model {recorded}; it has no other "
                         "base")
    base = base or _recorded_base(path, recorded)
    entry = registry.get(base) if registry.is_zoo_name(base) else None
    if entry is not None:  # checked before any weight is read
        if settings:
            raise ValueError(f"{', '.join(sorted(settings))}: only for diffusers pipelines")
        if [manifest["model_class"], manifest["config"]] != json.loads(json.dumps(
                [entry.model_class, dict(entry.transformer_config)])):  # as JSON stores it
            raise io.ArtifactError(f"{path}: its manifest names {manifest['model']}, but its "
                                   "transformer class or config is not that model's; "
                                   "re-create it")
    else:
        try:
            check_transformer(base, manifest["model_class"], manifest["config"])
        except ValueError as exc:
            hint = (f"; pass base= (--base) naming the pipeline folder {recorded!r} it was "
                    "made from" if base == recorded and not Path(base).exists()
                    and "/" not in base else "; wrong model for this artifact?")
            raise io.ArtifactError(f"{path}: {exc}{hint}") from None
    cuda = entry is None and torch.cuda.is_available()
    transformer = load_transformer(path, settings.get("dtype"), "cuda" if cuda else "cpu")
    policy = transformer.adatsq_policy
    if entry is not None:
        pipe = DigitPipeline(entry, transformer, task_for(entry))
    else:
        settings = {**manifest.get("sampling", {}), **settings}
        pipe = load_diffusers_pipeline(base, transformer=transformer, **settings)
    return pipe, policy
