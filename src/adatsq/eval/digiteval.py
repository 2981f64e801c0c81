"""DigitEval: GenEval's object-focused evaluation, on digit scenes.

GenEval detects objects, reads their colors and checks each prompt's include / exclude / position
rules. Here the "detector" is the 2x2 slot grid of :mod:`adatsq.zoo.scenes`: a slot holds an
object when its ink mass is above :data:`INK_THRESHOLD`; the object is labelled by the shipped
:mod:`adatsq.eval.classifier` (kept if its confidence reaches GenEval's detection threshold 0.3),
its color is the palette entry nearest to its normalized ink color, and its box is the slot.
:func:`score` then applies GenEval's rules unchanged, and :func:`evaluate` reports per-category
accuracy and GenEval's overall score (the mean of the six category accuracies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from adatsq.eval.classifier import DigitClassifier, load_classifier
from adatsq.zoo import scenes

# Ink below this gray level is ignored when measuring occupancy, so faint background noise of a
# generated image never adds up to a digit.
INK_FLOOR = 0.2
# Held-out digits have at least 9.3 units of ink above the floor (8.4 for training digits), an
# empty slot 0 and a slot of N(0, 0.2) background noise about 0.3: 4.0 sits between them.
INK_THRESHOLD = 4.0
# Pixels at least this fraction of the slot's brightest ink give the color (anti-aliased edges
# and noise would pull it towards white).
COLOR_FRACTION = 0.5
MIN_CONFIDENCE = 0.3  # GenEval's detection score threshold
POSITION_THRESHOLD = 0.1  # GenEval: centers must differ by more than 0.1 x (sum of box sizes)
#: Color names in the order of :func:`nearest_colors`' indices ("white" = uncolored).
COLOR_NAMES = tuple(scenes.ALL_COLORS)
_COLOR_TABLE = np.array([scenes.ALL_COLORS[c] for c in COLOR_NAMES])  # (K, 3)
_SLOTS = tuple((r, c) for r in range(scenes.GRID) for c in range(scenes.GRID))


@dataclass(frozen=True)
class Detection:
    """One detected digit.

    Attributes:
        digit: predicted label, 0-9.
        color: name of the nearest entry of ``scenes.ALL_COLORS`` ("white" = uncolored).
        row: slot row (0 = top).
        col: slot column (0 = left).
        x: horizontal pixel coordinate of the slot center (grows to the right).
        y: vertical pixel coordinate of the slot center (grows downwards).
        confidence: classifier softmax probability of ``digit``.
    """

    digit: int
    color: str
    row: int
    col: int
    x: float
    y: float
    confidence: float


@dataclass(frozen=True)
class DigitEvalResult:
    """DigitEval scores of a set of images.

    Attributes:
        category_scores: accuracy of each category present, in ``scenes.CATEGORIES`` order.
        category_counts: number of prompts of each category present.
        total: mean of the category accuracies (GenEval's overall score).
        total_se: binomial standard error of ``total``,
            ``sqrt(sum_c p_c (1 - p_c) / n_c) / C``.
        correct: per-prompt correctness, in input order.
    """

    category_scores: dict[str, float] = field(hash=False)
    category_counts: dict[str, int] = field(hash=False)
    total: float
    total_se: float
    correct: tuple[bool, ...] = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (per-prompt correctness as 0/1)."""
        return {"category_scores": dict(self.category_scores),
                "category_counts": dict(self.category_counts),
                "total": self.total, "total_se": self.total_se,
                "correct": [int(c) for c in self.correct]}


def _as_batch(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, 3, 16, 16) float64 numpy from a torch/numpy image or batch."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().double().numpy()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        images = images[None]
    expected = (3, scenes.CANVAS, scenes.CANVAS)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"expected images of shape (B, {expected}) or {expected}, "
                         f"got {images.shape}")
    return images


def slot_crops(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """The slots of every image as RGB in [0, 1]: (B, 4, 3, 8, 8), slots in row-major order.

    Example:
        >>> slot_crops(np.full((2, 3, 16, 16), -1.0)).shape
        (2, 4, 3, 8, 8)
    """
    rgb = np.clip((_as_batch(images) + 1.0) / 2.0, 0.0, 1.0)  # (B, 3, 16, 16)
    b, s, g = rgb.shape[0], scenes.SLOT, scenes.GRID
    crops = rgb.reshape(b, 3, g, s, g, s).transpose(0, 2, 4, 1, 3, 5)  # (B, g, g, 3, s, s)
    return crops.reshape(b, g * g, 3, s, s)


def ink(crops: np.ndarray) -> np.ndarray:
    """Gray ink intensity (max over channels) of RGB crops (..., 3, H, W) -> (..., H, W)."""
    return crops.max(axis=-3)


def nearest_colors(crops: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Index into :data:`COLOR_NAMES` of each crop's normalized ink color.

    The color is the mean RGB of the crop's brightest ink (pixels at least ``COLOR_FRACTION`` of
    its peak, weighted by ink), scaled so that its largest channel is 1, then snapped to the
    nearest entry of ``scenes.ALL_COLORS``.

    Args:
        crops: RGB crops (N, 3, H, W) in [0, 1].
        gray: their ink, ``ink(crops)`` (N, H, W).

    Returns:
        (N,) int indices into :data:`COLOR_NAMES`.

    Example:
        >>> crops = np.zeros((1, 3, 8, 8))
        >>> crops[0, 0, 2:6, 3] = 1.0  # a red stroke
        >>> COLOR_NAMES[nearest_colors(crops, ink(crops))[0]]
        'red'
    """
    bright = gray >= COLOR_FRACTION * gray.max(axis=(-2, -1), keepdims=True)  # (N, 8, 8)
    weight = gray * bright  # (N, 8, 8)
    total = np.maximum(weight.sum((-2, -1)), 1e-12)[:, None]  # (N, 1)
    mean = (crops * weight[:, None]).sum((-2, -1)) / total  # (N, 3)
    mean = mean / np.maximum(mean.max(-1, keepdims=True), 1e-12)  # (N, 3)
    dist = ((mean[:, None, :] - _COLOR_TABLE[None]) ** 2).sum(-1)  # (N, K)
    return dist.argmin(-1)


@torch.no_grad()
def detect_batch(images: torch.Tensor | np.ndarray,
                 classifier: DigitClassifier | None = None) -> list[list[Detection]]:
    """Detections of every image of a batch (B, 3, 16, 16) in [-1, 1]; one classifier call.

    Args:
        images: a batch (or one image) in [-1, 1], torch or numpy.
        classifier: digit classifier; the shipped one if None.

    Returns:
        For each image, its detections in row-major slot order.

    Example:
        >>> scene = scenes.make_scenes(1, seed=0, categories=("two_object",))[0]
        >>> sorted(d.digit for d in detect_batch(scene.image[None])[0])  # doctest: +SKIP
    """
    classifier = classifier or load_classifier()
    crops = slot_crops(images)  # (B, 4, 3, 8, 8)
    b, n_slots = crops.shape[:2]
    crops = crops.reshape(b * n_slots, 3, scenes.SLOT, scenes.SLOT)
    gray = ink(crops)  # (B*4, 8, 8)
    occupied = np.clip(gray - INK_FLOOR, 0.0, None).sum((-2, -1)) > INK_THRESHOLD  # (B*4,)
    labels = np.zeros(b * n_slots, np.int64)
    confidence = np.zeros(b * n_slots)
    colors = np.zeros(b * n_slots, np.int64)
    index = np.flatnonzero(occupied)
    if index.size:
        lab, conf = classifier.predict(torch.from_numpy(gray[index]).float())
        labels[index], confidence[index] = lab.numpy(), conf.double().numpy()
        colors[index] = nearest_colors(crops[index], gray[index])
    keep = occupied & (confidence >= MIN_CONFIDENCE)
    out: list[list[Detection]] = [[] for _ in range(b)]
    half = scenes.SLOT / 2
    for i in np.flatnonzero(keep):
        row, col = _SLOTS[i % n_slots]
        out[i // n_slots].append(Detection(
            digit=int(labels[i]), color=COLOR_NAMES[colors[i]], row=row, col=col,
            x=col * scenes.SLOT + half, y=row * scenes.SLOT + half,
            confidence=float(confidence[i])))
    return out


def detect(image: torch.Tensor | np.ndarray,
           classifier: DigitClassifier | None = None) -> list[Detection]:
    """Detections of one image (3, 16, 16) in [-1, 1].

    Example:
        >>> detect(np.full((3, 16, 16), -1.0))
        []
    """
    images = _as_batch(image)
    if images.shape[0] != 1:
        raise ValueError(f"detect takes one image; use detect_batch for {images.shape[0]}")
    return detect_batch(images, classifier)[0]


def relative_position(subject: Detection, reference: Detection) -> set[str]:
    """GenEval's relations of ``subject`` to ``reference`` ("above", "to the left of", ...).

    Both boxes are slots; the center offset is shrunk by ``POSITION_THRESHOLD`` times the summed
    box sizes, and a relation holds when the shrunk offset, divided by the full offset length,
    exceeds 0.5 along its axis (so a diagonal neighbour is, as in GenEval, both beside and above).
    """
    size = 2 * scenes.SLOT  # sum of the two box sides, on either axis
    offset = np.array([subject.x - reference.x, subject.y - reference.y])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * size, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("to the left of")
    if dx > 0.5:
        relations.add("to the right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def score(spec: scenes.Spec, detections: list[Detection]) -> bool:
    """Whether ``detections`` satisfy ``spec`` under GenEval's rules.

    * include ``(digit, count, color)``: at least ``count`` detections of ``digit`` (the ``count``
      most confident are kept) and, if ``color`` is given, all kept ones have that color;
    * exclude ``(digit, count)``: fails if ``count`` or more of ``digit`` are detected;
    * relation ``(a, rel, b)``: every kept ``a`` must stand in ``rel`` to every kept ``b``.

    Example:
        >>> spec = scenes.Spec("single_object", ((3, 1, None),))
        >>> score(spec, [Detection(3, "white", 0, 0, 4.0, 4.0, 0.99)])
        True
    """
    by_digit: dict[int, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.confidence):
        by_digit.setdefault(det.digit, []).append(det)
    kept: dict[int, list[Detection]] = {}
    for digit, count, color in spec.include:
        found = by_digit.get(digit, [])[:count]
        if len(found) < count:
            return False
        if color is not None and any(d.color != color for d in found):
            return False
        kept[digit] = found
    for digit, count in spec.exclude:
        if len(by_digit.get(digit, [])) >= count:
            return False
    if spec.relation is not None:
        subject, rel, reference = spec.relation
        if rel not in scenes.RELATIONS:
            raise ValueError(f"unknown relation {rel!r}; expected one of {list(scenes.RELATIONS)}")
        subjects = kept.get(subject) or by_digit.get(subject, [])[:1]
        references = kept.get(reference) or by_digit.get(reference, [])[:1]
        if not subjects or not references:
            return False
        return all(rel in relative_position(s, r) for s in subjects for r in references)
    return True


def evaluate(images: torch.Tensor | np.ndarray, specs: list[scenes.Spec],
             classifier: DigitClassifier | None = None) -> DigitEvalResult:
    """DigitEval scores of ``images`` (B, 3, 16, 16) in [-1, 1] against their ``specs``.

    Categories missing from ``specs`` are left out of ``total`` (the mean over present ones).

    Example:
        >>> batch = scenes.make_scenes(5, seed=0)
        >>> result = evaluate(np.stack([s.image for s in batch]), [s.spec for s in batch])
        >>> result.total > 0.8
        True
    """
    images = _as_batch(images)
    if images.shape[0] != len(specs):
        raise ValueError(f"{images.shape[0]} images but {len(specs)} specs")
    detections = detect_batch(images, classifier)
    correct = tuple(score(spec, dets) for spec, dets in zip(specs, detections))
    scores, counts = {}, {}
    for category in scenes.CATEGORIES:
        hits = [c for c, spec in zip(correct, specs) if spec.category == category]
        if hits:
            scores[category], counts[category] = float(np.mean(hits)), len(hits)
    unknown = {spec.category for spec in specs} - set(scenes.CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}")
    if not scores:
        return DigitEvalResult({}, {}, float("nan"), float("nan"), correct)
    total = float(np.mean(list(scores.values())))
    variance = sum(p * (1 - p) / counts[c] for c, p in scores.items())
    return DigitEvalResult(scores, counts, total, math.sqrt(variance) / len(scores), correct)


def _slot_contents(detections: list[list[Detection]]) -> list[list[tuple[int, str] | None]]:
    """Per image, the (digit, color) each of the four slots shows, or None for an empty slot."""
    out = []
    for dets in detections:
        slots: list[tuple[int, str] | None] = [None] * len(_SLOTS)
        for d in dets:
            slots[d.row * scenes.GRID + d.col] = (d.digit, d.color)
        out.append(slots)
    return out


def faithfulness(images: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray,
                 classifier: DigitClassifier | None = None) -> np.ndarray:
    """Per image, the fraction of its slots that show what the reference image's slots show.

    The detector of :func:`detect_batch` reads both images; a slot agrees when both are empty or
    both hold the same digit in the same color (positions are the slots). Unlike the task score it
    needs no prompt and does not saturate when both images fail (or pass) the prompt's rule: a
    quantized sample that draws other digits than the full-precision sample of the same seed loses
    faithfulness even where both satisfy the prompt.

    Args:
        images: (B, 3, 16, 16) in [-1, 1], e.g. the quantized model's samples.
        reference: the same shape, e.g. the full-precision samples of the same prompts and seeds.

    Returns:
        (B,) float64 in [0, 1] (multiples of 1/4).

    Example:
        >>> blank = np.full((1, 3, 16, 16), -1.0)
        >>> faithfulness(blank, blank).tolist()
        [1.0]
    """
    images, reference = _as_batch(images), _as_batch(reference)
    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} differ in shape")
    classifier = classifier or load_classifier()
    both = _slot_contents(detect_batch(np.concatenate([images, reference]), classifier))
    ours, theirs = both[:len(images)], both[len(images):]
    return np.array([np.mean([a == b for a, b in zip(x, y)]) for x, y in zip(ours, theirs)])


def ceiling(n_per_category: int = 100, seed: int = 0,
            classifier: DigitClassifier | None = None) -> DigitEvalResult:
    """DigitEval of real held-out scenes: the best score a generator can expect.

    Example:
        >>> ceiling(20).total >= 0.9
        True
    """
    batch = scenes.make_scenes(n_per_category, seed, part="held_out")
    return evaluate(np.stack([s.image for s in batch]), [s.spec for s in batch], classifier)
