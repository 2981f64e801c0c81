"""Prompted digit scenes: real handwritten digits composed on small RGB canvases.

The digits are scikit-learn's ``load_digits`` (1,797 real 8x8 scans). A scene is a 16x16 RGB canvas
holding a 2x2 grid of 8x8 slots; every prompt belongs to one of the six GenEval categories. Each
scene carries the metadata that :mod:`adatsq.eval.digiteval` scores against (GenEval's include /
exclude rules).

The digit images are split once, by a fixed seed, into a training part (used to train the embedded
generators and the evaluator's classifier) and a held-out part (used for the evaluator's accuracy,
the real-scene ceiling and the Fréchet reference); calibration and evaluation never see training
digits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

CANVAS = 16
SLOT = 8
GRID = CANVAS // SLOT  # slots per side
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
# Every palette entry has its largest component at 1 so that the ink intensity is max(R, G, B).
PALETTE = {
    "red": (1.0, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.0),
    "yellow": (1.0, 1.0, 0.1),
    "green": (0.1, 1.0, 0.2),
    "blue": (0.15, 0.35, 1.0),
    "purple": (0.7, 0.15, 1.0),
}
UNCOLORED = "white"
ALL_COLORS = {**PALETTE, UNCOLORED: (1.0, 1.0, 1.0)}
RELATIONS = {  # relation -> (slot of the subject, slot of the reference) as (row, col) pairs
    "to the left of": (((0, 0), (0, 1)), ((1, 0), (1, 1))),
    "to the right of": (((0, 1), (0, 0)), ((1, 1), (1, 0))),
    "above": (((0, 0), (1, 0)), ((0, 1), (1, 1))),
    "below": (((1, 0), (0, 0)), ((1, 1), (0, 1))),
}
SPLIT_SEED = 20240917
HELD_OUT_FRACTION = 1 / 3


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for, in GenEval's terms.

    Attributes:
        category: one of :data:`CATEGORIES`.
        include: ``(digit, count, color or None)`` requirements.
        exclude: ``(digit, count)``: fail if at least ``count`` of ``digit`` are found.
        relation: ``(subject digit, relation, reference digit)`` for position prompts.
    """

    category: str
    include: tuple[tuple[int, int, str | None], ...]
    exclude: tuple[tuple[int, int], ...] = ()
    relation: tuple[int, str, int] | None = None


@dataclass(frozen=True)
class Scene:
    """A rendered scene: ``image`` is (3, 16, 16) float32 in [-1, 1]."""

    prompt: str
    spec: Spec
    image: np.ndarray = field(repr=False)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


@functools.lru_cache(maxsize=2)
def digit_split(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) in [0, 1] and labels (N,) of the ``"train"`` or ``"held_out"`` part."""
    if part not in ("train", "held_out"):
        raise ValueError(f"unknown digit split {part!r}; use 'train' or 'held_out'")
    images, labels = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_held = int(round(len(labels) * HELD_OUT_FRACTION))
    index = np.sort(order[:n_held] if part == "held_out" else order[n_held:])
    return images[index], labels[index]


def with_article(word: object) -> str:
    """The word with its indefinite article ("an 8", "an orange 3", "a 5")."""
    word = str(word)
    return f"an {word}" if word[0] in "aeio8" else f"a {word}"


def _pick_two(rng: np.random.Generator, n: int) -> tuple[int, int]:
    a, b = rng.choice(n, size=2, replace=False)
    return int(a), int(b)


def sample_spec(rng: np.random.Generator, category: str) -> tuple[str, Spec]:
    """Draws a prompt of ``category`` and its spec."""
    colors = list(PALETTE)
    if category == "single_object":
        d = int(rng.integers(10))
        return with_article(d), Spec(category, ((d, 1, None),))
    if category == "two_object":
        a, b = _pick_two(rng, 10)
        spec = Spec(category, ((a, 1, None), (b, 1, None)))
        return f"{with_article(a)} and {with_article(b)}", spec
    if category == "counting":
        d, n = int(rng.integers(10)), int(rng.integers(2, 5))
        return f"{NUMBER_WORDS[n]} {d}s", Spec(category, ((d, n, None),), exclude=((d, n + 1),))
    if category == "colors":
        d, c = int(rng.integers(10)), colors[int(rng.integers(len(colors)))]
        return with_article(f"{c} {d}"), Spec(category, ((d, 1, c),))
    if category == "position":
        a, b = _pick_two(rng, 10)
        rel = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
        spec = Spec(category, ((a, 1, None), (b, 1, None)), relation=(a, rel, b))
        return f"{with_article(a)} {rel} {with_article(b)}", spec
    if category == "color_attr":
        a, b = _pick_two(rng, 10)
        ca, cb = _pick_two(rng, len(colors))
        spec = Spec(category, ((a, 1, colors[ca]), (b, 1, colors[cb])))
        return f"{with_article(f'{colors[ca]} {a}')} and {with_article(f'{colors[cb]} {b}')}", spec
    raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")


def all_prompts() -> list[str]:
    """Every prompt the scene grammar can produce (for embedding caches), sorted."""
    colors = list(PALETTE)
    pairs = [(a, b) for a in range(10) for b in range(10) if a != b]
    out = [with_article(d) for d in range(10)]
    out += [f"{with_article(a)} and {with_article(b)}" for a, b in pairs]
    out += [f"{w} {d}s" for d in range(10) for w in NUMBER_WORDS.values()]
    out += [with_article(f"{c} {d}") for d in range(10) for c in colors]
    out += [f"{with_article(a)} {r} {with_article(b)}" for a, b in pairs for r in RELATIONS]
    out += [f"{with_article(f'{ca} {a}')} and {with_article(f'{cb} {b}')}" for a, b in pairs
            for ca in colors for cb in colors if ca != cb]
    return sorted(out)


def _layout(rng: np.random.Generator, spec: Spec) -> list[tuple[int, str, tuple[int, int]]]:
    """(digit, color, slot) for every object of the spec."""
    if spec.relation is not None:
        a, rel, b = spec.relation
        slot_a, slot_b = RELATIONS[rel][int(rng.integers(2))]
        return [(a, UNCOLORED, slot_a), (b, UNCOLORED, slot_b)]
    objects = [(d, color or UNCOLORED) for d, n, color in spec.include for _ in range(n)]
    slots = [(r, c) for r in range(GRID) for c in range(GRID)]
    chosen = rng.choice(len(slots), size=len(objects), replace=False)
    return [(d, color, slots[int(s)]) for (d, color), s in zip(objects, chosen)]


def render(rng: np.random.Generator, spec: Spec, part: str = "train") -> np.ndarray:
    """Renders a scene for ``spec`` with digits from ``part``; returns (3, 16, 16) in [-1, 1]."""
    images, labels = digit_split(part)
    by_digit = digits_by_label(part)
    canvas = np.zeros((3, CANVAS, CANVAS), np.float32)
    for digit, color, (row, col) in _layout(rng, spec):
        pool = by_digit[digit]
        ink = images[pool[int(rng.integers(len(pool)))]]  # (8, 8)
        rgb = np.asarray(ALL_COLORS[color], np.float32)[:, None, None] * ink[None]
        canvas[:, row * SLOT:(row + 1) * SLOT, col * SLOT:(col + 1) * SLOT] = rgb
    return canvas * 2.0 - 1.0


@functools.lru_cache(maxsize=2)
def digits_by_label(part: str) -> dict[int, np.ndarray]:
    _, labels = digit_split(part)
    return {d: np.flatnonzero(labels == d) for d in range(10)}


EVAL_SEED = 1000
MAX_EVAL_PER_CATEGORY = 200


def make_scenes(n_per_category: int, seed: int = EVAL_SEED, part: str = "held_out",
                categories: tuple[str, ...] = CATEGORIES) -> list[Scene]:
    """Deterministic scenes: ``n_per_category`` of each category, rendered from ``part``.

    Each category has its own random stream, so a smaller set is a prefix of a larger one.
    """
    scenes = []
    for category in categories:
        rng = np.random.default_rng([seed, CATEGORIES.index(category)])
        for _ in range(n_per_category):
            prompt, spec = sample_spec(rng, category)
            scenes.append(Scene(prompt, spec, render(rng, spec, part)))
    return scenes


@functools.lru_cache(maxsize=1)
def _evaluation_prompts() -> frozenset[str]:
    return frozenset(s.prompt for s in make_scenes(MAX_EVAL_PER_CATEGORY, EVAL_SEED))


def calibration_scenes(n: int, seed: int = 1) -> list[tuple[str, Spec]]:
    """``n`` (prompt, spec) pairs of the grammar (categories in turn) no evaluation set uses."""
    if n <= 0:
        raise ValueError(f"need a positive number of calibration prompts, got {n}")
    banned = _evaluation_prompts()
    rng = np.random.default_rng([seed, 7919])
    out, exhausted, turn = [], set(), 0
    while len(out) < n:
        if len(exhausted) == len(CATEGORIES):
            raise ValueError(f"the grammar has fewer than {n} prompts outside the evaluation sets")
        category = CATEGORIES[turn % len(CATEGORIES)]
        turn += 1
        if category in exhausted:
            continue
        for _ in range(1000):
            prompt, spec = sample_spec(rng, category)
            if prompt not in banned:
                out.append((prompt, spec))
                break
        else:  # every prompt of this category is used by evaluation
            exhausted.add(category)
    return out


def calibration_prompts(n: int, seed: int = 1) -> list[str]:
    """``n`` prompts of the grammar (categories in turn) that no evaluation set uses."""
    return [prompt for prompt, _ in calibration_scenes(n, seed)]


def training_batch(rng: np.random.Generator, batch_size: int) -> tuple[list[str], np.ndarray]:
    """A batch of (prompts, images (B, 3, 16, 16)) from the training digits, categories uniform."""
    prompts, images = [], []
    for _ in range(batch_size):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        prompt, spec = sample_spec(rng, category)
        prompts.append(prompt)
        images.append(render(rng, spec, "train"))
    return prompts, np.stack(images)
