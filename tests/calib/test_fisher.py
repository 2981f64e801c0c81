"""Fisher: Eq. 1 against a hand computation on a one-layer model (micro-batches included), and
resumability (steps an interrupted run finished are kept, the others recomputed to the same
values, every random number still drawn; a finished run samples nothing)."""

import numpy as np
import pytest
import torch
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


class _OneLayer:
    """The least a pipeline must offer :func:`fisher_information`: a one-layer float64 "transformer"
    ``v = x Wᵀ + b`` and fixed latents ``x0`` (B, N, C) as its generations. ``denoise`` records
    every call's input, so the test knows the noised latents and the micro-batches the estimator
    used without replaying its random numbers."""

    def __init__(self, x0: torch.Tensor):
        self.x0 = x0
        C = x0.shape[-1]
        self.transformer = torch.nn.Linear(C, C, dtype=torch.float64)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            self.transformer.weight.copy_(torch.randn(C, C, generator=gen, dtype=torch.float64))
            self.transformer.bias.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
        self.adapter = self
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    # pipeline
    def generate(self, prompts, seed, steps, first=0):
        return self.x0[first:first + len(prompts)]

    def to_latents(self, images):
        return images

    def encode(self, prompts):
        return {}

    # adapter
    def quantizable_layers(self, model):
        return {"proj": model}

    def denoise(self, model, latents, cond, sigma):
        self.calls.append((latents.detach().clone(), sigma.detach().clone()))
        return model(latents)


@pytest.mark.parametrize("target", ["velocity", "x0"])
@pytest.mark.parametrize("micro_batch", [1, 2, 3])
def test_fisher_of_one_layer_equals_per_sample_autograd(target, micro_batch):
    """Eq. 1 by hand: per-sample gradients of the per-sample loss by autograd in float64, summed
    within each micro-batch of size m, ``sum_k ||sum_{i in k} g_i||^2 / B`` (the documented
    ``m ||mean g||^2`` averaged over micro-batches; 5 samples, so the last micro-batch is short).
    A wrong sign of the target (``x0 - eps``), a missing micro-batch weight or a loss on the
    wrong residual all change the value by O(1)."""
    B, N, C = 5, 4, 3
    gen = torch.Generator().manual_seed(0)
    x0 = 3.0 * torch.randn(B, N, C, generator=gen, dtype=torch.float64) + 2.0  # not noise-like
    pipe = _OneLayer(x0)
    sigmas = torch.tensor([0.75, 0.5, 0.25])  # exact in float32
    result = fisher_information(pipe, ["p"] * B, steps=3, seed=0, micro_batch=micro_batch,
                                progress=False, sigmas=sigmas, target=target)
    assert result.layers == ["proj"] and result.scores.shape == (1, 3)
    np.testing.assert_array_equal(result.sigmas, sigmas.numpy())
    # the recorded calls: 3 steps, each over the micro-batches 0:m, m:2m, ... in order
    bounds = [(i, min(i + micro_batch, B)) for i in range(0, B, micro_batch)]
    assert [len(x) for x, _ in pipe.calls] == [j - i for i, j in bounds] * 3
    W = pipe.transformer.weight.detach().clone().requires_grad_(True)
    b = pipe.transformer.bias.detach()
    expected = np.zeros(3)
    noise = []
    for t, s in enumerate(sigmas.tolist()):
        for (i, j), (xt, sig) in zip(bounds, pipe.calls[t * len(bounds):(t + 1) * len(bounds)]):
            assert torch.equal(sig, torch.full((j - i,), s))
            summed = torch.zeros_like(W)
            for k in range(i, j):
                x, xk = x0[k], xt[k - i]  # (N, C)
                eps = (xk - (1 - s) * x) / s  # the noise the estimator drew for sample k
                noise.append(eps)
                v = xk @ W.T + b
                if target == "velocity":
                    loss = (v - (eps - x)).square().mean()
                else:
                    loss = (xk - s * v - x).square().mean()
                (g,) = torch.autograd.grad(loss, W)
                summed += g
            expected[t] += float(summed.square().sum()) / B
    noise = torch.stack(noise)  # x_t = (1 - sigma) x0 + sigma eps with eps ~ N(0, I)
    assert abs(float(noise.mean())) < 0.3 and abs(float(noise.std()) - 1) < 0.3
    np.testing.assert_allclose(result.scores[0], expected, rtol=1e-12)
