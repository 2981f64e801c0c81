"""Orthogonal Hadamard rotations of linear-layer inputs (QuaRot / QuIP# style).

A rotation ``x -> x H`` with an orthonormal ``H`` (``H Hᵀ = I``) leaves a linear layer's output
unchanged once the weight absorbs it (``W -> W H``), while spreading outlier channels over all
channels, which makes the activations and the weights easier to quantize.

Construction of ``H`` for a width ``n`` (always exactly orthogonal, entries ``±1/sqrt(n)`` in the
first two cases):

* ``n = 2^k``: the Sylvester (Walsh) Hadamard matrix ``H_2 ⊗ ... ⊗ H_2 / sqrt(n)``, which is
  symmetric, applied by the fast Walsh–Hadamard transform in ``O(n log n)``.
* ``n = 2^j * p`` where a Hadamard matrix of order ``p`` is given by a Paley construction
  (``p = q + 1`` with ``q ≡ 3 (mod 4)`` prime — orders 4, 8, 12, 20, 24, 32, 44, 48, 60, ... —
  or ``p = 2(q + 1)`` with ``q ≡ 1 (mod 4)`` prime — orders 12, 28, 36, 60, 76, ...): the
  Kronecker product ``H_sylvester(2^j) ⊗ H_paley(p)``, normalized, with the smallest such ``p``
  (e.g. 96 = 8 x 12, 384 = 32 x 12, 3072 = 256 x 12, 12288 = 1024 x 12). Applying it costs
  ``O(n (p + log n))``: a ``p x p`` matmul and a fast transform over the ``2^j`` blocks. Like
  QuaRot's and QuIP#'s "known Hadamard" matrices of orders 12, 20, 28, ...
* otherwise (no Paley order fits, e.g. an odd ``n``): ``H_sylvester(2^k) ⊗ C_m`` with ``C_m`` the
  orthonormal DCT-II matrix of the odd part ``m``. Still exactly orthogonal, but not a Hadamard
  matrix (its entries are not all of magnitude ``1/sqrt(n)``), so it spreads outliers less evenly.

*Randomized* rotations ``x -> (x ⊙ s) H = x D H`` with seeded random signs ``s`` (``D = diag(s)``,
QuaRot's and QuIP#'s randomized Hadamard) are exactly orthogonal too. The signs matter for inputs
with a common offset: the plain ``H`` maps a token whose channels share a mean ``mu`` onto its first
coordinate (``sqrt(n) mu``), a new outlier; ``D`` first scatters the mean over all coordinates.
Every function below takes the signs as an optional ``signs`` (n,) of ±1 (None: plain ``H``).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import nn


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """Jacobsthal matrix ``Q[i, j] = chi(j - i)`` of the quadratic character modulo a prime q."""
    chi = -np.ones(q, dtype=np.int64)
    chi[0] = 0
    chi[(np.arange(1, q) ** 2) % q] = 1
    idx = np.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]  # (q, q)


def _paley_hadamard(p: int) -> np.ndarray | None:
    """A ±1 Hadamard matrix of order ``p`` by Paley's construction I or II, or None."""
    q = p - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: H = I + S, S skew-symmetric
        S = np.zeros((p, p), dtype=np.int64)
        S[0, 1:] = 1
        S[1:, 0] = -1
        S[1:, 1:] = _jacobsthal(q)
        return np.eye(p, dtype=np.int64) + S
    q = p // 2 - 1
    if p % 2 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II from a symmetric conference matrix
        C = np.zeros((q + 1, q + 1), dtype=np.int64)
        C[0, 1:] = 1
        C[1:, 0] = 1
        C[1:, 1:] = _jacobsthal(q)
        zero_block = np.array([[1, -1], [-1, -1]], dtype=np.int64)
        one_block = np.array([[1, 1], [1, -1]], dtype=np.int64)
        return np.kron(C, one_block) + np.kron(C == 0, zero_block)
    return None


def _dct_matrix(m: int) -> np.ndarray:
    """Orthonormal DCT-II matrix of order ``m`` (float64)."""
    k = np.arange(m)[:, None]
    i = np.arange(m)[None, :]
    C = np.sqrt(2.0 / m) * np.cos(np.pi * (2 * i + 1) * k / (2 * m))
    C[0] /= np.sqrt(2.0)
    return C


def _factorize(n: int) -> tuple[int, np.ndarray | None]:
    """Splits ``n = a * p`` into a Sylvester order ``a`` and an orthonormal ``p x p`` factor.

    The factor is None when ``n`` is a power of two (``p = 1``).
    """
    if n <= 0:
        raise ValueError(f"rotation width must be positive, got {n}")
    if _is_power_of_two(n):
        return n, None
    twos = (n & -n).bit_length() - 1
    odd = n >> twos
    for j in range(twos + 1):
        p = odd << j
        H_p = _paley_hadamard(p)
        if H_p is not None:
            return n // p, H_p / math.sqrt(p)
    return 1 << twos, _dct_matrix(odd)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh–Hadamard transform along the last dimension.

    Computes ``x @ H / sqrt(n)`` for the Sylvester Hadamard matrix ``H`` (natural order,
    symmetric, so the transform is its own inverse) in ``O(n log n)``.

    Args:
        x: floating-point tensor (..., n) with ``n`` a power of two.

    Returns:
        The transformed tensor, same shape and dtype.

    Example:
        >>> x = torch.randn(3, 8, dtype=torch.float64)
        >>> bool(torch.allclose(fwht(fwht(x)), x))
        True
    """
    n = x.shape[-1]
    if not _is_power_of_two(n):
        raise ValueError(f"fwht needs a power-of-two last dimension, got {n}; use rotate()")
    src = x.reshape(-1, n).contiguous()  # (N, n)
    if n == 1:
        return src.clone().reshape(x.shape)
    if torch.is_grad_enabled() and x.requires_grad or torch.compiler.is_compiling():
        # out= kernels below are neither differentiable nor traceable
        h = 1
        while h < n:
            s = src.view(-1, n // (2 * h), 2, h)
            src = torch.stack((s[:, :, 0] + s[:, :, 1], s[:, :, 0] - s[:, :, 1]), dim=2)
            h *= 2
        return (src / math.sqrt(n)).reshape(x.shape)
    # Butterflies between two buffers: no allocation per stage and one pass over memory each.
    dst = torch.empty_like(src)
    spare = None
    h = 1
    while h < n:
        s = src.view(-1, n // (2 * h), 2, h)  # pairs (j, j + h) inside blocks of 2h
        d = dst.view(-1, n // (2 * h), 2, h)
        torch.add(s[:, :, 0], s[:, :, 1], out=d[:, :, 0])
        torch.sub(s[:, :, 0], s[:, :, 1], out=d[:, :, 1])
        if spare is None:  # the first stage read the caller's tensor, which must stay untouched
            spare = torch.empty_like(dst)
            src = spare
        src, dst = dst, src
        h *= 2
    return src.mul_(1.0 / math.sqrt(n)).reshape(x.shape)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The dense orthonormal rotation ``H`` (n, n) that :func:`rotate` applies.

    See the module docstring for the construction used for each ``n``.

    Args:
        n: width of the rotated dimension.
        dtype: floating dtype of the result (build in float64 for exact fusing).
        device: device of the result.

    Returns:
        ``H`` with ``H @ H.T == I`` up to rounding; ``rotate(x) == x @ H``.

    Example:
        >>> H = hadamard_matrix(12)
        >>> bool(torch.allclose(H @ H.T, torch.eye(12, dtype=torch.float64)))
        True
    """
    a, factor = _factorize(n)
    sylvester = fwht(torch.eye(a, dtype=torch.float64))  # (a, a)
    if factor is None:
        return sylvester.to(dtype=dtype, device=device)
    H = torch.kron(sylvester, torch.from_numpy(factor))  # (n, n)
    return H.to(dtype=dtype, device=device)


def random_signs(n: int, seed: int, name: str = "") -> torch.Tensor:
    """Seeded random signs (n,) (float32 ±1) of a randomized rotation of width ``n``.

    ``name`` (e.g. the layer's) enters the seed through its CRC-32, so every layer of a model gets
    its own signs from one seed, the same on every machine.

    Example:
        >>> s = random_signs(8, seed=0, name="blocks.0.ff")
        >>> bool((s.abs() == 1).all()), bool(torch.equal(s, random_signs(8, 0, "blocks.0.ff")))
        (True, True)
    """
    if n <= 0:
        raise ValueError(f"rotation width must be positive, got {n}")
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.randint(0, 2, (n,), generator=gen).float().mul_(2).sub_(1)


def rotation_matrix(n: int, signs: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dense orthonormal ``R = D H`` (n, n) that ``rotate(x, signs)`` applies (``D = I``
    without signs).

    Example:
        >>> R = rotation_matrix(12, random_signs(12, seed=1))
        >>> bool(torch.allclose(R @ R.T, torch.eye(12, dtype=torch.float64)))
        True
    """
    H = hadamard_matrix(n, dtype=dtype)
    return H if signs is None else _check_signs(signs, n).to(dtype)[:, None] * H


def _check_signs(signs: torch.Tensor, n: int) -> torch.Tensor:
    if signs.shape != (n,):
        raise ValueError(f"rotation signs of shape {tuple(signs.shape)} for width {n}")
    return signs


def rotate(x: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Applies the rotation along the last dimension: ``x @ rotation_matrix(n, signs)``.

    Power-of-two widths use :func:`fwht`; other widths ``n = a * p`` reshape ``x`` to
    (..., a, p), multiply by the ``p x p`` factor and transform the ``a`` axis.

    Args:
        x: floating-point tensor (..., n).

    Returns:
        The rotated tensor, same shape and dtype.

    Example:
        >>> x = torch.randn(4, 96, dtype=torch.float64)
        >>> bool(torch.allclose(rotate(x), x @ hadamard_matrix(96)))
        True
    """
    n = x.shape[-1]
    if signs is not None:
        x = x * _check_signs(signs, n).to(x.dtype)
    a, factor = _factorize(n)
    if factor is None:
        return fwht(x)
    B = torch.as_tensor(factor, dtype=x.dtype, device=x.device)  # (p, p)
    p = B.shape[0]
    X = (x.reshape(-1, p) @ B).view(-1, a, p)  # (N, a, p), one plain GEMM
    if a > 1:
        # (A ⊗ B) acts on the row-major (a, p) view as Aᵀ X B, and the Sylvester A is symmetric.
        X = fwht(X.transpose(1, 2)).transpose(1, 2)
    return X.reshape(x.shape)


@torch.no_grad()
def rotate_linear_input_(linear: nn.Linear, signs: torch.Tensor | None = None) -> None:
    """Fuses the input rotation into a linear layer's weight, in place: ``W <- W D H``.

    Afterwards ``linear(rotate(x, signs)) == linear_before(x)``, because with ``R = D H``
    ``(x R)(W R)ᵀ = x R Rᵀ Wᵀ = x Wᵀ``; the bias is unchanged. The product is computed in float64
    and cast back to the weight's dtype.

    The layer's input must then be rotated, either *online* in the forward pass (QuaRot's online
    Hadamard, e.g. before a down projection that follows a nonlinearity), or offline when the graph
    lets the producer absorb it: a preceding linear layer ``W_prev`` whose output feeds this one
    directly becomes ``Hᵀ W_prev`` (and its bias ``b_prev H``), and a preceding RMSNorm-like
    layer must first fold its scale into this layer.

    Args:
        linear: layer with ``in_features`` of any width (see :func:`hadamard_matrix`).

    Example:
        >>> layer = nn.Linear(16, 4).double()
        >>> x = torch.randn(2, 16, dtype=torch.float64)
        >>> y = layer(x)
        >>> rotate_linear_input_(layer)
        >>> bool(torch.allclose(layer(rotate(x)), y))
        True
    """
    W = linear.weight  # (out, in)
    W.copy_(rotate(W.detach().to(torch.float64), signs).to(W.dtype))


def rotate_hessian(H: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
    """The Hessian of rotated inputs ``x R`` (``R = D H_had``): ``Rᵀ H R`` for a symmetric ``H``.

    Example:
        >>> X = torch.randn(32, 12, dtype=torch.float64)
        >>> s = random_signs(12, seed=0)
        >>> Xr = rotate(X, s)
        >>> bool(torch.allclose(rotate_hessian(X.T @ X, s), Xr.T @ Xr))
        True
    """
    return rotate(rotate(H, signs).transpose(-1, -2).contiguous(), signs)
