"""Video evaluation: the digit locator, per-frame DigitEval, the VBench dimensions, fidelity."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from adatsq.eval import classifier as clf
from adatsq.eval import video as vi
from adatsq.eval.digiteval import ink
from adatsq.zoo import scenes
from adatsq.zoo.clips import FRAMES, ClipSpec, make_clips


@pytest.fixture(scope="module")
def real():
    """40 held-out clips (40, 3, FRAMES, 16, 16) and their specs."""
    batch = make_clips(40)
    return np.stack([c.video for c in batch]), [c.spec for c in batch]


@pytest.fixture(scope="module")
def real_scores(real):
    return vi.evaluate_clips(*real)


def test_locator_finds_digits_at_any_offset_and_keeps_classifier_accuracy():
    images, labels = scenes.digit_split("held_out")
    rng = np.random.default_rng(0)
    corners_true = rng.integers(0, scenes.CANVAS - scenes.SLOT + 1, (len(labels), 2))
    frames = np.zeros((len(labels), 3, scenes.CANVAS, scenes.CANVAS))
    for i, (r, c) in enumerate(corners_true):
        frames[i, :, r:r + 8, c:c + 8] = images[i]
    corners, centroids = vi.locate(frames)
    assert np.abs(corners - corners_true).max() <= 1
    # Centroids are exact: the whole digit is inside the located window.
    mass = np.clip(ink(frames[:20]) - 0.2, 0, None)
    expected = np.stack([(mass * g).sum((1, 2)) / mass.sum((1, 2)) for g in np.indices((16, 16))],
                        1)
    np.testing.assert_allclose(centroids[:20], expected, atol=1e-9)
    model = clf.load_classifier()
    located = clf.accuracy(model, ink(vi._crops(frames, corners)), labels)
    assert located >= clf.accuracy(model, images, labels) - 0.005  # 0.9917 both


def test_real_clips_score_high(real_scores):
    s = real_scores
    assert s.per_frame >= 0.9  # measured 0.975 (one hard 8 read as a 5)
    assert s.clip_accuracy >= 0.9  # 0.975
    assert s.dynamic_degree == 1.0
    assert s.motion_smoothness >= 0.999  # 1 up to round-off
    assert s.subject_consistency >= 0.999  # rigid translation: identical crops
    assert s.background_consistency == 1.0 and s.temporal_flicker == 1.0
    assert s.total == pytest.approx((s.per_frame + s.dynamic_degree) / 2)
    assert 0.0 < s.total_se <= 0.02  # measured 0.0125: one clip of 40 misses its digit


def test_torch_input_matches_numpy(real, real_scores):
    videos, specs = real
    assert vi.evaluate_clips(torch.from_numpy(videos), specs) == real_scores
    assert np.isnan(vi.evaluate_clips(videos[:1], specs[:1]).total_se)  # no spread from one clip


def test_frozen_clip_does_not_move(real):
    videos, specs = real
    frozen = vi.evaluate_clips(np.repeat(videos[:, :, :1], FRAMES, axis=2), specs)
    assert frozen.dynamic_degree == 0.0
    assert frozen.per_frame >= 0.9  # still the right digit
    assert frozen.motion_smoothness == 1.0  # static is smooth, as in VBench


def test_reversed_clip_moves_the_wrong_way(real):
    videos, specs = real
    reversed_ = vi.evaluate_clips(videos[:, :, ::-1], specs)
    assert reversed_.dynamic_degree == 0.0
    assert reversed_.motion_smoothness >= 0.999


def test_perpendicular_motion_fails_the_direction(real):
    videos, specs = real
    turned = {"left": "up", "up": "right", "right": "down", "down": "left"}
    wrong = [dataclasses.replace(s, direction=turned[s.direction]) for s in specs]
    assert vi.evaluate_clips(videos, wrong).dynamic_degree == 0.0


def test_shuffled_frames_are_not_smooth(real, real_scores):
    videos, specs = real
    order = np.random.default_rng(1).permutation(FRAMES)
    shuffled = vi.evaluate_clips(videos[:, :, order], specs)
    assert shuffled.motion_smoothness <= real_scores.motion_smoothness - 0.5
    assert shuffled.per_frame == real_scores.per_frame


def test_noise_clips_score_low(real):
    videos, specs = real
    noise = np.random.default_rng(2).uniform(-1, 1, videos.shape)
    s = vi.evaluate_clips(noise, specs)
    assert s.per_frame <= 0.3  # measured 0.10: chance
    assert s.total <= 0.3
    assert s.background_consistency <= 0.8 and s.temporal_flicker <= 0.8  # 0.67 both


def test_wrong_digit_or_color_fails_and_uncolored_prompt_accepts_any_color(real):
    videos, specs = real
    colored = [i for i, s in enumerate(specs) if s.color is not None]
    v = videos[colored]
    other = {c: d for c, d in zip(scenes.PALETTE, list(scenes.PALETTE)[1:] + ["red"])}
    wrong_color = [dataclasses.replace(specs[i], color=other[specs[i].color]) for i in colored]
    wrong_digit = [dataclasses.replace(specs[i], digit=(specs[i].digit + 1) % 10)
                   for i in colored]
    any_color = [dataclasses.replace(specs[i], color=None) for i in colored]
    right = vi.evaluate_clips(v, [specs[i] for i in colored]).per_frame
    assert right >= 0.9
    assert vi.evaluate_clips(v, wrong_color).per_frame == 0.0
    assert vi.evaluate_clips(v, wrong_digit).per_frame <= 0.1
    assert vi.evaluate_clips(v, any_color).per_frame == right


def test_clip_accuracy_needs_three_quarters_of_the_frames(real):
    videos, specs = real
    ok = range(4)
    blanked = videos[:4].copy()
    blanked[0, :, :2] = -1.0  # 6/8 frames left: passes
    blanked[1, :, :3] = -1.0  # 5/8: fails
    s = vi.evaluate_clips(blanked, [specs[i] for i in ok])
    base = vi.evaluate_clips(videos[:4], [specs[i] for i in ok])
    assert base.clip_accuracy == 1.0
    assert s.clip_accuracy == 0.75
    assert s.per_frame == pytest.approx(1.0 - 5 / 32)


def test_flickering_background_and_changing_subject_lower_consistency(real, real_scores):
    videos, specs = real
    flicker = videos.copy()
    flicker[:, :, 1::2] = np.where(flicker[:, :, 1::2] < -0.99, -0.6, flicker[:, :, 1::2])
    s = vi.evaluate_clips(flicker, specs)
    assert s.temporal_flicker == pytest.approx(0.8, abs=1e-6)  # 0.2 jump on every pair
    # against frame 0 the odd frames (4 of 7) differ by 0.2, against the previous frame all do
    assert s.background_consistency == pytest.approx(1 - (0.2 * 4 / 7 + 0.2) / 2, abs=1e-6)
    assert s.dynamic_degree == 1.0 and s.motion_smoothness >= 0.999  # the locator is unmoved
    swapped = videos.copy()
    swapped[:, :, FRAMES // 2:] = np.roll(videos, 1, axis=0)[:, :, FRAMES // 2:]
    assert vi.evaluate_clips(swapped, specs).subject_consistency <= 0.9  # measured 0.80


def test_to_dict_is_json_floats(real_scores):
    data = real_scores.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(vi.VideoScores)} - {"per_clip_total"}
    per_clip = real_scores.per_clip_total
    assert len(per_clip) > 1 and np.mean(per_clip) == pytest.approx(real_scores.total)
    assert all(type(v) is float for v in data.values())
    assert json.loads(json.dumps(data)) == data


def test_clip_fidelity_identity_and_noise(real):
    videos = real[0][:10]
    same = vi.clip_fidelity(videos, torch.from_numpy(videos))
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    prev = same
    for std in (0.03, 0.1, 0.3):
        noisy = vi.clip_fidelity(videos + rng.normal(0, std, videos.shape), videos)
        assert noisy["psnr"] < prev["psnr"] and noisy["ssim"] < prev["ssim"]
        prev = noisy
    assert prev["psnr"] < 25.0


def test_clip_fidelity_is_frame_wise(real):
    from adatsq.eval import fidelity

    videos = real[0][:3]
    noisy = videos + np.random.default_rng(4).normal(0, 0.1, videos.shape)
    def frames(x):
        return x.transpose(0, 2, 1, 3, 4).reshape(-1, 3, 16, 16)

    result = vi.clip_fidelity(noisy, videos)
    clipped = np.clip(frames(noisy), -1, 1)
    assert result["psnr"] == pytest.approx(fidelity.psnr(clipped, frames(videos)), rel=1e-12)
    assert result["ssim"] == pytest.approx(fidelity.ssim(clipped, frames(videos)), rel=1e-12)


@pytest.mark.parametrize("videos, n_specs, match", [
    (np.zeros((2, 3, 16, 16)), 2, "must be"),
    (np.zeros((2, 1, FRAMES, 16, 16)), 2, "must be"),
    (np.zeros((2, 3, FRAMES, 12, 12)), 2, "must be"),
    (np.zeros((2, 3, 2, 16, 16)), 2, "at least 3 frames"),
    (np.zeros((2, 3, FRAMES, 16, 16)), 3, "2 clips but 3 specs"),
    (np.full((2, 3, FRAMES, 16, 16), np.nan), 2, "NaN"),
])
def test_bad_inputs_raise(videos, n_specs, match):
    specs = [ClipSpec(1, None, "left")] * n_specs
    with pytest.raises(ValueError, match=match):
        vi.evaluate_clips(videos, specs)


def test_bad_specs_and_fidelity_shapes_raise():
    clip = np.zeros((1, 3, FRAMES, 16, 16))
    with pytest.raises(ValueError, match="direction"):
        vi.evaluate_clips(clip, [ClipSpec(1, None, "sideways")])
    with pytest.raises(ValueError, match="color"):
        vi.evaluate_clips(clip, [ClipSpec(1, "teal", "left")])
    with pytest.raises(ValueError, match="differ in shape"):
        vi.clip_fidelity(clip, np.zeros((2, 3, FRAMES, 16, 16)))
    with pytest.raises(ValueError, match="must be"):
        vi.clip_fidelity(clip[0], clip[0])


def test_clip_faithfulness_agrees_with_itself_and_drops_with_drift(real):
    videos = real[0][:6]
    np.testing.assert_array_equal(vi.clip_faithfulness(videos, videos), np.ones(6))
    blank = np.full_like(videos, -1.0)
    np.testing.assert_array_equal(vi.clip_faithfulness(blank, videos), np.zeros(6))
    # the same clips 3 px further down: every frame's digit detected elsewhere
    shifted = np.roll(videos, 3, axis=3)
    shifted[:, :, :, :3] = -1.0
    assert vi.clip_faithfulness(shifted, videos).max() < 0.5
    # one pixel is within the position tolerance
    nudged = np.roll(videos, 1, axis=3)
    nudged[:, :, :, :1] = -1.0
    assert vi.clip_faithfulness(nudged, videos).mean() > 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        vi.clip_faithfulness(videos, videos[:2])
