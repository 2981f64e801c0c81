"""Integer execution of a quantized linear layer: int8 x int8 -> int32 matrix multiplies.

A layer that quantizes its input per token (or per sample) with scale ``s_x`` and zero point
``z_x``, and its weight per output row with scale ``s_w`` and zero point ``z_w``, computes

    y[n, j] = s_x[n] s_w[j] sum_k (q_x[n, k] - z_x[n]) (q_w[j, k] - z_w[j])

exactly in integers. The operands of ``torch._int_mm`` (oneDNN on the CPU, cuBLASLt on CUDA) are
int8 codes minus a centre: ``A = q_x - c_x`` with ``c_x = z_x`` (up to 7 bits ``q - z`` fits
int8 as it is) or 128 (8-bit asymmetric ranges), and ``B = q_w - 2^(b-1)``. The centres'
differences from the zero points (``alpha = c_x - z_x`` per token, ``beta = c_w - z_w`` per
row) give exact integer corrections

    sum_k (A + alpha)(B + beta) = A Bᵀ + alpha rowsum(B) + beta rowsum(A) + K alpha beta,

each computed only where its factor can be non-zero: ``beta`` never for symmetric weights,
``alpha`` only for 8-bit asymmetric activations. Float corrections would lose digits to
cancellation; these lose none. The rescale by ``s_x s_w`` and the bias are applied in float.

The weight operand is unpacked from the layer's packed codes in the order the bytes hold
them: the smallest whole number of bytes holds ``m = 8 / gcd(8, b)`` codes (two 4-bit codes a
byte, eight 3-bit codes in three bytes), and code ``i`` of every such word goes to column block
``i`` (:func:`column_order`). Unpacking is then a few byte operations per weight with no
interleaving pass; the activation operand is written in the same column order as it is cast to
int8, and the dot products do not depend on the order of ``k``.

Online rotations use :func:`hadamard_factors`: the layer's ``n x n`` Hadamard matrix as a
Kronecker product ``L ⊗ R`` of two dense factors of about ``sqrt(n)`` rows, applied as two
matrix multiplies (:func:`rotate_factored`).

Pure tensor functions; :class:`adatsq.quant.qlinear.QuantLinear` decides when to use them.
"""

from __future__ import annotations

import functools
import math

import torch

from adatsq.quant.primitives import FULL_PRECISION, activation_ranges, qparams
from adatsq.quant.rotation import _factorize, fwht

INTEGER_GRANULARITIES = ("token", "sample")
"""Activation granularities with one scale per row of the GEMM (``group`` takes the float path)."""


def codes_per_word(bits: int) -> int:
    """Codes in the smallest whole number of bytes of the packed stream (1 for 8-bit codes)."""
    return 8 // math.gcd(8, bits)


def column_order(in_features: int, bits: int) -> torch.Tensor:
    """The input column each column of the unpacked weight operand holds (a permutation)."""
    m = codes_per_word(bits)
    return torch.arange(in_features).view(in_features // m, m).T.reshape(-1)


def supports(bits: int, in_features: int) -> bool:
    """Whether packed ``bits``-bit codes of rows of ``in_features`` unpack row-aligned."""
    return bits != FULL_PRECISION and in_features % codes_per_word(bits) == 0


def weight_operand(packed: torch.Tensor, bits: int, rows: int, in_features: int) -> torch.Tensor:
    """Zero-centred int8 weight codes ``q - 2^(bits-1)`` (rows, in) in :func:`column_order`.

    Args:
        packed: the packed codes of ``rows`` whole rows (``rows * in * bits / 8`` uint8).
    """
    m = codes_per_word(bits)
    words = in_features // m  # per row
    nbytes = bits * m // 8  # per word
    centre = 1 << (bits - 1)
    if m == 1:  # 8-bit codes: q - 128 is q with its top bit flipped, read as int8
        return (packed.view(rows, in_features) ^ centre).view(torch.int8)
    if nbytes == 1:  # whole codes per byte: shift code i to the top, then arithmetically down
        flip = sum(centre << (bits * i) for i in range(m))
        word = (packed.view(rows, 1, words) ^ flip).view(torch.int8)  # (rows, 1, words)
        up = torch.tensor([8 - bits * (i + 1) for i in range(m)], dtype=torch.int8,
                          device=packed.device).view(m, 1)
        codes = torch.bitwise_left_shift(word, up)  # (rows, m, words) in column order
        return codes.bitwise_right_shift_(8 - bits).view(rows, in_features)
    by = packed.view(rows, words, nbytes)
    mask = (1 << bits) - 1

    def code(i: int) -> torch.Tensor:
        """Code i of every word, from the (at most two) bytes it spans, minus the centre."""
        j, offset = divmod(bits * i, 8)
        c = by[..., j] >> offset
        if offset + bits > 8:
            c = c | (by[..., j + 1] << (8 - offset))
        c = (c & mask) ^ centre  # the code minus the centre, as a b-bit two's-complement number
        return torch.bitwise_right_shift((c << (8 - bits)).view(torch.int8), 8 - bits)

    if torch.compiler.is_compiling():
        return torch.stack([code(i) for i in range(m)], dim=1).view(rows, in_features)
    B = torch.empty(rows, m, words, dtype=torch.int8, device=packed.device)
    for i in range(m):
        B[:, i] = code(i)
    return B.view(rows, in_features)


def activation_operand(x: torch.Tensor, bits: int | torch.Tensor, granularity: str,
                       symmetric: bool, order_bits: int, eight_bits: bool | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(A, scale, alpha)``: int8 codes ``A = q - c`` (N, d) of ``x`` (..., d) in the column
    order of ``order_bits``-bit weights, the scale (N, 1) in ``x``'s dtype, and the integer
    centre correction ``alpha = c - z`` (N, 1) (None where it is zero everywhere).

    The codes are those of :func:`adatsq.quant.primitives.quantize_activation` (same ranges,
    scale and zero point in ``x``'s dtype, same rounding), so the two paths agree to the float
    summation order. ``bits`` may be a 0-d integer tensor (2..8; a per-step width inside a
    compiled graph); ``eight_bits`` then says whether it can be 8 with asymmetric ranges, the
    one case that needs ``alpha``.
    """
    d = x.shape[-1]
    lo, hi = activation_ranges(x, granularity)
    scale, zero = qparams(lo, hi, bits, symmetric)
    maxq = 2**bits - 1
    X = x.reshape(-1, d)
    scale = scale.expand(*x.shape[:-1], 1).reshape(-1, 1)  # (N, 1)
    zero = zero.expand(*x.shape[:-1], 1).reshape(-1, 1)
    codes = torch.div(X, scale).round_()  # (N, d)
    # clamp(round(x / s) + z, 0, maxq) - c; a tensor-bounded clamp_ is slower than these two
    torch.maximum(codes, -zero, out=codes)
    torch.minimum(codes, maxq - zero, out=codes)
    alpha = None
    if (bits == 8 if eight_bits is None else eight_bits) and not symmetric:
        # the centre c = clamp(z, maxq - 127, 128): z where q - z fits int8 (up to 7 bits),
        # 128 for 8 bits, so that q - c always does
        lower = torch.as_tensor(maxq - 127, dtype=zero.dtype, device=zero.device)
        centre = torch.maximum(zero, lower).clamp_(max=128.0)
        codes.add_(zero - centre)
        alpha = (centre - zero).to(torch.int32)  # (N, 1)
    m = codes_per_word(order_bits)
    if m == 1:
        return codes.to(torch.int8), scale, alpha
    A = torch.empty(X.shape, dtype=torch.int8, device=x.device)
    A.view(-1, m, d // m).transpose(1, 2).copy_(codes.view(-1, d // m, m))
    return A, scale, alpha


def int_matmul(A: torch.Tensor, B: torch.Tensor, alpha: torch.Tensor | None = None,
               beta: torch.Tensor | None = None,
               B_sums: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_k (A[n,k] + alpha[n]) (B[j,k] + beta[j])`` (N, rows) in int32, exactly.

    Args:
        A: int8 (N, K); B: int8 (rows, K); alpha: int32 (N, 1) or None; beta: int32 (rows,) or
            None; B_sums: ``B``'s row sums (rows,) int32 where known (else summed here when
            ``alpha`` needs them).
    """
    Y = torch._int_mm(A, B.T)  # (N, rows)
    if alpha is not None:  # alpha (rowsum(B) + K beta): one outer product
        per_row = B.sum(1, dtype=torch.int32) if B_sums is None else B_sums
        if beta is not None:
            per_row = per_row + A.shape[1] * beta
        Y.addr_(alpha.view(-1), per_row)
    if beta is not None:
        Y.addr_(A.sum(1, dtype=torch.int32), beta)
    return Y


def rescale(Y: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
            bias: torch.Tensor | None, dtype: torch.dtype,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``Y * x_scale * w_scale + bias`` computed in ``dtype`` or float32, whichever is wider,
    and returned in ``dtype`` (written into ``out`` if given)."""
    compute = torch.promote_types(dtype, torch.float32)
    y = torch.mul(Y, w_scale.to(compute)).mul_(x_scale.to(compute))  # (N, rows), in place
    if bias is not None:
        y.add_(bias.to(compute))
    if out is not None:
        return out.copy_(y)
    return y.to(dtype)


@functools.lru_cache(maxsize=None)
def _factors64(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, factor = _factorize(n)
    # split the Sylvester order a = a1 * a2 so that the right factor R = Syl(a2) ⊗ F has about
    # sqrt(n) rows: the cost of the two multiplies grows with a1 + a2 * p
    p = 1 if factor is None else factor.shape[0]
    a2 = 1
    while a2 * 2 <= a and (a2 * 2 * p) ** 2 <= n * 2:
        a2 *= 2
    a1 = a // a2
    left = fwht(torch.eye(a1, dtype=torch.float64))
    right = fwht(torch.eye(a2, dtype=torch.float64))
    if factor is not None:
        right = torch.kron(right, torch.from_numpy(factor))
    return left, right


def hadamard_factors(n: int, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` with ``L ⊗ R`` the rotation :func:`adatsq.quant.rotation.hadamard_matrix` of
    width ``n`` (both symmetric-free dense factors; ``L`` is a symmetric Sylvester matrix).

    Example:
        >>> from adatsq.quant.rotation import hadamard_matrix
        >>> L, R = hadamard_factors(96)
        >>> bool(torch.allclose(torch.kron(L, R), hadamard_matrix(96)))
        True
    """
    left, right = _factors64(n)
    return left.to(dtype=dtype, device=device), right.to(dtype=dtype, device=device)


def rotate_factored(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``x @ (left ⊗ right)`` along the last dimension, as two matrix multiplies: the row-major
    (a1, r) view ``X`` of each row becomes ``leftᵀ X right`` (``left`` is symmetric)."""
    a1, r = left.shape[0], right.shape[0]
    X = x.reshape(-1, r) @ right  # (N * a1, r)
    if a1 > 1:
        X = torch.matmul(left, X.view(-1, a1, r))  # (N, a1, r)
    return X.reshape(x.shape)
