"""Uniform fake quantization of weights and activations, and bit packing of integer codes.

Conventions (those of the GPTQ reference): a b-bit code ``q`` is an integer in ``[0, 2^b - 1]`` and
dequantizes to ``scale * (q - zero)``. Symmetric quantization fixes ``zero = 2^(b-1)``; asymmetric
(MinMax) quantization fits ``scale`` and an integer ``zero`` to the range ``[min, max]``. A bit
width of 16 means "not quantized" everywhere in the package.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

FULL_PRECISION = 16
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, FULL_PRECISION)


def check_bits(bits: int | float, what: str = "bit width") -> int:
    """Returns ``bits`` as int or raises ``ValueError`` naming the allowed values."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real) or int(bits) != bits or \
            int(bits) not in VALID_BITS:
        raise ValueError(f"{what} must be an integer in 2..8 or 16 (off), got {bits!r}")
    return int(bits)


def qparams(xmin: torch.Tensor, xmax: torch.Tensor, bits: int,
            symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point for ranges ``[xmin, xmax]`` (any broadcastable shape);
    ``bits`` is an int or an integer 0-d tensor (a width chosen per step inside a compiled
    graph)."""
    maxq = 2**bits - 1
    if symmetric:
        amax = torch.maximum(xmin.abs(), xmax.abs())
        scale = 2 * amax / maxq
        zero = torch.zeros_like(scale) + 2 ** (bits - 1)  # bits may be a 0-d tensor
    else:
        xmin = torch.minimum(xmin, torch.zeros_like(xmin))
        xmax = torch.maximum(xmax, torch.zeros_like(xmax))
        scale = (xmax - xmin) / maxq
        zero = torch.round(-xmin / scale.clamp_min(1e-12))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant slices stay exact
    return scale, zero


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   bits: int) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero, 0, 2^b - 1)`` (float dtype; ``bits`` an int
    or a 0-d tensor)."""
    if isinstance(bits, torch.Tensor):
        return torch.minimum((torch.round(x / scale) + zero).clamp_(min=0), 2**bits - 1)
    return torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` with the given parameters."""
    return scale * (quantize_codes(x, scale, zero, bits) - zero)


@dataclass(frozen=True)
class WeightQuantizer:
    """Per-output-channel (or per-group) uniform weight quantizer for ``W`` of shape (out, in).

    Args:
        bits: 2..8, or 16 to leave weights unquantized.
        symmetric: symmetric around zero (True) or MinMax with a zero point (False).
        group_size: input columns sharing one scale per row; ``None`` = one scale per row.
        clip_ratio: shrink factor of the range (1.0 = plain MinMax).

    Example:
        >>> W = torch.randn(8, 16)
        >>> Wq = WeightQuantizer(bits=4)(W)
        >>> bool((W - Wq).abs().max() < W.abs().max() / 7 + 1e-6)
        True
    """

    bits: int = 4
    symmetric: bool = True
    group_size: int | None = None
    clip_ratio: float = 1.0

    def __post_init__(self):
        check_bits(self.bits, "weight bit width")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or None, got {self.group_size}")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must be in (0, 1], got {self.clip_ratio}")

    @property
    def enabled(self) -> bool:
        return self.bits != FULL_PRECISION

    def params(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-wise scale and zero (out, 1) fitted to all columns of ``W`` (out, k)."""
        xmin = W.amin(dim=1, keepdim=True) * self.clip_ratio
        xmax = W.amax(dim=1, keepdim=True) * self.clip_ratio
        return qparams(xmin, xmax, self.bits, self.symmetric)

    def group_params(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zeros (out, n_groups) for the whole matrix."""
        out, cols = W.shape
        g = self.group_size or cols
        if cols % g:
            raise ValueError(f"group_size {g} does not divide the {cols} input columns")
        Wg = W.reshape(out, cols // g, g)
        scale, zero = self.params(Wg.reshape(-1, g))
        return scale.reshape(out, cols // g), zero.reshape(out, cols // g)

    def codes(self, W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Integer codes (out, in) for per-group parameters (out, n_groups)."""
        g = W.shape[1] // scale.shape[1]
        s = scale.repeat_interleave(g, dim=1)
        z = zero.repeat_interleave(g, dim=1)
        return quantize_codes(W, s, z, self.bits)

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest fake quantization of the whole matrix."""
        if not self.enabled:
            return W
        scale, zero = self.group_params(W)
        g = W.shape[1] // scale.shape[1]
        return dequantize(self.codes(W, scale, zero), scale, zero, g).to(W.dtype)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Weights from codes (out, in) and per-group parameters (out, in / group).

    Computed in the scale's precision (at least float32) and returned in ``dtype`` (default: that
    precision), a block of rows at a time, so the temporaries stay small beside the result.
    """
    compute = torch.promote_types(scale.dtype, torch.float32)
    n_out, n_in = codes.shape
    W = torch.empty(n_out, n_in, dtype=dtype or compute, device=codes.device)
    rows = max(1, (1 << 22) // max(n_in, 1))
    for r in range(0, n_out, rows):
        c = codes[r:r + rows].to(compute, copy=True).view(-1, n_in // group, group)
        c.sub_(zero[r:r + rows, :, None].to(compute)).mul_(scale[r:r + rows, :, None].to(compute))
        W[r:r + rows] = c.view(-1, n_in)  # s (c - z), one temporary
    return W


ACTIVATION_GRANULARITIES = ("token", "group", "sample")


def activation_ranges(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each dynamic range of ``x`` (..., d), broadcastable to ``x``: per token
    (..., 1) or per sample (B, 1, ..., 1). (amin and amax apart: two passes, yet several times
    faster than ``aminmax`` on the CPU.)"""
    if granularity == "token":
        return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    if granularity == "sample":
        flat = x.reshape(x.shape[0], -1)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return flat.amin(1).reshape(shape), flat.amax(1).reshape(shape)
    raise ValueError(f"unknown activation granularity {granularity!r}; "
                     f"use one of {', '.join(ACTIVATION_GRANULARITIES)}")


def quantize_activation(x: torch.Tensor, bits: int, granularity: str = "token",
                        symmetric: bool = False, group_size: int = 64) -> torch.Tensor:
    """Fake-quantizes activations ``x`` (..., d).

    Args:
        bits: 2..8; 16 returns ``x`` unchanged.
        granularity: ``"token"`` (one range per token, dynamic), ``"group"`` (per token and group of
            ``group_size`` channels, dynamic), or ``"sample"`` (one range per sample, dynamic).
        symmetric: symmetric ranges instead of MinMax with a zero point.
    """
    if isinstance(bits, int) and bits == FULL_PRECISION:
        return x
    if granularity == "group":
        d = x.shape[-1]
        if d % group_size:
            return quantize_activation(x, bits, "token", symmetric)
        xg = x.reshape(*x.shape[:-1], d // group_size, group_size)
        lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)
        scale, zero = qparams(lo, hi, bits, symmetric)
        return fake_quant(xg, scale, zero, bits).reshape(x.shape)
    lo, hi = activation_ranges(x, granularity)
    scale, zero = qparams(lo, hi, bits, symmetric)
    return fake_quant(x, scale, zero, bits)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs integer codes in ``[0, 2^bits)`` densely into uint8 (``ceil(n * bits / 8)`` bytes).

    Code ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the little-endian byte stream, so
    every 8 codes fill ``bits`` whole bytes (two 4-bit codes per byte). On the codes' device;
    other widths than 2, 4 and 8 go through 64-bit words a million codes at a time.
    """
    check_bits(bits)
    flat = codes.reshape(-1)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"code {int(flat.max())} does not fit in {bits} bits")
    if bits in (2, 4, 8):  # whole codes per byte: byte operations only
        per = 8 // bits
        padded = torch.zeros((n + per - 1) // per * per, dtype=torch.uint8, device=flat.device)
        padded[:n] = flat.to(torch.uint8)
        shifts = torch.arange(per, device=flat.device, dtype=torch.uint8) * bits
        return (padded.view(-1, per) << shifts).sum(1, dtype=torch.uint8)
    out = torch.empty((n + 7) // 8 * bits, dtype=torch.uint8, device=flat.device)
    shifts = torch.arange(8, device=flat.device) * bits
    shifts_out = torch.arange(bits, device=flat.device) * 8
    chunk = 1 << 17  # groups of 8 codes (one word each) per pass: small int64 temporaries
    groups = (n + 7) // 8
    for g0 in range(0, groups, chunk):
        g1 = min(groups, g0 + chunk)
        part = torch.zeros((g1 - g0) * 8, dtype=torch.int64, device=flat.device)
        codes = flat[g0 * 8:g1 * 8]
        part[:codes.numel()] = codes.to(torch.int64)
        words = (part.view(-1, 8) << shifts).sum(1)  # 8 codes -> one (8 * bits)-bit word
        out[g0 * bits:g1 * bits] = ((words[:, None] >> shifts_out) & 0xFF).reshape(-1).to(
            torch.uint8)
    return out[: (n * bits + 7) // 8]


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 codes of ``shape``, on the packed tensor's device.

    2-, 4- and 8-bit codes are split with byte operations; other widths go through 64-bit words
    a million codes at a time, so the temporary memory stays small beside the codes.
    """
    n = math.prod(shape)
    need = (n * bits + 7) // 8
    if packed.numel() != need:
        raise ValueError(f"packed buffer has {packed.numel()} bytes, {need} expected for "
                         f"{n} codes of {bits} bits")
    flat = packed.reshape(-1)
    device = flat.device
    if bits in (2, 4, 8):
        per = 8 // bits
        shifts = torch.arange(per, device=device, dtype=torch.uint8) * bits
        codes = (flat[:, None] >> shifts) & (2**bits - 1)  # (bytes, codes per byte)
        return codes.reshape(-1)[:n].reshape(shape)
    out = torch.empty((n + 7) // 8 * 8, dtype=torch.uint8, device=device)
    shifts_in = torch.arange(bits, device=device) * 8
    shifts_out = torch.arange(8, device=device) * bits
    chunk = 1 << 17  # groups of 8 codes (one word each) per pass
    groups = (n + 7) // 8
    for g0 in range(0, groups, chunk):
        g1 = min(groups, g0 + chunk)
        data = torch.zeros((g1 - g0) * bits, dtype=torch.int64, device=device)
        part = flat[g0 * bits: g1 * bits]
        data[: part.numel()] = part.to(torch.int64)
        words = (data.view(-1, bits) << shifts_in).sum(1)
        out[g0 * 8: g1 * 8] = ((words[:, None] >> shifts_out) & (2**bits - 1)).reshape(-1).to(
            torch.uint8)
    return out[:n].reshape(shape)
