import pytest
import torch
from torch import nn

from adatsq.config import WeightSpec
from adatsq.quant.qlinear import ActivationQuant, QuantLinear, StepTracker, cache_weights_


def _linear():
    """A linear layer whose weights FP16 holds exactly (the storage of a quantized layer)."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(p.half().float())
    return lin


def test_full_precision_is_exact():
    lin = _linear()
    q = QuantLinear.from_linear(lin, WeightSpec(bits=16), ActivationQuant(16), None)
    x = torch.randn(3, 5, 32)
    assert torch.equal(q(x), lin(x))


def test_w8a8_close_and_w3a3_worse():
    lin = _linear()
    x = torch.randn(4, 32)
    ref = lin(x)
    errs = {}
    for bits in (8, 4, 3):
        q = QuantLinear.from_linear(lin, WeightSpec(bits=bits), ActivationQuant(bits), None)
        errs[bits] = (q(x) - ref).pow(2).mean() / ref.pow(2).mean()
    assert errs[8] < 1e-3 < errs[4] < errs[3]


def test_per_step_bits_follow_the_timestep_value():
    lin = _linear()
    tracker = StepTracker(torch.tensor([1.0, 0.75, 0.5, 0.25]))
    act = ActivationQuant(bits=(16, 8, 3, 16))
    q = QuantLinear.from_linear(lin, WeightSpec(bits=16), act, tracker)
    x = torch.randn(2, 32)
    outs = {}
    for t, expected in [(1.0, 16), (0.74, 8), (0.51, 3), (0.24, 16)]:
        tracker.update(torch.tensor([t, t]))
        assert q.current_bits() == expected
        outs[expected] = q(x)
    assert torch.equal(outs[16], lin(x))
    assert (outs[3] - lin(x)).abs().max() > (outs[8] - lin(x)).abs().max()


def test_a_call_off_the_schedule_is_refused_only_where_bits_change_per_step():
    lin = _linear()
    tracker = StepTracker(torch.linspace(1000, 1000 / 3, 3))  # a 3-step policy
    per_step = QuantLinear.from_linear(lin, WeightSpec(bits=16), ActivationQuant((8, 4, 8)),
                                       tracker)
    uniform = QuantLinear.from_linear(lin, WeightSpec(bits=16), ActivationQuant(4), tracker)
    x = torch.randn(2, 32)
    tracker.update(torch.tensor(1000 * 2 / 3 + 2.0))  # BF16 rounding of a step's timestep
    per_step(x)
    for t in torch.linspace(1000, 250, 4)[1:]:  # a 4-step schedule
        tracker.update(t)
        with pytest.raises(ValueError, match="on none of the 3 steps"):
            per_step(x)
        uniform(x)  # the same bits at every step: any schedule is fine


def test_tracker_hook_reads_the_timestep_until_removed():
    tracker = StepTracker(torch.tensor([1.0, 0.5]))

    class Wrapper(nn.Module):
        def forward(self, x, timestep):
            return x

    w = Wrapper()
    handle = tracker.attach(w, lambda args, kwargs: kwargs.get("timestep", args[-1]))
    w(torch.zeros(1), timestep=torch.tensor([0.45]))
    assert tracker.index == 1
    w(torch.zeros(1), torch.tensor([0.95]))
    assert tracker.index == 0
    handle.remove()
    w(torch.zeros(1), timestep=torch.tensor([0.45]))
    assert tracker.index == 0  # detached


@pytest.mark.parametrize("bits", [3, 4])
def test_weights_stay_packed_and_the_state_is_what_is_stored(bits):
    """A W4 layer holds two codes per byte (W3: 3 bits each) and 16-bit scales, nothing else of
    the weight's size; from_state(layout, state_dict) rebuilds it exactly."""
    lin = _linear()
    q = QuantLinear.from_linear(lin, WeightSpec(bits=bits, group_size=16), ActivationQuant(8),
                                None)
    state = q.state_dict()
    assert set(state) == {"qweight", "scale", "zero", "bias"}
    assert state["qweight"].dtype == torch.uint8
    assert state["qweight"].numel() == 16 * 32 * bits // 8
    assert state["scale"].dtype == state["bias"].dtype == torch.float16
    again = QuantLinear.from_state(q.layout(), state, 8)
    x = torch.randn(3, 32)
    assert torch.equal(again(x), q(x))
    four = state["scale"].repeat(1, 2)  # (16, 4): groups of 8, not the layout's 16
    with pytest.raises(ValueError, match=r"scale of shape \(16, 4\)"):
        QuantLinear.from_state(q.layout(), {**state, "scale": four}, 8)
    with pytest.raises(ValueError, match="tensor zero is missing"):
        QuantLinear.from_state(q.layout(), {k: v for k, v in state.items() if k != "zero"}, 8)


def test_dtype_casts_keep_the_stored_floats_and_compute_follows_the_input():
    lin = _linear()
    q = QuantLinear.from_linear(lin, WeightSpec(bits=4), ActivationQuant(16), None)
    scale = q.scale.clone()
    model = nn.Sequential(q).to(torch.bfloat16)
    assert torch.equal(q.scale, scale) and q.scale.dtype == torch.float16
    x = torch.randn(2, 32)
    y = model(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), q(x), rtol=0.05, atol=0.05)
    model.float()
    assert q.scale.dtype == torch.float16


@pytest.mark.parametrize("execution, kept", [("simulated", "_cached"), ("integer", "_operand")])
def test_the_weight_cache_is_optional_and_exact(execution, kept):
    lin = _linear()
    q = QuantLinear.from_linear(lin, WeightSpec(bits=4), ActivationQuant(4), None)
    q.execution = execution
    x = torch.randn(2, 32)
    plain = q(x)
    assert getattr(q, kept) is None  # off by default: nothing of the weight's size is kept
    cache_weights_(q)
    assert torch.equal(q(x), plain) and getattr(q, kept) is not None
    cache_weights_(q, on=False)
    assert getattr(q, kept) is None and torch.equal(q(x), plain)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_large_uncached_weights_multiply_a_block_of_rows_at_a_time(bits, monkeypatch):
    from adatsq.quant import qlinear

    torch.manual_seed(0)
    lin = nn.Linear(64, 24, bias=True)
    q = QuantLinear.from_linear(lin, WeightSpec(bits=bits, group_size=16), ActivationQuant(8),
                                None)
    x = torch.randn(5, 7, 64)
    whole = q(x)
    assert q._blocks() is None  # small: one product
    monkeypatch.setattr(qlinear, "BLOCK", 256)  # now "large": blocks of 4 rows
    assert q._blocks() == [(r, r + 4) for r in range(0, 24, 4)]
    W = q.dequantized_weight()
    for r0, r1 in q._blocks():  # each block unpacks only its own codes, exactly
        assert torch.equal(q._weight_rows(r0, r1, torch.float32), W[r0:r1])
    torch.testing.assert_close(q(x), whole, rtol=1e-6, atol=1e-6)
    cache_weights_(q)  # the cache multiplies by the whole weight again
    assert q._blocks() is None and torch.equal(q(x), whole)
