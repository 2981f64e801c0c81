"""Fisher resumability: steps an interrupted run finished are kept, the others recomputed to the
same values (every random number still drawn), and a finished run samples nothing."""

import numpy as np
import pytest
from tests.conftest import PROMPTS

from adatsq.calib.fisher import fisher_information


@pytest.mark.parametrize("target", ["velocity", "output"])
def test_resumed_fisher_equals_the_uninterrupted_one(calibrated, target, monkeypatch):
    pipe, _ = calibrated
    steps = []
    full = fisher_information(pipe, PROMPTS[:2], steps=4, seed=3, progress=False, target=target,
                              on_step=lambda t, column: steps.append((t, column)))
    assert [t for t, _ in steps] == [0, 1, 2, 3]
    assert np.array_equal(np.array([c for _, c in steps]).T, full.scores)
    done = {0: steps[0][1], 2: steps[2][1]}  # as if killed after steps 0 and 2 were saved
    seen = []
    resumed = fisher_information(pipe, PROMPTS[:2], steps=4, seed=3, progress=False,
                                 target=target, done=done,
                                 on_step=lambda t, column: seen.append(t))
    assert seen == [1, 3] and np.array_equal(resumed.scores, full.scores)
    monkeypatch.setattr(pipe, "generate", lambda *a, **k: pytest.fail("sampled again"))
    finished = fisher_information(pipe, PROMPTS[:2], steps=4, seed=3, progress=False,
                                  target=target, done=dict(steps))
    assert np.array_equal(finished.scores, full.scores) and finished.layers == full.layers
