import numpy as np
import pytest
import torch

from adatsq.zoo import scenes
from adatsq.zoo.text import MiniLMEncoder


def test_scenes_are_deterministic_and_prefix_stable():
    a = scenes.make_scenes(5, seed=3)
    b = scenes.make_scenes(5, seed=3)
    c = scenes.make_scenes(8, seed=3)
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    for k, cat in enumerate(scenes.CATEGORIES):
        assert [s.prompt for s in a[k * 5:(k + 1) * 5]] == [s.prompt for s in c[k * 8:k * 8 + 5]]
        assert {s.spec.category for s in a[k * 5:(k + 1) * 5]} == {cat}


def test_every_sampled_prompt_is_in_the_grammar():
    grammar = set(scenes.all_prompts())
    rng = np.random.default_rng(0)
    for cat in scenes.CATEGORIES:
        for _ in range(100):
            prompt, _ = scenes.sample_spec(rng, cat)
            assert prompt in grammar


def test_digit_split_is_disjoint_and_covers_all():
    tr, _ = scenes.digit_split("train")
    ho, _ = scenes.digit_split("held_out")
    assert len(tr) + len(ho) == 1797
    flat_tr = {x.tobytes() for x in tr}
    assert sum(x.tobytes() in flat_tr for x in ho) < 5  # sklearn digits hold a few duplicates


def test_calibration_prompts_are_disjoint_from_evaluation():
    calib = scenes.calibration_prompts(64, seed=1)
    evaluation = {s.prompt for s in scenes.make_scenes(scenes.MAX_EVAL_PER_CATEGORY)}
    assert len(calib) == 64 and not set(calib) & evaluation


def test_rendered_scene_matches_its_spec():
    rng = np.random.default_rng(0)
    prompt, spec = scenes.sample_spec(rng, "position")
    image = scenes.render(rng, spec, "held_out")
    assert image.shape == (3, 16, 16) and image.min() >= -1 and image.max() <= 1
    ink = (image.max(0) + 1) / 2
    occupied = [ink[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].sum() > 3 for r in (0, 1) for c in (0, 1)]
    assert sum(occupied) == 2


def test_unknown_category_is_refused():
    with pytest.raises(ValueError, match="unknown category"):
        scenes.sample_spec(np.random.default_rng(0), "texture")


def test_minilm_token_states_separate_attribute_swaps():
    enc = MiniLMEncoder(10)
    states, pooled = enc(["a red 3 and a blue 7", "a blue 3 and a red 7", ""])
    assert states.shape == (3, 10, 384) and pooled.shape == (3, 384)
    cos_pooled = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0)
    diff_tokens = (states[0] - states[1]).norm() / states[0].norm()
    assert cos_pooled > 0.9  # the pooled vector barely tells the swap apart ...
    assert diff_tokens > 0.3  # ... the per-token states do
    assert torch.all(states[2, 2:] == 0)  # padding zeroed
