"""GPTQ: one-shot weight quantization with second-order error compensation (Frantar et al., 2023).

The columns of ``W`` (out, in) are quantized one at a time; after each, the remaining columns are
updated so as to minimize the layer's output error ``||W X - Q X||²`` given the input Hessian
``H = sum X Xᵀ`` (in, in). With ``U`` the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = Uᵀ U``), column
``j`` is rounded and its error ``e_j = (w_j - q_j) / U_jj`` is propagated as
``W[:, j+1:] -= e_j U[j, j+1:]``. Updates are applied lazily, a block of ``block_size`` columns at a
time, which is exact and turns most of the work into one matrix product per block.

This module follows the algorithm of the IST-DASLab reference (``gptq.py``: dead inputs, relative
dampening, Cholesky of ``H⁻¹``, lazy blocks, ``act_order`` and ``static_groups``) as a pure tensor
function, with three deliberate differences:

* group parameters are fitted on the fully updated weights of the group's columns (the reference
  fits them on weights that miss the updates of earlier columns of the same block whenever a group
  starts inside a block; the two agree when ``group_size`` is a multiple of ``block_size``);
* per-channel parameters are fitted after zeroing dead columns, not before;
* the result carries the integer codes, scales and zero points, not only the fake-quantized weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adatsq.quant.primitives import WeightQuantizer, quantize_codes


@dataclass(frozen=True)
class GPTQResult:
    """Output of :func:`gptq_quantize`.

    Attributes:
        weight: fake-quantized weight (out, in), in the dtype of the input ``W``.
        codes: integer codes (out, in) as uint8, in the original column order.
        scale: per-group scales (out, n_groups); ``n_groups = 1`` without groups.
        zero: per-group integer zero points (out, n_groups), stored as floats.
        group_index: group of each input column (in,), int64. It is ``arange(in) // group_size``
            except with ``act_order`` and dynamic groups, where groups are runs of the permuted
            columns (the ``g_idx`` of GPTQ kernels).
        loss: the GPTQ objective ``sum (w - q)² / (2 U_jj²)`` accumulated over the columns, as
            reported by the reference; equals ``hessian_error(W, weight, H_damped) / 2``.
    """

    weight: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_index: torch.Tensor
    loss: float

    def dequantize(self) -> torch.Tensor:
        """Weights ``scale * (codes - zero)`` (out, in) in the dtype of ``scale``."""
        scale = self.scale[:, self.group_index]  # (out, in)
        zero = self.zero[:, self.group_index]  # (out, in)
        return scale * (self.codes.to(scale.dtype) - zero)


def hessian_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Hessian-weighted quantization error ``trace((W - Wq) H (W - Wq)ᵀ)``.

    With ``H = sum X Xᵀ`` this is the squared output error ``||W X - Wq X||²`` summed over the
    calibration inputs.

    Args:
        W: original weight (out, in).
        Wq: quantized weight (out, in).
        H: input Hessian (in, in).

    Returns:
        A 0-dim tensor in the promoted floating dtype of the inputs (at least float32).

    Example:
        >>> W = torch.randn(4, 8)
        >>> float(hessian_error(W, W, torch.eye(8)))
        0.0
    """
    dtype = torch.promote_types(torch.promote_types(W.dtype, Wq.dtype), H.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    D = W.to(dtype) - Wq.to(dtype)  # (out, in)
    return ((D @ H.to(dtype)) * D).sum()


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, quantizer: WeightQuantizer,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = False,
                  static_groups: bool = False) -> GPTQResult:
    """Quantizes ``W`` column by column with GPTQ.

    Args:
        W: weight (out, in) of a linear layer (``y = x Wᵀ``). Computation runs in float32, or in
            float64 if ``W`` is float64.
        H: accumulated input Hessian ``sum X Xᵀ`` (in, in), any positive scale (the result does not
            depend on it, ``loss`` scales with it). Inputs with ``H_jj = 0`` are dead: their
            weights become zero.
        quantizer: bit width, symmetry, group size and clip ratio of the uniform grid; its
            ``group_size`` must divide ``in`` and its ``bits`` must be below 16.
        block_size: columns per lazy-update block (speed only; the result does not depend on it
            beyond rounding).
        damp: dampening added to the diagonal of ``H``, as a fraction of its mean diagonal.
        act_order: quantize columns in order of decreasing ``H_jj`` (the reference's ``actorder``).
        static_groups: with groups, fit every group's parameters up front on the original weights
            instead of at the group's start on the updated ones; with ``act_order`` this keeps
            groups as contiguous column ranges. No effect without groups.

    Returns:
        A :class:`GPTQResult` with codes and parameters in the original column order.

    Raises:
        ValueError: on inconsistent shapes or settings, non-finite ``H``, or when the dampened
            Hessian is not positive definite (then use a larger ``damp``).

    Example:
        >>> W, X = torch.randn(16, 32), torch.randn(256, 32)
        >>> result = gptq_quantize(W, X.T @ X, WeightQuantizer(bits=4, group_size=16))
        >>> result.codes.shape, result.scale.shape
        (torch.Size([16, 32]), torch.Size([16, 2]))
        >>> bool(torch.equal(result.dequantize(), result.weight))
        True
    """
    _check_inputs(W, H, quantizer, block_size, damp)
    out_features, in_features = W.shape
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    bits, group_size = quantizer.bits, quantizer.group_size
    n_groups = 1 if group_size is None else in_features // group_size
    dynamic_groups = group_size is not None and not static_groups

    W0 = W.detach().to(dtype).clone()  # (out, in)
    H = H.detach().to(dtype=dtype, device=W.device).clone()  # (in, in)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W0[:, dead] = 0

    if group_size is None:
        scale, zero = quantizer.params(W0)  # (out, 1)
    elif static_groups:
        scale, zero = quantizer.group_params(W0)  # (out, n_groups)
    else:
        scale = torch.empty(out_features, n_groups, dtype=dtype, device=W.device)
        zero = torch.empty_like(scale)
    scale_t, zero_t = scale.T.contiguous(), zero.T.contiguous()  # (n_groups, out): rows by group

    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)  # (in,)
        W0, H = W0[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(in_features, device=W.device)
    if group_size is None:
        group_of = torch.zeros(in_features, dtype=torch.long, device=W.device)
    elif static_groups:
        group_of = perm // group_size  # group of the original column at each position
    else:
        group_of = torch.arange(in_features, device=W.device) // group_size
    group_list = group_of.tolist()

    Hinv = _inverse_cholesky_upper(H, damp)  # (in, in), H⁻¹ = Hinvᵀ Hinv
    Wt = W0.T.contiguous()  # (in, out): column j of W is the contiguous row Wt[j]
    codes_t = torch.empty_like(Wt)  # (in, out)
    Err = torch.empty(block_size, out_features, dtype=dtype, device=W.device)  # (B, out)
    loss = torch.zeros((), dtype=dtype, device=W.device)

    group = -1
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        W1 = Wt[i1:i2]  # (B, out), updated in place
        Hinv1 = Hinv[i1:i2, i1:i2]  # (B, B)
        E1 = Err[: i2 - i1]  # (B, out)
        d = torch.diagonal(Hinv1).tolist()
        for i in range(i2 - i1):
            j = i1 + i
            if group_list[j] != group:
                group = group_list[j]
                if dynamic_groups:
                    block = _updated_rows(Wt, Hinv, E1, i1, j, i2, j + group_size)  # (g, out)
                    s, z = quantizer.params(block.T)  # (out, 1)
                    scale_t[group], zero_t[group] = s[:, 0], z[:, 0]
                s, z = scale_t[group], zero_t[group]  # (out,)
            w = W1[i]  # (out,)
            c = quantize_codes(w, s, z, bits)  # (out,)
            codes_t[j] = c
            e = E1[i]
            torch.sub(c, z, out=e).mul_(s)  # q = s (c - z), as in dequantization
            torch.sub(w, e, out=e).div_(d[i])  # e_j = (w_j - q_j) / U_jj
            W1[i + 1:].addr_(Hinv1[i, i + 1:], e, alpha=-1)
        loss += E1.square().sum()
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, E1, alpha=-1)  # lazy update of the later blocks

    scale, zero = scale_t.T.contiguous(), zero_t.T.contiguous()  # (out, n_groups)
    group_index = torch.empty_like(group_of)
    group_index[perm] = group_of
    codes = torch.empty_like(codes_t)
    codes[perm] = codes_t
    codes = codes.T  # (out, in), original order
    weight = scale[:, group_index] * (codes - zero[:, group_index])  # (out, in)
    return GPTQResult(weight=weight.to(W.dtype), codes=codes.to(torch.uint8).contiguous(),
                      scale=scale, zero=zero, group_index=group_index, loss=float(loss) / 2)


def _updated_rows(Wt: torch.Tensor, Hinv: torch.Tensor, E1: torch.Tensor, i1: int, j: int, i2: int,
                  end: int) -> torch.Tensor:
    """Rows ``j:end`` of ``Wt`` with the pending lazy updates of columns ``i1:j`` applied."""
    end = min(end, Wt.shape[0])
    if end <= i2:
        return Wt[j:end]
    later = Wt[i2:end] - Hinv[i1:j, i2:end].T @ E1[: j - i1]  # (end - i2, out)
    return torch.cat((Wt[j:i2], later))


def _inverse_cholesky_upper(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) I)⁻¹`` (``H⁻¹ = Uᵀ U``)."""
    H.diagonal().add_(damp * torch.diagonal(H).mean())
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise ValueError(f"GPTQ: the dampened Hessian is not positive definite (Cholesky failed "
                         f"at column {int(info) - 1}); use a larger damp than {damp} (e.g. "
                         f"{max(10 * damp, 0.1):g}) or more calibration samples")
    return U


def _check_inputs(W: torch.Tensor, H: torch.Tensor, quantizer: WeightQuantizer, block_size: int,
                  damp: float) -> None:
    """Raises ``ValueError`` on inconsistent arguments."""
    if W.dim() != 2 or not W.is_floating_point():
        raise ValueError(f"W must be a floating-point (out, in) matrix, got shape "
                         f"{tuple(W.shape)} and dtype {W.dtype}")
    in_features = W.shape[1]
    if tuple(H.shape) != (in_features, in_features):
        raise ValueError(f"H must be (in, in) = ({in_features}, {in_features}) for W of shape "
                         f"{tuple(W.shape)}, got {tuple(H.shape)}")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("H contains NaN or Inf")
    if not quantizer.enabled:
        raise ValueError("GPTQ needs a quantizer with bits < 16 (16 means 'not quantized')")
    g = quantizer.group_size
    if g is not None and in_features % g:
        raise ValueError(f"group_size {g} does not divide the {in_features} input columns")
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if not (math.isfinite(damp) and damp >= 0):
        raise ValueError(f"damp must be a finite non-negative fraction, got {damp!r}")
