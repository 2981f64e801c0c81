"""Prompted clips of moving digits: the text-to-video data of the embedded video model.

A clip is :data:`FRAMES` frames of a 16x16 RGB canvas on which one real handwritten digit (an 8x8
scan from :mod:`adatsq.zoo.scenes`' split, optionally coloured) moves one pixel per frame in the
direction its prompt names: ``"a red 3 moving right"``, ``"a 7 moving up"``. Training clips use
training digits; evaluation clips use held-out digits, and calibration prompts are disjoint from
every evaluation prompt, as for the image scenes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from adatsq.zoo.scenes import (
    ALL_COLORS,
    CANVAS,
    PALETTE,
    SLOT,
    UNCOLORED,
    digit_split,
    digits_by_label,
    with_article,
)

FRAMES = 8
#: direction -> (row, col) displacement per frame.
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
EVAL_SEED = 2000
MAX_EVAL = 200


@dataclass(frozen=True)
class ClipSpec:
    """What a clip prompt asks for: a ``digit`` of ``color`` (None: any) moving ``direction``."""

    digit: int
    color: str | None
    direction: str


@dataclass(frozen=True)
class Clip:
    """A rendered clip: ``video`` is (3, FRAMES, 16, 16) float32 in [-1, 1]."""

    prompt: str
    spec: ClipSpec
    video: np.ndarray = field(repr=False)


def prompt_of(spec: ClipSpec) -> str:
    subject = with_article(f"{spec.color} {spec.digit}" if spec.color else spec.digit)
    return f"{subject} moving {spec.direction}"


def sample_clip_spec(rng: np.random.Generator) -> ClipSpec:
    """A uniformly drawn spec (half of them with a colour)."""
    digit = int(rng.integers(10))
    colors = list(PALETTE)
    color = colors[int(rng.integers(len(colors)))] if rng.random() < 0.5 else None
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    return ClipSpec(digit, color, direction)


@functools.lru_cache(maxsize=1)
def _specs_by_prompt() -> dict[str, ClipSpec]:
    """Every spec of the clip grammar, by prompt, sorted by prompt."""
    specs = [ClipSpec(d, c, m) for d in range(10) for c in (None, *PALETTE) for m in DIRECTIONS]
    return dict(sorted((prompt_of(s), s) for s in specs))


def all_clip_prompts() -> list[str]:
    """Every prompt of the clip grammar, sorted."""
    return list(_specs_by_prompt())


def render_clip(rng: np.random.Generator, spec: ClipSpec, part: str = "train") -> np.ndarray:
    """Renders ``spec`` with a digit from ``part``; returns (3, FRAMES, 16, 16) in [-1, 1]."""
    if spec.direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {spec.direction!r}; "
                         f"use one of {', '.join(DIRECTIONS)}")
    images, _ = digit_split(part)
    pool = digits_by_label(part)[spec.digit]
    ink = images[pool[int(rng.integers(len(pool)))]]
    rgb = np.asarray(ALL_COLORS[spec.color or UNCOLORED], np.float32)[:, None, None] * ink[None]
    dr, dc = DIRECTIONS[spec.direction]
    room = CANVAS - SLOT  # positions 0..room along each axis
    travel = FRAMES - 1

    def start(delta: int) -> int:
        if delta == 0:
            return int(rng.integers(room + 1))
        low = 0 if delta > 0 else travel
        return int(rng.integers(low, low + room - travel + 1))

    r0, c0 = start(dr), start(dc)
    video = np.zeros((3, FRAMES, CANVAS, CANVAS), np.float32)
    for f in range(FRAMES):
        r, c = r0 + dr * f, c0 + dc * f
        video[:, f, r:r + SLOT, c:c + SLOT] = rgb
    return video * 2.0 - 1.0


def make_clips(n: int, seed: int = EVAL_SEED, part: str = "held_out") -> list[Clip]:
    """``n`` deterministic clips; a smaller set is a prefix of a larger one."""
    rng = np.random.default_rng([seed, 31])
    out = []
    for _ in range(n):
        spec = sample_clip_spec(rng)
        out.append(Clip(prompt_of(spec), spec, render_clip(rng, spec, part)))
    return out


@functools.lru_cache(maxsize=1)
def _evaluation_prompts() -> frozenset[str]:
    return frozenset(c.prompt for c in make_clips(MAX_EVAL))


def calibration_clip_specs(n: int, seed: int = 1) -> list[tuple[str, ClipSpec]]:
    """``n`` (prompt, spec) pairs that no evaluation set (up to ``MAX_EVAL`` clips) uses."""
    if n <= 0:
        raise ValueError(f"need a positive number of calibration prompts, got {n}")
    banned = _evaluation_prompts()
    free = [p for p in all_clip_prompts() if p not in banned]
    if n > len(free):
        raise ValueError(f"the clip grammar has only {len(free)} prompts outside the evaluation "
                         f"sets; ask for at most that many")
    rng = np.random.default_rng([seed, 7919])
    chosen = rng.choice(len(free), size=n, replace=False)
    return [(free[int(i)], _specs_by_prompt()[free[int(i)]]) for i in chosen]


def training_clip_batch(rng: np.random.Generator,
                        batch_size: int) -> tuple[list[str], np.ndarray]:
    """A batch of (prompts, clips (B, 3, FRAMES, 16, 16)) from the training digits."""
    prompts, videos = [], []
    for _ in range(batch_size):
        spec = sample_clip_spec(rng)
        prompts.append(prompt_of(spec))
        videos.append(render_clip(rng, spec, "train"))
    return prompts, np.stack(videos)
