"""SEA: Separate Learning for multimedia recommendation (SEA.md §1), as one nn.Module.

Per modality m, an item's raw feature x_i^m is projected and split into a *generic* part
g_i^m and a *unique* part s_i^m; an MLP of [g; s] gives the item node, a learnable vector
gives the user node, and both are propagated without weights over the user–item graph
(h = x + Âx + Â²x). Users fuse their modalities with learnable per-user weights; items
concatenate them and take one hop over an item–item kNN graph. Scores are dot products.

The auxiliary heads (CLUB projections, Solosim heads) only serve the training losses; the
CLUB estimators live outside the model, in :mod:`sea.losses`, with their own optimiser.
All sizes come from the constructor's arguments; feature widths from the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import LGConv


@dataclass
class SEAOutput:
    user: torch.Tensor  # [n_users, M * embedding_dim]
    item: torch.Tensor  # [n_items, M * embedding_dim]
    generic: dict[str, torch.Tensor]  # modality -> [n_items, generic_dim]
    unique: dict[str, torch.Tensor]  # modality -> [n_items, unique_dim]


class ModalityEncoder(nn.Module):
    """One modality's branch: generic/unique split, item MLP and user preference vectors."""

    def __init__(self, n_users: int, feature_dim: int, generic_dim: int, hidden_dim: int, embedding_dim: int):
        super().__init__()
        if not 0 < generic_dim < feature_dim:
            raise ValueError(f"generic_dim must be in (0, {feature_dim}), got {generic_dim}")
        self.generic_dim = generic_dim
        self.split = nn.Linear(feature_dim, feature_dim)
        self.item_mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, embedding_dim)
        )
        self.user_pref = nn.Embedding(n_users, embedding_dim)
        nn.init.xavier_uniform_(self.user_pref.weight)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return L2-normalised user and item node vectors and the item's (generic, unique)."""
        z = self.split(features)
        generic, unique = z[:, : self.generic_dim], z[:, self.generic_dim :]
        items = F.normalize(self.item_mlp(z), dim=1)
        users = F.normalize(self.user_pref.weight, dim=1)
        return users, items, generic, unique


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Solosim's 3-layer MLP with batch norm."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


class SEA(nn.Module):
    """SEA recommender.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name ("image", "text") -> raw feature width, in fusion order.
        embedding_dim: width of each modality's node vectors (64).
        generic_fraction: share of each modality's projection that is generic (0.5).
        mlp_hidden_dim: hidden width of the item MLP (256).
        gcn_layers: propagation hops over the user–item graph (2).
        head_dim: output width of the CLUB projections and Solosim heads (32).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        *,
        embedding_dim: int = 64,
        generic_fraction: float = 0.5,
        mlp_hidden_dim: int = 256,
        gcn_layers: int = 2,
        head_dim: int = 32,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.gcn_layers = gcn_layers
        generic = {m: max(1, min(d - 1, round(generic_fraction * d))) for m, d in feature_dims.items()}
        self.generic_dims = generic
        self.unique_dims = {m: feature_dims[m] - generic[m] for m in feature_dims}
        self.encoders = nn.ModuleDict({
            m: ModalityEncoder(n_users, d, generic[m], mlp_hidden_dim, embedding_dim)
            for m, d in feature_dims.items()
        })
        # Per-user modality weights (softmax over modalities); absent with one modality,
        # where they could not receive a gradient.
        self.user_modality_logits = (
            nn.Parameter(torch.zeros(n_users, len(feature_dims))) if len(feature_dims) > 1 else None
        )
        self.conv = LGConv(normalize=False)
        # Auxiliary heads for the losses.
        self.club_generic = nn.ModuleDict({m: nn.Linear(generic[m], head_dim) for m in feature_dims})
        self.club_unique = nn.ModuleDict({m: nn.Linear(self.unique_dims[m], head_dim) for m in feature_dims})
        self.has_cross_modal = {"image", "text"} <= set(feature_dims)
        self.solosim_heads = (
            nn.ModuleDict({m: projection_head(generic[m], embedding_dim, head_dim) for m in ("text", "image")})
            if self.has_cross_modal else None
        )

    def propagate(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """x + Âx + Â²x + … (``gcn_layers`` hops, no weights)."""
        out, h = x, x
        for _ in range(self.gcn_layers):
            h = self.conv(h, adj)
            out = out + h
        return out

    def forward(self, features: dict[str, torch.Tensor], adj: torch.Tensor, item_graph: torch.Tensor) -> SEAOutput:
        """Embed every user and item.

        Args:
            features: modality -> raw item features [n_items, feature_dim].
            adj: normalised user–item adjacency [(U + I), (U + I)], users first.
            item_graph: normalised item–item kNN graph [I, I].
        """
        users, items, generic, unique = [], [], {}, {}
        for m in self.modalities:
            u, i, generic[m], unique[m] = self.encoders[m](features[m])
            h = self.propagate(torch.cat([u, i]), adj)
            users.append(h[: self.n_users])
            items.append(h[self.n_users :])
        if self.user_modality_logits is not None:
            w = torch.softmax(self.user_modality_logits, dim=1)
            users = [w[:, j : j + 1] * u for j, u in enumerate(users)]
        user = torch.cat(users, dim=1)
        item = torch.cat(items, dim=1)
        item = item + torch.sparse.mm(item_graph, item)
        return SEAOutput(user, item, generic, unique)

    def club_pairs(self, out: SEAOutput, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Modality -> (projected generic, projected unique) of ``items``."""
        return {
            m: (self.club_generic[m](out.generic[m][items]), self.club_unique[m](out.unique[m][items]))
            for m in self.modalities
        }

    def solosim_pair(self, out: SEAOutput, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text generic, image generic) of ``items`` through their Solosim heads."""
        assert self.solosim_heads is not None, "Solosim needs both image and text"
        return (
            self.solosim_heads["text"](out.generic["text"][items]),
            self.solosim_heads["image"](out.generic["image"][items]),
        )

    @staticmethod
    def score(out: SEAOutput, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` against every item: [len(users), n_items]."""
        return out.user[users] @ out.item.T
