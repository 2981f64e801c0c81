"""DigitEval: the shipped classifier, the slot detector, GenEval's rules and the real ceiling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adatsq.eval import classifier as clf
from adatsq.eval import digiteval as de
from adatsq.zoo import scenes


def _det(digit, row, col, color="white", confidence=0.99):
    half = scenes.SLOT / 2
    return de.Detection(digit, color, row, col, col * scenes.SLOT + half,
                        row * scenes.SLOT + half, confidence)


def _canvas(objects):
    """Scene image from (held-out digit index, color, (row, col)) triples."""
    images, _ = scenes.digit_split("held_out")
    canvas = np.zeros((3, scenes.CANVAS, scenes.CANVAS), np.float32)
    for index, color, (row, col) in objects:
        rgb = np.asarray(scenes.ALL_COLORS[color], np.float32)[:, None, None] * images[index]
        canvas[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = rgb
    return canvas * 2 - 1


@pytest.fixture(scope="module")
def real_position_scenes():
    return scenes.make_scenes(60, seed=3, categories=("position",))


def test_shipped_classifier_reaches_95_percent_on_held_out_digits():
    model = clf.load_classifier()
    held_out = clf.accuracy(model, *scenes.digit_split("held_out"))
    assert held_out >= 0.95
    card = json.loads(clf.WEIGHTS_PATH.with_suffix(".json").read_text())
    assert card["held_out_accuracy"] == pytest.approx(held_out, abs=1e-9)
    assert card["config"] == model.config.to_dict()


def test_load_classifier_reports_missing_and_corrupt_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m adatsq.eval.classifier"):
        clf.load_classifier(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    bad.with_suffix(".json").write_text(clf.WEIGHTS_PATH.with_suffix(".json").read_text())
    with pytest.raises(RuntimeError, match="corrupt"):
        clf.load_classifier(bad)


def test_classifier_config_validates_and_round_trips():
    config = clf.ClassifierConfig(seed=7)
    assert clf.ClassifierConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError):
        clf.ClassifierConfig(lr=0.0)
    with pytest.raises(ValueError, match="unknown"):
        clf.ClassifierConfig.from_dict({"depth": 3})


def test_occupancy_threshold_separates_digits_from_empty_and_noisy_slots():
    images, _ = scenes.digit_split("held_out")
    mass = np.clip(images - de.INK_FLOOR, 0, None).sum((1, 2))
    assert mass.min() > 2 * de.INK_THRESHOLD
    noise = np.random.default_rng(0).normal(0, 0.2, (64, 3, 16, 16))
    assert all(de.detect(-1 + n) == [] for n in noise)


def test_detect_reads_digit_color_and_slot():
    _, labels = scenes.digit_split("held_out")
    first = {d: int(np.flatnonzero(labels == d)[0]) for d in (2, 7)}
    image = _canvas([(first[2], "orange", (0, 1)), (first[7], "white", (1, 0))])
    dets = de.detect(image)
    assert [(d.digit, d.color, d.row, d.col, d.x, d.y) for d in dets] == [
        (2, "orange", 0, 1, 12.0, 4.0), (7, "white", 1, 0, 4.0, 12.0)]
    assert de.detect(torch.from_numpy(image)) == dets


def test_colors_of_real_digits_are_read_exactly():
    for k, color in enumerate(scenes.ALL_COLORS):
        dets = de.detect(_canvas([(k, color, (1, 1))]))
        assert [d.color for d in dets] == [color]


def test_single_and_two_object_rules():
    one = scenes.Spec("single_object", ((3, 1, None),))
    assert de.score(one, [_det(3, 0, 0)])
    assert not de.score(one, [_det(4, 0, 0)])
    two = scenes.Spec("two_object", ((3, 1, None), (8, 1, None)))
    assert de.score(two, [_det(8, 1, 1), _det(3, 0, 0)])
    assert not de.score(two, [_det(3, 0, 0), _det(3, 1, 1)])


def test_counting_rule_requires_count_and_excludes_more():
    spec = scenes.Spec("counting", ((5, 3, None),), exclude=((5, 4),))
    assert de.score(spec, [_det(5, 0, 0), _det(5, 0, 1), _det(5, 1, 0), _det(1, 1, 1)])
    assert not de.score(spec, [_det(5, 0, 0), _det(5, 0, 1)])
    assert not de.score(spec, [_det(5, r, c) for r in range(2) for c in range(2)])


def test_color_rules_check_the_most_confident_detections():
    spec = scenes.Spec("colors", ((6, 1, "red"),))
    assert de.score(spec, [_det(6, 0, 0, "red")])
    assert not de.score(spec, [_det(6, 0, 0, "orange")])
    assert not de.score(spec, [_det(6, 0, 0, "white")])
    # GenEval keeps the `count` most confident detections of a class and checks only those.
    assert de.score(spec, [_det(6, 0, 0, "blue", 0.5), _det(6, 1, 1, "red", 0.9)])
    assert not de.score(spec, [_det(6, 0, 0, "blue", 0.9), _det(6, 1, 1, "red", 0.5)])
    attr = scenes.Spec("color_attr", ((1, 1, "green"), (2, 1, "purple")))
    assert de.score(attr, [_det(1, 0, 0, "green"), _det(2, 0, 1, "purple")])
    assert not de.score(attr, [_det(1, 0, 0, "purple"), _det(2, 0, 1, "green")])


@pytest.mark.parametrize("relation", list(scenes.RELATIONS))
def test_position_rules(relation):
    spec = scenes.Spec("position", ((4, 1, None), (9, 1, None)), relation=(4, relation, 9))
    for subject_slot, reference_slot in scenes.RELATIONS[relation]:
        assert de.score(spec, [_det(4, *subject_slot), _det(9, *reference_slot)])
        assert not de.score(spec, [_det(4, *reference_slot), _det(9, *subject_slot)])
    assert not de.score(spec, [_det(4, 0, 0)])


def test_relative_position_follows_geneval_on_diagonals():
    assert de.relative_position(_det(1, 0, 0), _det(2, 1, 1)) == {"to the left of", "above"}
    assert de.relative_position(_det(1, 1, 0), _det(2, 1, 0)) == set()


def test_empty_canvas_scores_zero():
    batch = scenes.make_scenes(5, seed=0)
    empty = np.full((len(batch), 3, 16, 16), -1.0)
    assert de.detect(empty[0]) == []
    result = de.evaluate(empty, [s.spec for s in batch])
    assert result.total == 0.0 and not any(result.correct)


def test_noise_scores_low():
    batch = scenes.make_scenes(30, seed=0)
    specs = [s.spec for s in batch]
    rng = np.random.default_rng(0)
    shape = (len(batch), 3, 16, 16)
    assert de.evaluate(rng.uniform(-1, 1, shape), specs).total < 0.2
    assert de.evaluate(rng.normal(0, 1, shape).clip(-1, 1), specs).total < 0.2


def test_swapping_the_digits_fails_the_position_prompt(real_position_scenes):
    images = np.stack([s.image for s in real_position_scenes])
    specs = [s.spec for s in real_position_scenes]
    swapped = images.copy()
    for image in swapped:
        blocks = [(r, c) for r in range(2) for c in range(2)
                  if image[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].max() > -1]
        assert len(blocks) == 2
        (r0, c0), (r1, c1) = blocks
        a = image[:, r0 * 8:(r0 + 1) * 8, c0 * 8:(c0 + 1) * 8].copy()
        image[:, r0 * 8:(r0 + 1) * 8, c0 * 8:(c0 + 1) * 8] = image[:, r1 * 8:(r1 + 1) * 8,
                                                                   c1 * 8:(c1 + 1) * 8]
        image[:, r1 * 8:(r1 + 1) * 8, c1 * 8:(c1 + 1) * 8] = a
    before = de.evaluate(images, specs).correct
    after = de.evaluate(swapped, specs).correct
    assert sum(before) >= 0.9 * len(specs)
    assert not any(after)


def test_ceiling_on_real_held_out_scenes():
    result = de.ceiling(100, seed=0)
    assert set(result.category_scores) == set(scenes.CATEGORIES)
    assert result.total >= 0.90
    assert min(result.category_scores.values()) >= 0.85
    expected_se = np.sqrt(sum(p * (1 - p) / 100 for p in result.category_scores.values())) / 6
    assert result.total_se == pytest.approx(expected_se)
    assert result.total == pytest.approx(np.mean(list(result.category_scores.values())))
    assert len(result.correct) == 600


def test_evaluate_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        de.evaluate(np.zeros((2, 3, 16, 16)), [scenes.Spec("single_object", ((1, 1, None),))])
    with pytest.raises(ValueError):
        de.detect(np.zeros((3, 8, 8)))


def test_faithfulness_counts_the_slots_that_show_what_the_reference_shows():
    reference = _canvas([(0, "red", (0, 0)), (1, "blue", (1, 1))])
    found = {(d.row, d.col): (d.digit, d.color) for d in de.detect(reference)}
    assert set(found) == {(0, 0), (1, 1)}  # the detector reads both digits
    blanked = reference.copy()
    blanked[:, 8:, 8:] = -1.0  # the bottom-right digit gone
    recolored = _canvas([(0, "green", (0, 0)), (1, "blue", (1, 1))])
    moved = _canvas([(0, "red", (0, 1)), (1, "blue", (1, 1))])
    images = np.stack([reference, blanked, recolored, moved])
    out = de.faithfulness(images, np.stack([reference] * 4))
    assert out.dtype == np.float64 and out.shape == (4,)
    # the same; one slot emptied; one digit in another color; one digit in another slot (2 slots)
    np.testing.assert_array_equal(out, [1.0, 0.75, 0.75, 0.5])
    # symmetric, and one-line errors on mismatched shapes
    np.testing.assert_array_equal(de.faithfulness(np.stack([reference] * 4), images), out)
    with pytest.raises(ValueError, match="differ in shape"):
        de.faithfulness(images, images[:2])


def test_faithfulness_sees_what_the_prompt_rule_does_not():
    """Two samples that both pass a one-digit prompt but draw it elsewhere: DigitEval gives both
    1, faithfulness to the first gives the second 0.5."""
    first, second = _canvas([(0, "white", (0, 0))]), _canvas([(0, "white", (1, 0))])
    digit = de.detect(first)[0].digit
    spec = scenes.Spec("single_object", ((digit, 1, None),))
    assert de.evaluate(np.stack([first, second]), [spec, spec]).correct == (True, True)
    assert de.faithfulness(second[None], first[None]).tolist() == [0.5]
