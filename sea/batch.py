"""What one training step passes around: the :class:`Batch` of rows, the model's
:class:`Embeddings` of every user and item, and the loss :class:`Term` s computed from them.

These types sit below both the models (:mod:`sea.models`) and the losses
(:mod:`sea.losses`), which read and produce them, and import nothing from ``sea``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


class Batch(NamedTuple):
    """One training batch: ``users[b]`` interacted with ``pos[b]``; ``neg[b, :]`` are its
    sampled negatives (``train.negatives`` per positive)."""

    users: torch.Tensor  # [B] long
    pos: torch.Tensor  # [B] long
    neg: torch.Tensor  # [B, N] long


@dataclass
class Embeddings:
    """A forward pass: one vector per user and per item (same width), plus whatever the
    model's own losses need (``extras``, e.g. SEA's generic/unique parts)."""

    user: torch.Tensor  # [n_users, d]
    item: torch.Tensor  # [n_items, d]
    extras: dict[str, Any] = field(default_factory=dict)


class Term(NamedTuple):
    """A loss term: its unweighted value (logged) and the weight it enters the total with."""

    value: torch.Tensor
    weight: float
