import numpy as np
import pytest

from adatsq.zoo import clips


def _ink_box(frame: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the 8x8 window holding the most ink of a (3, 16, 16) frame."""
    ink = (frame.max(0) + 1) / 2
    sums = {(r, c): ink[r:r + 8, c:c + 8].sum() for r in range(9) for c in range(9)}
    return max(sums, key=sums.get)


@pytest.mark.parametrize("direction", list(clips.DIRECTIONS))
def test_the_digit_moves_one_pixel_per_frame_in_the_asked_direction(direction):
    rng = np.random.default_rng(0)
    spec = clips.ClipSpec(3, "red", direction)
    video = clips.render_clip(rng, spec, "held_out")
    assert video.shape == (3, clips.FRAMES, 16, 16)
    assert video.min() >= -1 and video.max() <= 1
    dr, dc = clips.DIRECTIONS[direction]
    first = video[:, 0]
    r0, c0 = _ink_box(first)
    for f in range(1, clips.FRAMES):
        shifted = np.roll(first, (dr * f, dc * f), axis=(1, 2))
        np.testing.assert_array_equal(video[:, f], shifted)  # the whole digit stays on canvas
        assert _ink_box(video[:, f]) == (r0 + dr * f, c0 + dc * f)


def test_colour_follows_the_prompt():
    rng = np.random.default_rng(1)
    red = clips.render_clip(rng, clips.ClipSpec(5, "red", "up"), "held_out")
    rgb = (red + 1) / 2
    assert rgb[0].sum() > 5 * rgb[1].sum()  # red ink, little green
    white = clips.render_clip(rng, clips.ClipSpec(5, None, "up"), "held_out")
    np.testing.assert_array_equal(white[0], white[1])


def test_clips_are_deterministic_prefix_stable_and_in_the_grammar():
    a, b = clips.make_clips(6), clips.make_clips(10)
    assert [c.prompt for c in a] == [c.prompt for c in b[:6]]
    assert all(np.array_equal(x.video, y.video) for x, y in zip(a, b))
    grammar = set(clips.all_clip_prompts())
    assert len(grammar) == 10 * 7 * 4
    assert all(c.prompt in grammar and c.prompt == clips.prompt_of(c.spec) for c in b)


def test_calibration_prompts_are_disjoint_from_evaluation():
    calib = clips.calibration_clip_specs(40, seed=1)
    evaluation = {c.prompt for c in clips.make_clips(clips.MAX_EVAL)}
    assert len({p for p, _ in calib}) == 40 and not {p for p, _ in calib} & evaluation
    assert all(clips.prompt_of(spec) == p for p, spec in calib)
    with pytest.raises(ValueError, match="only"):
        clips.calibration_clip_specs(10_000)


def test_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="unknown direction"):
        clips.render_clip(np.random.default_rng(0), clips.ClipSpec(1, None, "sideways"))
