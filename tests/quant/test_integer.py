"""The integer path: exact operands and corrections, the factored rotation, and agreement with the
simulated reference it replaces."""

import itertools

import pytest
import torch
from torch import nn

from adatsq.config import WeightSpec
from adatsq.quant import integer
from adatsq.quant.primitives import pack_codes, quantize_activation
from adatsq.quant.qlinear import ActivationQuant, QuantLinear, StepTracker, cache_weights_
from adatsq.quant.rotation import hadamard_matrix, random_signs, rotate


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_weight_operand_is_the_centred_codes_in_packed_column_order(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2**bits, (5, 48), dtype=torch.uint8)
    B = integer.weight_operand(pack_codes(codes, bits), bits, 5, 48)
    order = integer.column_order(48, bits)
    assert B.dtype == torch.int8
    assert sorted(order.tolist()) == list(range(48))  # a permutation
    assert torch.equal(B.long(), codes[:, order].long() - 2 ** (bits - 1))


@pytest.mark.parametrize("n", [7, 12, 16, 40, 96, 128, 3072])
def test_factored_rotation_is_the_hadamard_rotation_in_float64(n):
    L, R = integer.hadamard_factors(n)
    torch.testing.assert_close(torch.kron(L, R), hadamard_matrix(n), rtol=0, atol=1e-13)
    x = torch.randn(6, n, dtype=torch.float64)
    torch.testing.assert_close(integer.rotate_factored(x, L, R), rotate(x), rtol=0, atol=1e-12)
    # two factors of about sqrt(n) rows (the cost grows with their sum), not one of n
    assert L.shape[0] * R.shape[0] == n and L.shape[0] + R.shape[0] <= 3 * n**0.5 + 20


def test_integer_products_with_both_corrections_are_exact():
    torch.manual_seed(0)
    A = torch.randint(-128, 128, (9, 40), dtype=torch.int8)
    B = torch.randint(-128, 128, (7, 40), dtype=torch.int8)
    alpha = torch.randint(-128, 129, (9, 1), dtype=torch.int32)
    beta = torch.randint(-128, 129, (7,), dtype=torch.int32)
    want = (A.long() + alpha.long()) @ (B.long() + beta.long()[:, None]).T
    assert torch.equal(integer.int_matmul(A, B, alpha, beta).long(), want)
    assert torch.equal(integer.int_matmul(A, B).long(), A.long() @ B.long().T)


@pytest.mark.parametrize("bits, symmetric, granularity, dtype", list(itertools.product(
    [2, 3, 4, 7, 8], [False, True], ["token", "sample"], [torch.float32, torch.bfloat16])))
def test_activation_codes_dequantize_to_the_simulated_activations(bits, symmetric, granularity,
                                                                  dtype):
    torch.manual_seed(bits)
    x = (torch.randn(3, 5, 32) * 4 + torch.linspace(-3, 9, 32)).to(dtype)
    A, scale, alpha = integer.activation_operand(x, bits, granularity, symmetric, 8)
    codes = A.float() + (0 if alpha is None else alpha.float())  # q - z
    want = quantize_activation(x, bits, granularity, symmetric)
    assert torch.equal((scale * codes.to(dtype)).view(x.shape), want)
    assert (alpha is not None) == (bits == 8 and not symmetric)


def _layer(weight_bits, weight_symmetric, activation, transforms, tracker=None):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    W = lin.weight.detach()
    extra = {}
    if "smooth" in transforms:
        extra["smooth"] = torch.rand(96) + 0.5
    if "rotate" in transforms:
        extra.update(rotate_input=True, rotation_signs=random_signs(96, 0))
    if "lowrank" in transforms:
        extra["lowrank"] = (torch.randn(4, 96) * 0.1, torch.randn(40, 4) * 0.1)
    return QuantLinear.from_linear(lin, WeightSpec(bits=weight_bits, symmetric=weight_symmetric),
                                   activation, tracker, weight=W, **extra)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("weight_bits, activation_bits, weight_symmetric, transforms",
                         [(w, a, s, t) for w, a, s, t in itertools.product(
                             [3, 4, 8], [3, 4, 8], [True, False],
                             [(), ("rotate",), ("smooth", "lowrank"),
                              ("smooth", "rotate", "lowrank")])])
@pytest.mark.parametrize("granularity", ["token", "sample"])
def test_integer_layer_equals_the_simulated_layer(weight_bits, activation_bits, weight_symmetric,
                                                  transforms, granularity):
    """The two paths differ in summation order (and the rotation's rounding), and the simulated
    weight is dequantized in float32: within 1e-6 in float64, and 1e-5 in float32 wherever no
    rotation moves an activation across a rounding boundary."""
    q = _layer(weight_bits, weight_symmetric, ActivationQuant(activation_bits, granularity),
               transforms)
    assert q.runs_integer(activation_bits)
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        x = torch.randn(2, 7, 96, dtype=dtype) * 3
        q.execution = "simulated"
        want = q(x)
        q.execution = "integer"
        got = q(x)
        assert got.dtype == dtype
        if dtype == torch.float32 and "rotate" in transforms:
            continue  # float32 rotations of other rounding: the layer test below bounds them
        assert _rel(got, want) <= tol, (dtype, _rel(got, want))


def test_float32_rotation_moves_few_activation_codes():
    q = _layer(4, True, ActivationQuant(4), ("rotate",))
    x = torch.randn(64, 96) * 3
    q.execution = "simulated"
    want = q(x)
    q.execution = "integer"
    close = ((q(x) - want).norm(dim=-1) / want.norm(dim=-1)) <= 1e-5
    assert close.float().mean() >= 0.95  # a token differs only where a code crossed a boundary


def test_integer_path_is_refused_where_it_does_not_map():
    grouped = QuantLinear.from_linear(nn.Linear(64, 8), WeightSpec(bits=4, group_size=16),
                                      ActivationQuant(4), None)
    per_group_activations = _layer(4, True, ActivationQuant(4, "group"), ())
    full = _layer(4, True, ActivationQuant(16), ())
    odd = QuantLinear.from_linear(nn.Linear(36, 8), WeightSpec(bits=3), ActivationQuant(4), None)
    assert not grouped.runs_integer(4) and not per_group_activations.runs_integer(4)
    assert not full.runs_integer(16) and not odd.runs_integer(4)
    assert _layer(4, True, ActivationQuant(4), ()).runs_integer(4)
    x = torch.randn(3, 64)
    grouped.execution = "simulated"
    want = grouped(x)
    grouped.execution = "integer"
    assert torch.equal(grouped(x), want)  # the float path, unchanged


def test_blocked_and_cached_operands_give_the_same_outputs(monkeypatch):
    from adatsq.quant import qlinear

    q = _layer(3, False, ActivationQuant(8), ("smooth",))
    x = torch.randn(5, 96, dtype=torch.float64)
    whole = q(x)
    monkeypatch.setattr(qlinear, "OPERAND_BLOCK", 96 * 16)  # blocks of 16 rows
    assert torch.equal(q(x), whole)
    cache_weights_(q)
    assert q._operand is not None and q._operand.dtype == torch.int8
    assert torch.equal(q(x), whole)


def test_per_step_bits_on_the_integer_path_follow_the_step():
    tracker = StepTracker(torch.tensor([1.0, 0.75, 0.5, 0.25]))
    q = _layer(4, True, ActivationQuant((4, 8, 16, 3)), ("rotate",), tracker)
    x = torch.randn(3, 96, dtype=torch.float64)
    outs = {}
    for t in (1.0, 0.75, 0.5, 0.25):
        tracker.update(torch.tensor([t]))
        q.execution = "simulated"
        want = q(x)
        q.execution = "integer"
        outs[t] = q(x)
        assert _rel(outs[t], want) <= 1e-6
    assert _rel(outs[0.25], outs[0.75]) > 10 * _rel(outs[0.75], outs[0.5])  # 3 bits vs 8
