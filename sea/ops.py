"""Tensor operations whose results do not depend on the number of threads.

With the portable kernels (:mod:`sea.runtime`), the matrix products of torch's CPU build
(MKL's strict reproducible mode) and every reduction to more than one value give the same
bits whatever the thread count. Three things do not, and the models use these instead:

- a reduction of more than :data:`GRAIN` elements to *one* value (``x.sum()``,
  ``x.mean()``, a loss's mean): ATen splits it into one chunk per thread and adds the
  chunks' sums, so the grouping depends on the thread count → :func:`full_sum`,
  :func:`full_mean`;
- a matrix–vector product (``A @ v``): MKL's gemv is outside its strict mode →
  :func:`matvec`, a one-column matrix product;
- batch norm's statistics in training mode: ATen's kernel splits the rows over threads →
  :class:`BatchNorm1d`, whose statistics are reductions over rows;
- an element-wise sigmoid or tanh of more than :data:`GRAIN` elements: each thread's
  last elements take the scalar formula, whose last bit differs → :func:`pointwise`
  (:class:`Pointwise` as a module).

``tests/test_ops.py`` checks each against torch's own result and across thread counts;
``tests/test_reproducible.py`` trains every model at 1 and 3 threads to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: ``at::internal::GRAIN_SIZE``: ATen reduces up to this many elements to one value in
#: one thread, and splits a larger reduction over its threads.
GRAIN = 32768


def full_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of every element of ``x``, added in a fixed grouping: rows of
    :data:`GRAIN` elements first (each row by one thread), then the rows' sums."""
    flat = x.reshape(-1)
    while flat.numel() > GRAIN:
        flat = F.pad(flat, (0, -flat.numel() % GRAIN)).view(-1, GRAIN).sum(1)
    return flat.sum()


def full_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of every element of ``x`` (see :func:`full_sum`)."""
    return full_sum(x) / max(x.numel(), 1)


def matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``matrix @ vector`` for a ``[..., n, k]`` matrix and a ``[k]`` vector, as a product
    with a one-column matrix."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def pointwise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an element-wise ``fn`` (sigmoid, tanh), applied to pieces of
    :data:`GRAIN` elements of the flattened ``x``. ATen splits a larger element-wise
    op over its threads, and each thread's last few elements take the scalar (not the
    vectorised) formula, whose last bit differs for sigmoid and tanh: the result would
    depend on the thread count. A piece that small is computed by one thread, and every
    piece but the last is a whole number of vectors. (Their backward passes are products,
    exact whatever the split.)"""
    if x.numel() <= GRAIN:
        return fn(x)
    return torch.cat([fn(piece) for piece in x.reshape(-1).split(GRAIN)]).view(x.shape)


class Pointwise(nn.Module):
    """:func:`pointwise` as a module (``nn.Sequential(nn.Linear(d, d), Pointwise(torch.sigmoid))``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(self.fn, x)


class BatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` on ``[n, features]`` inputs whose training-mode
    statistics are the mean and biased variance over the rows (``x.mean(0)``,
    ``x.var(0)``), each column reduced by one thread. The running statistics are updated
    as torch's (momentum, unbiased variance); evaluation uses them as torch's does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.dim() != 2:
            return super().forward(x)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                n = x.shape[0]
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * (n / max(n - 1, 1)), m)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


__all__ = ["GRAIN", "BatchNorm1d", "full_mean", "full_sum", "matvec"]
