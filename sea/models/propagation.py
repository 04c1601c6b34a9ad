"""LightGCN-style propagation, written once for every model that propagates over the
user–item graph (LightGCN, FREEDOM, SEA, LIRDRec).

Node vectors ``x`` (users ``[0, U)`` then items) take ``layers`` weightless hops over a
fixed normalised adjacency Â (:func:`~sea.models.graphs.spmm`), and the layers
x, Âx, …, Âᴸx are combined by their sum or their mean.
"""

from __future__ import annotations

import torch

from sea.models.graphs import spmm


def propagate(
    adj: torch.Tensor, x: torch.Tensor, layers: int, mean: bool = False, transpose: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_{l=0}^{L} Âˡx, or with ``mean`` that sum / (L + 1) (LightGCN's layer mean).

    Args:
        adj: the normalised adjacency Â, ``[N, N]`` sparse (symmetric unless ``transpose``
            is given: see :func:`spmm`).
        x: layer 0, ``[N, d]``.
        layers: L, the number of hops (0: ``x`` itself, or ``x / 1`` with ``mean``).
        transpose: Âᵀ for an ``adj`` that is not symmetric (SelfCF's edge dropout), or None.
    """
    out = x
    for _ in range(layers):
        x = spmm(adj, x, transpose)
        out = out + x
    return out / (layers + 1) if mean else out
