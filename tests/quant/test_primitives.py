import pytest
import torch

from adatsq.quant.primitives import (
    WeightQuantizer,
    check_bits,
    pack_codes,
    quantize_activation,
    unpack_codes,
)


def sqnr(x, y):
    return 10 * torch.log10(x.pow(2).sum() / (x - y).pow(2).sum())


@pytest.mark.parametrize("bits,min_db", [(8, 40.0), (4, 16.5), (3, 10.0), (2, 4.0)])
def test_weight_sqnr_per_bit_width(bits, min_db):
    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    assert sqnr(W, WeightQuantizer(bits)(W)) > min_db


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 32])
def test_weight_error_within_half_step(symmetric, group_size):
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(1)) * 3
    q = WeightQuantizer(4, symmetric, group_size)
    scale, zero = q.group_params(W)
    g = 64 // scale.shape[1]
    err = (q(W) - W).abs()
    bound = scale.repeat_interleave(g, 1) / 2 + 1e-6
    inside = W.abs() < scale.repeat_interleave(g, 1) * (2**3 - 1)  # not clipped at the top code
    assert (err[inside] <= bound[inside]).all()


def test_groups_reduce_error():
    W = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    W[:, 7] *= 20  # one outlier column hurts per-channel scales everywhere
    per_channel = (WeightQuantizer(4)(W) - W).pow(2).mean()
    grouped = (WeightQuantizer(4, group_size=32)(W) - W).pow(2).mean()
    assert grouped < 0.5 * per_channel


def test_sixteen_bits_is_identity():
    W = torch.randn(4, 8)
    assert torch.equal(WeightQuantizer(16)(W), W)
    assert torch.equal(quantize_activation(W, 16), W)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_pack_roundtrip(bits):
    codes = torch.randint(0, 2**bits, (37, 11), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (37 * 11 * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, (37, 11)).long(), codes)


def test_pack_rejects_overflow_and_bad_sizes():
    with pytest.raises(ValueError, match="does not fit"):
        pack_codes(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, (10,))


@pytest.mark.parametrize("bad", [1, 9, 3.5, 0, 32])
def test_check_bits_rejects(bad):
    with pytest.raises(ValueError, match="2..8 or 16"):
        check_bits(bad)


@pytest.mark.parametrize("granularity", ["token", "group", "sample"])
def test_activation_sqnr_and_granularity(granularity):
    x = torch.randn(2, 10, 128, generator=torch.Generator().manual_seed(3))
    assert sqnr(x, quantize_activation(x, 8, granularity)) > 35
    assert sqnr(x, quantize_activation(x, 4, granularity)) > 13


def test_per_token_beats_per_sample_with_token_outliers():
    x = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(4))
    x[0, 3] *= 50  # one loud token
    tok = (quantize_activation(x, 4, "token") - x).pow(2)[0, torch.arange(16) != 3].mean()
    smp = (quantize_activation(x, 4, "sample") - x).pow(2)[0, torch.arange(16) != 3].mean()
    assert tok < smp / 10


def test_unknown_activation_granularity_is_refused():
    with pytest.raises(ValueError, match="granularity"):
        quantize_activation(torch.randn(3, 8), 4, "tensor")
