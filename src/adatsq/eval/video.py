"""Video evaluation of the embedded text-to-video model: a VBench analog on clips of moving digits.

A clip of :mod:`adatsq.zoo.clips` shows one digit moving one pixel per frame in the direction its
prompt names. Each frame is scored after *locating* the digit: the 8x8 window (over every integer
offset) that holds the most ink (gray level above ``digiteval.INK_FLOOR``); windows within
:data:`LOCATE_TOLERANCE` of the most ink tie, and the one centred nearest the ink centroid wins
(a digit narrower than 8 px fits several windows; the centred crop is the one the classifier
knows). The crop is labelled by the DigitEval classifier and its color named as
:mod:`adatsq.eval.digiteval` names it, with the same thresholds.

:func:`evaluate_clips` reports per-frame DigitEval and five VBench dimensions (subject and
background consistency, motion smoothness, dynamic degree, temporal flicker);
:func:`clip_fidelity` the frame-wise PSNR and SSIM of clips against the full-precision model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from adatsq.eval import fidelity
from adatsq.eval.classifier import DigitClassifier, load_classifier
from adatsq.eval.digiteval import (
    COLOR_NAMES,
    INK_FLOOR,
    INK_THRESHOLD,
    MIN_CONFIDENCE,
    ink,
    nearest_colors,
)
from adatsq.zoo import scenes
from adatsq.zoo.clips import DIRECTIONS, ClipSpec

#: A clip passes (``clip_accuracy``) when at least this fraction of its frames pass.
CLIP_PASS_FRACTION = 0.75
#: Windows holding at least (1 - this) x the most ink tie; the one centred on the ink wins.
LOCATE_TOLERANCE = 0.02
#: Pixels the asked motion travels per frame (the clips' speed).
STEP = 1.0
_WINDOW = scenes.SLOT


@dataclass(frozen=True)
class VideoScores:
    """Scores of a batch of clips, averaged over clips; in [0, 1], higher is better (but total_se).

    Attributes:
        per_frame: per-frame DigitEval: fraction of a clip's frames whose located digit is
            detected (ink above ``INK_THRESHOLD``, confidence >= ``MIN_CONFIDENCE``) as the
            asked digit, in the asked color when the prompt names one (an uncolored prompt
            accepts any color).
        clip_accuracy: fraction of clips in which at least ``CLIP_PASS_FRACTION`` of the
            frames pass.
        subject_consistency: mean over frames t >= 1 of the average cosine similarity of the
            classifier features of the located crop at t with those at frame 0 and at t - 1
            (VBench's formula, with the classifier in place of DINO).
        background_consistency: 1 - mean absolute difference, in [0, 1] pixel units, of the
            background (pixels outside both located windows) of frame t against frame 0 and
            against frame t - 1, averaged like ``subject_consistency``: it sees slow drift.
        motion_smoothness: 1 - e / ``STEP`` (clipped at 0), where e is the mean distance in
            pixels between the digit's ink centroid at frame t and the midpoint of its
            centroids at t - 1 and t + 1 (VBench's frame-interpolation error, on the centroid
            track); constant-velocity motion, and a static clip, score 1.
        dynamic_degree: fraction of clips that move as asked: the centroid's first-to-last
            displacement along the asked direction is at least half the expected travel
            (``(F - 1) * STEP``) and larger than the perpendicular displacement.
        temporal_flicker: VBench's 1 - mean absolute difference of consecutive frames, on the
            background only (on whole frames the moving digit would count as flicker; VBench
            computes it on static videos); it sees frame-to-frame flicker, not drift.
        total: mean of ``per_frame`` and ``dynamic_degree``: the right digit, moving the
            right way.
        total_se: standard error of ``total`` over clips, ``std(t_i, ddof=1) / sqrt(B)`` of the
            per-clip totals ``t_i`` (NaN for a single clip).
    """

    per_frame: float
    clip_accuracy: float
    subject_consistency: float
    background_consistency: float
    motion_smoothness: float
    dynamic_degree: float
    temporal_flicker: float
    total: float
    total_se: float
    per_clip_total: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict of the batch scores as plain floats (not the per-clip totals)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)
                if f.name != "per_clip_total"}


def _as_clips(videos: torch.Tensor | np.ndarray, name: str = "videos") -> np.ndarray:
    """(B, 3, F, 16, 16) float64 numpy in [0, 1] from clips in [-1, 1]; one-line ValueErrors."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().cpu().double().numpy()
    videos = np.asarray(videos, dtype=np.float64)
    if videos.ndim != 5:
        raise ValueError(f"{name} must be (B, 3, F, H, W), got shape {videos.shape}")
    b, c, _, h, w = videos.shape
    if b == 0 or c != 3 or (h, w) != (scenes.CANVAS, scenes.CANVAS):
        raise ValueError(f"{name} must be (B >= 1, 3, F, {scenes.CANVAS}, {scenes.CANVAS}), "
                         f"got shape {videos.shape}")
    if not np.isfinite(videos).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return np.clip((videos + 1.0) / 2.0, 0.0, 1.0)


def locate(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The digit's 8x8 window and ink centroid in each RGB frame (N, 3, H, W) in [0, 1].

    Args:
        frames: RGB frames in [0, 1].

    Returns:
        ``corners`` (N, 2) int (row, col) of each window's top-left pixel, and ``centroids``
        (N, 2) float (row, col) of the ink (above ``INK_FLOOR``) inside it; a window without
        ink has its centre as centroid.

    Example:
        >>> frames = np.zeros((1, 3, 16, 16))
        >>> frames[0, :, 5:11, 6:10] = 1.0
        >>> corners, centroids = locate(frames)
        >>> corners.tolist(), centroids.round(6).tolist()
        ([[4, 4]], [[7.5, 7.5]])
    """
    mass = np.clip(ink(frames) - INK_FLOOR, 0.0, None)  # (N, H, W)
    n, h, w = mass.shape
    sums = sliding_window_view(mass, (_WINDOW, _WINDOW), axis=(1, 2)).sum((-2, -1))  # (N, R, C)
    first = np.stack(np.divmod(sums.reshape(n, -1).argmax(1), sums.shape[2]), 1)  # (N, 2)
    centroid = _centroids(mass * _window_mask(first, h, w), first + (_WINDOW - 1) / 2)  # (N, 2)
    # Tied windows hold the same ink; the one centred on it gives the classifier a centred digit.
    top = sums.reshape(n, -1).max(1)[:, None, None]  # (N, 1, 1)
    tied = sums >= top * (1.0 - LOCATE_TOLERANCE) - 1e-9  # (N, R, C)
    win_r = np.arange(sums.shape[1])[None, :, None] + (_WINDOW - 1) / 2
    win_c = np.arange(sums.shape[2])[None, None, :] + (_WINDOW - 1) / 2
    dist = (win_r - centroid[:, 0, None, None]) ** 2 + (win_c - centroid[:, 1, None, None]) ** 2
    best = np.where(tied, dist, np.inf).reshape(n, -1).argmin(1)  # (N,)
    corners = np.stack(np.divmod(best, sums.shape[2]), 1)  # (N, 2)
    return corners, _centroids(mass * _window_mask(corners, h, w), corners + (_WINDOW - 1) / 2)


def _window_mask(corners: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, H, W) True inside the 8x8 window whose top-left pixel is ``corners`` (N, 2)."""
    rows = np.arange(h)[None, :, None] - corners[:, 0, None, None]  # (N, H, 1)
    cols = np.arange(w)[None, None, :] - corners[:, 1, None, None]  # (N, 1, W)
    return (rows >= 0) & (rows < _WINDOW) & (cols >= 0) & (cols < _WINDOW)


def _centroids(mass: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Mass-weighted (row, col) centroids of (N, H, W); ``fallback`` (N, 2) where mass is 0."""
    total = mass.sum((1, 2))  # (N,)
    rows = (mass.sum(2) * np.arange(mass.shape[1])).sum(1)  # (N,)
    cols = (mass.sum(1) * np.arange(mass.shape[2])).sum(1)  # (N,)
    safe = np.maximum(total, 1e-12)[:, None]
    return np.where(total[:, None] > 0, np.stack([rows, cols], 1) / safe, fallback)


def _crops(frames: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The 8x8 RGB windows (N, 3, 8, 8) of frames (N, 3, H, W) at ``corners`` (N, 2)."""
    offsets = np.arange(_WINDOW)
    rows = (corners[:, 0, None] + offsets)[:, None, :, None]  # (N, 1, 8, 1)
    cols = (corners[:, 1, None] + offsets)[:, None, None, :]  # (N, 1, 1, 8)
    index = np.arange(frames.shape[0])[:, None, None, None]
    return frames[index, np.arange(3)[None, :, None, None], rows, cols]


def _background_mae(frames: np.ndarray, outside: np.ndarray, reference: np.ndarray,
                    reference_outside: np.ndarray) -> np.ndarray:
    """Mean |difference| of frames 1..F-1 (B, F, 3, H, W) and ``reference`` frames (B, F-1 or 1,
    3, H, W) over pixels outside both located windows (``outside`` masks (B, F, H, W)): (B, F-1).
    """
    mask = outside[:, 1:] & reference_outside  # (B, F-1, H, W)
    diff = np.abs(frames[:, 1:] - reference).mean(2)  # (B, F-1, H, W)
    return (diff * mask).sum((2, 3)) / np.maximum(mask.sum((2, 3)), 1)


@dataclass(frozen=True)
class _Frames:
    """What the detector reads in every frame (N of them): the located window ``corners`` (N, 2),
    the ink ``centroids`` (N, 2), the ``labels`` (N,), ``colors`` (N,) names, whether the digit is
    ``detected`` (N,) (enough ink and confidence), and the classifier ``features`` (N, D) or None.
    """

    corners: np.ndarray
    centroids: np.ndarray
    labels: np.ndarray
    colors: np.ndarray
    detected: np.ndarray
    features: np.ndarray | None


def _read(frames: np.ndarray, classifier: DigitClassifier, features: bool = False) -> _Frames:
    """Locates, labels and colors the digit of every RGB frame (N, 3, H, W) in [0, 1]."""
    corners, centroids = locate(frames)  # (N, 2) each
    crops = _crops(frames, corners)  # (N, 3, 8, 8)
    gray = ink(crops)  # (N, 8, 8)
    x = torch.from_numpy(gray).float()
    labels, confidence = (t.numpy() for t in classifier.predict(x))
    detected = ((np.clip(gray - INK_FLOOR, 0.0, None).sum((1, 2)) > INK_THRESHOLD)
                & (confidence >= MIN_CONFIDENCE))
    return _Frames(corners, centroids, labels,
                   np.asarray(COLOR_NAMES)[nearest_colors(crops, gray)], detected,
                   classifier.features(x).double().numpy() if features else None)


#: Frames agree in position when their located windows are at most this many pixels apart.
POSITION_TOLERANCE = 1


@torch.no_grad()
def clip_faithfulness(videos: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray,
                      classifier: DigitClassifier | None = None) -> np.ndarray:
    """Per clip, the fraction of its frames that show what the reference clip's frame shows.

    A frame agrees when the digit is detected in neither, or in both with the same label, the same
    color and windows at most :data:`POSITION_TOLERANCE` pixels apart (on either axis). The
    prompt plays no part, so the score keeps falling as a quantized model drifts from the
    full-precision sample of the same seed, where the task total saturates.

    Args:
        videos: clips (B, 3, F, 16, 16) in [-1, 1], e.g. the quantized model's.
        reference: the same shape, e.g. the full-precision clips of the same prompts and seeds.

    Returns:
        (B,) float64 in [0, 1].

    Example:
        >>> x = np.full((2, 3, 4, 16, 16), -1.0)
        >>> clip_faithfulness(x, x).tolist()
        [1.0, 1.0]
    """
    clips, ref = _as_clips(videos), _as_clips(reference, "reference")
    if clips.shape != ref.shape:
        raise ValueError(f"videos {clips.shape} and reference {ref.shape} differ in shape")
    b, _, n_frames, h, w = clips.shape
    classifier = classifier or load_classifier()
    frames = np.concatenate([clips, ref]).transpose(0, 2, 1, 3, 4).reshape(-1, 3, h, w)
    read = _read(frames, classifier)
    n = b * n_frames
    ours, theirs = slice(0, n), slice(n, 2 * n)
    same = ((read.labels[ours] == read.labels[theirs]) & (read.colors[ours] == read.colors[theirs])
            & (np.abs(read.corners[ours] - read.corners[theirs]).max(1) <= POSITION_TOLERANCE))
    agree = np.where(read.detected[ours] & read.detected[theirs], same,
                     read.detected[ours] == read.detected[theirs])  # (B*F,)
    return agree.reshape(b, n_frames).mean(1).astype(np.float64)


def _check_specs(specs: list[ClipSpec], batch: int) -> None:
    """One-line ValueErrors for a spec list that does not fit the batch or the clip grammar."""
    if len(specs) != batch:
        raise ValueError(f"{batch} clips but {len(specs)} specs")
    for spec in specs:
        if spec.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {spec.direction!r} in {spec}")
        if spec.color is not None and spec.color not in scenes.PALETTE:
            raise ValueError(f"unknown color {spec.color!r} in {spec}")


@torch.no_grad()
def evaluate_clips(videos: torch.Tensor | np.ndarray, specs: list[ClipSpec],
                   classifier: DigitClassifier | None = None) -> VideoScores:
    """Per-frame DigitEval and VBench-style scores of clips against their specs.

    Args:
        videos: generated clips (B, 3, F, 16, 16) in [-1, 1], torch or numpy, F >= 3.
        specs: what each clip's prompt asked for, in batch order.
        classifier: digit classifier; the shipped one if None.

    Returns:
        The :class:`VideoScores` of the batch.

    Raises:
        ValueError: on a wrong shape, fewer than 3 frames, NaN/inf values, a spec count that
            differs from the batch size, or an unknown direction or color.

    Example:
        >>> from adatsq.zoo.clips import make_clips
        >>> batch = make_clips(4)
        >>> scores = evaluate_clips(np.stack([c.video for c in batch]), [c.spec for c in batch])
        >>> scores.dynamic_degree, round(scores.motion_smoothness, 6)
        (1.0, 1.0)
    """
    clips = _as_clips(videos)  # (B, 3, F, H, W)
    b, _, n_frames, h, w = clips.shape
    if n_frames < 3:
        raise ValueError(f"need at least 3 frames per clip, got {n_frames}")
    _check_specs(specs, b)
    frames = clips.transpose(0, 2, 1, 3, 4).reshape(b * n_frames, 3, h, w)  # (B*F, 3, H, W)
    read = _read(frames, classifier or load_classifier(), features=True)
    corners, centroids, labels = read.corners, read.centroids, read.labels
    colors, detected, features = read.colors, read.detected, read.features

    # Per-frame DigitEval.
    digits = np.repeat([s.digit for s in specs], n_frames)
    wanted = np.repeat([s.color or "" for s in specs], n_frames)
    passed = (detected & (labels == digits) & ((wanted == "") | (colors == wanted)))
    frame_pass = passed.reshape(b, n_frames).mean(1)  # (B,)

    # Subject consistency, paired as in VBench: each frame t >= 1 against frame 0 and frame t-1.
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    unit = unit.reshape(b, n_frames, -1)  # (B, F, D)
    cosine = np.stack([(unit[:, :1] * unit[:, 1:]).sum(-1),
                       (unit[:, :-1] * unit[:, 1:]).sum(-1)], 1)  # (B, 2, F-1)

    # Background: pixels outside the located windows of both frames of a pair.
    clip_frames = frames.reshape(b, n_frames, 3, h, w)
    outside = ~_window_mask(corners, h, w).reshape(b, n_frames, h, w)
    to_first = _background_mae(clip_frames, outside, clip_frames[:, :1], outside[:, :1])
    to_previous = _background_mae(clip_frames, outside, clip_frames[:, :-1], outside[:, :-1])
    background = 1.0 - np.stack([to_first, to_previous], 1)  # (B, 2, F-1)

    # Motion: the ink centroid track.
    track = centroids.reshape(b, n_frames, 2)  # (B, F, 2) as (row, col)
    miss = np.linalg.norm(track[:, 1:-1] - (track[:, :-2] + track[:, 2:]) / 2, axis=-1)
    smoothness = np.clip(1.0 - miss.mean(1) / STEP, 0.0, None)  # (B,)
    heading = np.array([DIRECTIONS[s.direction] for s in specs], np.float64)  # (B, 2)
    displacement = track[:, -1] - track[:, 0]  # (B, 2)
    along = (displacement * heading).sum(1)  # (B,)
    across = np.abs(displacement[:, 0] * heading[:, 1] - displacement[:, 1] * heading[:, 0])
    moves = (along >= (n_frames - 1) * STEP / 2) & (along > across)  # (B,)

    per_clip_total = (frame_pass + moves) / 2  # (B,)
    return VideoScores(
        per_frame=float(frame_pass.mean()),
        clip_accuracy=float((frame_pass >= CLIP_PASS_FRACTION).mean()),
        subject_consistency=float(cosine.mean()),
        background_consistency=float(background.mean()),
        motion_smoothness=float(smoothness.mean()),
        dynamic_degree=float(moves.mean()),
        temporal_flicker=float(1.0 - to_previous.mean()),
        total=float(per_clip_total.mean()),
        total_se=float(per_clip_total.std(ddof=1) / np.sqrt(b)) if b > 1 else float("nan"),
        per_clip_total=tuple(float(t) for t in per_clip_total),
    )


def clip_fidelity(videos: torch.Tensor | np.ndarray,
                  fp_videos: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Frame-wise PSNR and SSIM of clips against the full-precision model's clips: the means
    over clips of :func:`clip_fidelity_per_clip` (every clip has as many frames).

    Example:
        >>> x = np.zeros((2, 3, 8, 16, 16))
        >>> clip_fidelity(x, x)
        {'psnr': 100.0, 'ssim': 1.0}
    """
    return {k: float(v.mean()) for k, v in clip_fidelity_per_clip(videos, fp_videos).items()}


def clip_fidelity_per_clip(videos: torch.Tensor | np.ndarray,
                           fp_videos: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Frame-wise PSNR and SSIM of clips against the full-precision model's clips.

    Each clip (B, 3, F, H, W) is unfolded into its frames (B F, 3, H, W) and scored by
    :func:`adatsq.eval.fidelity.psnr` and :func:`adatsq.eval.fidelity.ssim` (identical frames
    reach PSNR's cap of 100 dB).

    Args:
        videos: clips (B, 3, F, 16, 16) in [-1, 1], torch or numpy.
        fp_videos: the reference clips, same shape.

    Returns:
        ``{"psnr": (B,), "ssim": (B,)}``: every clip's mean over its frames.

    Raises:
        ValueError: on a wrong shape, differing shapes or NaN/inf values.
    """
    clips, reference = _as_clips(videos), _as_clips(fp_videos, "fp_videos")
    if clips.shape != reference.shape:
        raise ValueError(f"videos {clips.shape} and fp_videos {reference.shape} differ in shape")
    b, c, f, h, w = clips.shape

    def unfold(x: np.ndarray) -> np.ndarray:
        """(B, 3, F, H, W) in [0, 1] -> frames (B F, 3, H, W) in [-1, 1], fidelity's range."""
        return x.transpose(0, 2, 1, 3, 4).reshape(b * f, c, h, w) * 2.0 - 1.0

    frames, fp_frames = unfold(clips), unfold(reference)
    return {"psnr": fidelity.psnr_per_image(frames, fp_frames).reshape(b, f).mean(1),
            "ssim": fidelity.ssim_per_image(frames, fp_frames).reshape(b, f).mean(1)}
