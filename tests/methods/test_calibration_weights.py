"""AdaTSQ's calibration weights: the x0-target Fisher, step weights, the last step left out."""

import dataclasses

import numpy as np
import pytest
from tests.conftest import PROMPTS, fresh_copy

from adatsq.calib.fisher import fisher_information
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.pipeline import quantize_


def _recipe(**options):
    return Recipe(method="adatsq", weights=WeightSpec(bits=4), activations=ActivationSpec(bits=8),
                  options={"pareto": False, "fisher_prompts": 4, **options})


def test_x0_fisher_is_sigma_to_the_fourth_times_the_velocity_fisher(calibrated):
    """x0_hat - x0 = -sigma (v - (eps - x0)): the per-sample gradients scale by sigma^2."""
    pipe, _ = calibrated
    velocity = fisher_information(pipe, PROMPTS[:2], seed=0, progress=False)
    x0 = fisher_information(pipe, PROMPTS[:2], seed=0, progress=False, target="x0")
    expected = velocity.scores * velocity.sigmas[None, :] ** 4
    np.testing.assert_allclose(x0.scores, expected, rtol=1e-3)
    # the velocity Fisher weighs the last (least noisy) step most relative to x0's
    assert (velocity.normalized()[:, -1] > x0.normalized()[:, -1]).all()


def _alpha(calibrated, **options):
    pipe, stats = calibrated
    policy = quantize_(fresh_copy(pipe), _recipe(**options), progress=False,
                       stats=dataclasses.replace(stats, derived={}), execution="simulated")
    alpha = policy.settings.get("alpha")
    return None if alpha is None else np.array(list(alpha.values()))


def test_step_weights_and_the_last_step_switch_set_every_layers_alpha(calibrated):
    steps = calibrated[1].steps
    weights = np.arange(1.0, steps + 1)
    alpha = _alpha(calibrated, calib="steps", step_weights=tuple(weights), calib_last_step=True)
    np.testing.assert_allclose(alpha, np.tile(weights / weights.sum(), (len(alpha), 1)))
    dropped = _alpha(calibrated, calib="steps", step_weights=tuple(weights),
                     calib_last_step=False)
    assert (dropped[:, -1] == 0).all()
    np.testing.assert_allclose(dropped[:, :-1], alpha[:, :-1] / alpha[:, :-1].sum(1, keepdims=True))
    uniform = _alpha(calibrated, calib="uniform", calib_last_step=False)
    np.testing.assert_allclose(uniform, np.tile([1 / (steps - 1)] * (steps - 1) + [0.0],
                                                (len(uniform), 1)))
    # the plain average, GPTQ's
    assert _alpha(calibrated, calib="uniform", calib_last_step=True) is None
    fisher = _alpha(calibrated, calib="fisher", tau=1.0, mix=0.0, calib_last_step=False)
    assert (fisher[:, -1] == 0).all()
    np.testing.assert_allclose(fisher.sum(1), 1.0)


def test_step_weights_are_checked(calibrated):
    with pytest.raises(ValueError, match="step_weights given for"):
        _alpha(calibrated, calib="steps", step_weights=(1.0, 2.0, 3.0) * 7)
    for bad in [{"calib": "steps"}, {"step_weights": (1.0,)},
                {"calib": "steps", "step_weights": (1.0, -1.0)},
                {"calib": "steps", "step_weights": (0.0, 0.0)}]:
        with pytest.raises(ValueError, match="step_weights") as info:
            _recipe(**bad).options  # noqa: B018
        assert "\n" not in str(info.value)
