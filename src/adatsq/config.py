"""Recipes: frozen, validated, versioned descriptions of a quantization run, and the typed
options of every method.

A recipe round-trips through ``to_dict``/``from_dict`` (JSON and YAML); ``from_dict`` rejects
unknown keys instead of ignoring them. A method's options are one frozen dataclass registered
under the method's name (:data:`METHOD_OPTIONS`); a recipe holds an instance, validated when the
recipe is made, and serializes every field of it, defaults included, so a recipe (and the
``policy.json`` that records it) reruns the same even after a default changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adatsq.quant.primitives import ACTIVATION_GRANULARITIES, FULL_PRECISION, check_bits
from adatsq.quant.qlinear import EXECUTIONS
from adatsq.quant.smoothing import check_alpha
from adatsq.search.candidates import CandidateConfig
from adatsq.strict import check_keys

RECIPE_VERSION = 2
"""Version written; 2 serializes every option (defaults included). Versions in
:data:`READABLE_RECIPE_VERSIONS` load (a version-1 recipe's missing options take today's
defaults)."""
READABLE_RECIPE_VERSIONS = (1, 2)


def _from_dict(cls, data: dict[str, Any], where: str):
    return cls(**check_keys(data, (f.name for f in fields(cls)), where))


@dataclass(frozen=True)
class WeightSpec:
    """Weight quantization: bit width (16 = off), symmetry and group size (None = per channel).

    ``modulation``: also quantize the weights of the timestep-modulation layers (the adaLN
    linears the adapters otherwise keep in 16 bits; 27% of Flux-Dev's weights), weight-only by
    round-to-nearest, their activations in 16 bits.
    """

    bits: int = 4
    symmetric: bool = True
    group_size: int | None = None
    modulation: bool = False

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
class MethodOptions:
    """Base of the methods' frozen option dataclasses; ``from_dict`` rejects unknown keys."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        return _from_dict(cls, data or {}, f"{cls.__name__} (method options)")

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults."""
        default = type(self)()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


METHOD_OPTIONS: dict[str, type[MethodOptions]] = {}
"""The options class of every method, by method name."""


def options_for(*methods: str):
    """Class decorator registering an options class for ``methods``."""
    def register(cls):
        for m in methods:
            METHOD_OPTIONS[m] = cls
        return cls
    return register


def options_class(method: str) -> type[MethodOptions]:
    """The options class of ``method`` (a one-line ValueError for an unknown method)."""
    if method not in METHOD_OPTIONS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(sorted(METHOD_OPTIONS))}")
    return METHOD_OPTIONS[method]


@options_for("rtn")
@dataclass(frozen=True)
class RTNOptions(MethodOptions):
    """Round to nearest (MinMax) has no options."""


@options_for("gptq")
@dataclass(frozen=True)
class GPTQOptions(MethodOptions):
    """GPTQ settings shared by the methods that solve weights with it (IST-DASLab defaults)."""

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False

    def __post_init__(self):
        if self.block_size <= 0 or not self.damp > 0:
            raise ValueError("GPTQ block_size and damp must be positive")


@options_for("quarot")
@dataclass(frozen=True)
class QuaRotOptions(MethodOptions):
    """Options of QuaRot.

    Attributes:
        round_to_nearest: round the rotated weights to nearest instead of solving them by GPTQ.
        random_signs: randomized Hadamard rotation (False: the plain Hadamard matrix).
        block_size, damp, act_order: GPTQ settings.
    """

    round_to_nearest: bool = False
    random_signs: bool = True
    search_execution: str = "simulated"
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False

    @property
    def gptq(self) -> GPTQOptions | None:
        """The GPTQ settings, None when the weights are rounded to nearest."""
        return None if self.round_to_nearest else GPTQOptions(self.block_size, self.damp,
                                                              self.act_order)


@options_for("smoothquant")
@dataclass(frozen=True)
class SmoothQuantOptions(MethodOptions):
    """``alpha``: the migration strength of the smoothing."""

    alpha: float = 0.5

    def __post_init__(self):
        check_alpha(self.alpha)


@options_for("vidit_q")
@dataclass(frozen=True)
class ViDiTQOptions(MethodOptions):
    """Smoothing strength ``alpha``, and the rotation after it (``rotate``, ``random_signs``)."""

    alpha: float = 0.5
    rotate: bool = True
    random_signs: bool = True

    def __post_init__(self):
        check_alpha(self.alpha)


@options_for("svdquant")
@dataclass(frozen=True)
class SVDQuantOptions(MethodOptions):
    """Options of SVDQuant.

    Attributes:
        rank: rank of the 16-bit branch; None = the paper's proportion of each layer's smaller
            side (:func:`adatsq.quant.lowrank.proportional_rank`).
        alpha: smoothing migration strength.
    """

    rank: int | None = None
    alpha: float = 0.5

    def __post_init__(self):
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank <= 0):
            raise ValueError(f"SVDQuant rank must be a positive integer or null, got {self.rank!r}")
        check_alpha(self.alpha)


@options_for("q_dit")
@dataclass(frozen=True)
class QDiTOptions(MethodOptions):
    """Weight group sizes to choose from, and the group size whose scale count is the budget."""

    group_sizes: tuple[int, ...] = (128, 64, 32)
    budget_group_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "group_sizes", tuple(sorted(set(self.group_sizes), reverse=True)))
        if not self.group_sizes or min(self.group_sizes) <= 0 or self.budget_group_size <= 0:
            raise ValueError("Q-DiT group sizes and budget_group_size must be positive")


CALIBRATIONS = ("fisher", "uniform", "steps", "none")
STEP_LOSSES = ("guided", "conditional")
FISHER_TARGETS = ("velocity", "output", "x0")


@options_for("adatsq")
@dataclass(frozen=True)
class AdaTSQOptions(MethodOptions):
    """Options of AdaTSQ (defaults justified in BENCHMARKS.md).

    Attributes:
        pareto: timestep-dynamic activation bits by the Pareto beam search (else uniform bits).
        calib: weight calibration, ``"fisher"``, ``"uniform"``, ``"steps"`` (the same given
            ``step_weights`` for every layer) or ``"none"`` (round to nearest).
        step_weights: per-step weights of ``calib="steps"`` (one per sampling step, normalized
            to sum to one), e.g. a measured per-step damage or ``Δσ_t``.
        calib_last_step: whether the last sampling step's Hessian takes part in the calibration
            (False: its weight is set to 0 and the others renormalized).
        tau: softmax temperature of Eq. 6 on per-layer mean-normalized Fisher scores.
        mix: weight of uniform calibration blended into the Eq. 6 weights (0: Eq. 6 alone).
        fisher_target: ``"velocity"`` (Eq. 1), ``"output"`` (target-free output
            sensitivity) or ``"x0"`` (the loss on the denoised estimate ``x_t - σ v``), see
            :mod:`adatsq.calib.fisher`.
        extra_bits: ``B_target - bits`` (the paper's W3A3.1 has 0.1).
        bit_choices: per-layer activation widths the candidates use.
        num_candidates: ``M`` candidates per step (also the beam width).
        num_clusters: sensitivity groups per step.
        reach: candidates spend at most ``B_target + reach`` bits on average.
        step_loss: ``"guided"`` (the CFG velocity sampling uses) or ``"conditional"``.
        loss_weights: exponents ``γ`` of the step size ``Δσ_t = σ_t - σ_{t+1}`` that weight the
            step losses; one beam search per exponent, the selection chooses among all.
        keep: frontier truncation rule, ``"origin"`` (the paper's) or ``"lagrangian"``.
        fisher_prompts: calibration prompts of the Fisher estimate.
        step_prompts: calibration prompts (the first of the calibration batch) whose
            trajectories score the step losses (Eq. 2).
        select_prompts: prompts generated per surviving path in the final selection.
        select_paths: most surviving paths tried (least-loss first).
        lowrank: a 16-bit low-rank branch of every rotated weight at SVDQuant's proportional
            rank (:func:`adatsq.quant.lowrank.proportional_rank`); only the residual is quantized
            (the ``adatsq_lr`` variant; beyond the paper).
        balance: channel balancing before the rotation, as ViDiT-Q's: SmoothQuant factors of
            this migration strength (from every step's input ranges) divide each layer's input
            before it is rotated (the ``adatsq_cb`` variant, for massive activations that
            rotation alone spreads over every channel; beyond the paper). None: rotation only.
        random_signs: randomized Hadamard rotation (seeded random signs, as QuaRot); False: the
            plain Sylvester/Paley matrix.
        search_execution: how the quantized layers compute while the search samples (step
            losses and selection): ``"integer"`` (int8 matrix multiplies, as the quantized model
            then runs; 1.4x faster step losses on flux-digits) or ``"simulated"`` (the float
            reference; results differ from the integer path's in the last bits, so the chosen
            path may differ by a step's candidate). See BENCHMARKS.md.
        block_size, damp, act_order: GPTQ settings.
    """

    pareto: bool = True
    calib: str = "fisher"
    # the best of 20 weightings on 200 validation prompts (runs/calibration; a tie with uniform
    # at 95%): the x0 target and no last step deviate from Eq. 1/6 as printed (BENCHMARKS.md)
    tau: float = 10.0
    mix: float = 0.0
    fisher_target: str = "x0"
    step_weights: tuple[float, ...] | None = None
    calib_last_step: bool = False
    extra_bits: float = 0.1
    bit_choices: tuple[int, ...] = (3, 4, 8)
    num_candidates: int = 8
    num_clusters: int = 32
    reach: float = 1.0
    step_loss: str = "guided"
    loss_weights: tuple[float, ...] = (0.0, 1.0, 2.0)
    keep: str = "lagrangian"
    fisher_prompts: int = 16
    step_prompts: int = 16
    select_prompts: int = 24
    select_paths: int = 4
    lowrank: bool = False
    balance: float | None = None
    random_signs: bool = True
    search_execution: str = "integer"
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False

    def __post_init__(self):
        object.__setattr__(self, "bit_choices", tuple(self.bit_choices))
        object.__setattr__(self, "loss_weights", tuple(float(g) for g in self.loss_weights))
        if self.step_weights is not None:
            w = tuple(float(x) for x in self.step_weights)
            if not w or not all(x >= 0 and x < float("inf") for x in w) or sum(w) <= 0:
                raise ValueError("step_weights must be finite, non-negative and not all zero")
            object.__setattr__(self, "step_weights", w)
        if (self.calib == "steps") != (self.step_weights is not None):
            raise ValueError("step_weights go with calib='steps' (and calib='steps' needs them)")
        if not self.loss_weights:
            raise ValueError("loss_weights needs at least one exponent (0: Eq. 3 as printed)")
        if self.calib not in CALIBRATIONS:
            raise ValueError(f"calib must be one of {', '.join(CALIBRATIONS)}, got {self.calib!r}")
        if self.fisher_target not in FISHER_TARGETS:
            raise ValueError(f"fisher_target must be one of {', '.join(FISHER_TARGETS)}, got "
                             f"{self.fisher_target!r}")
        if self.step_loss not in STEP_LOSSES:
            raise ValueError(f"step_loss must be one of {', '.join(STEP_LOSSES)}, got "
                             f"{self.step_loss!r}")
        if self.search_execution not in EXECUTIONS:
            raise ValueError(f"search_execution must be one of {', '.join(EXECUTIONS)}, got "
                             f"{self.search_execution!r}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        self.candidate_config  # noqa: B018 (validates bit_choices, num_clusters, reach)
        if self.keep not in ("origin", "lagrangian"):
            raise ValueError(f"keep must be 'origin' or 'lagrangian', got {self.keep!r}")
        if not self.tau > 0 or self.extra_bits < 0:
            raise ValueError("tau must be positive and extra_bits non-negative")
        if self.balance is not None:
            check_alpha(self.balance)
        for n in ("num_candidates", "fisher_prompts", "step_prompts", "select_prompts",
                  "select_paths"):
            if getattr(self, n) <= 0:
                raise ValueError(f"{n} must be positive")

    @property
    def candidate_config(self) -> CandidateConfig:
        return CandidateConfig(bit_choices=self.bit_choices, num_candidates=self.num_candidates,
                               num_clusters=self.num_clusters, reach=self.reach)

    @property
    def gptq(self) -> GPTQOptions:
        return GPTQOptions(self.block_size, self.damp, self.act_order)


@dataclass(frozen=True)
class Recipe:
    """A complete quantization run.

    ``options`` are the method's typed options (:data:`METHOD_OPTIONS`); a dict of some of
    their fields is accepted and completed with the defaults.

    Example:
        >>> r = Recipe(method="svdquant", options={"rank": 32})
        >>> r.options
        SVDQuantOptions(rank=32, alpha=0.5)
        >>> Recipe.from_dict(r.to_dict()) == r
        True
    """

    method: str = "rtn"
    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec = field(default_factory=ActivationSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    options: MethodOptions | dict[str, Any] = field(default_factory=dict, hash=False)
    version: int = RECIPE_VERSION

    def __post_init__(self):
        if self.version not in READABLE_RECIPE_VERSIONS:
            raise ValueError(f"recipe version {self.version} is not supported (this adatsq reads "
                             f"{', '.join(map(str, READABLE_RECIPE_VERSIONS))})")
        object.__setattr__(self, "version", RECIPE_VERSION)
        kind = options_class(self.method)
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", kind.from_dict(self.options))
        elif type(self.options) is not kind:
            raise ValueError(f"{self.method} takes {kind.__name__}, not "
                             f"{type(self.options).__name__}")

    @property
    def label(self) -> str:
        """``W4A4``-style label."""
        a = "16" if self.activations.bits == FULL_PRECISION else str(self.activations.bits)
        return f"W{self.weights.bits}A{a}"

    def to_dict(self) -> dict[str, Any]:
        """Every field, the method's options included in full."""
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
        if not path.is_file():
            raise ValueError(f"recipe file {str(path)!r} not found; give the path of a .json or "
                             ".yaml recipe")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.from_dict(yaml.safe_load(text))
        return cls.from_dict(json.loads(text))

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
