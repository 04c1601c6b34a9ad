"""LIRDRec (Zhou, Zhang, Niyato and Shen, "Learning Item Representations Directly from
Multimodal Features for Effective Recommendation", arXiv:2505.04960, 2025): items have no
id embedding; their vectors come from the raw features alone.

Per item, K = (number of modalities) + 1 *branches*, each of width ``embedding_dim``:
one MLP per modality over that modality's raw feature, and one shared MLP over the
*transformed* concatenated features (an orthonormal DCT-II of each modality's feature
vector, concatenated). Users have one learned vector per branch. Every branch's node
vectors (users then items) are L2-normalised, the branches concatenated, and propagated
without weights over the user–item graph (LightGCN, sum of layers). Users fuse their K
branch vectors with *progressive weight copying* (:class:`ProgressiveWeightCopying`);
items keep the concatenation and add a hop over the frozen kNN item–item graph (FREEDOM).
Scores are dot products; the regularisation term is the mean square of all user and item
vectors, as in the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph, item_item_graph
from sea.models.propagation import propagate
from sea.ops import full_mean


@dataclass
class LIRDRecConfig(Section):
    """``lirdrec:`` in params.yaml (defaults: the reference code's, SEA.md §4)."""

    embedding_dim: int = 64
    mlp_hidden_dim: int = 256  # hidden width of every branch MLP (the reference: 4 × embedding_dim)
    attention_hidden_dim: int = 16  # hidden width of the fusion's scoring MLPs (reference: embedding_dim / 4)
    ui_layers: int = 2  # propagation layers over the user–item graph
    item_layers: int = 1  # hops over the kNN item–item graph
    knn_k: int = 10
    image_knn_weight: float = 0.1  # item–item graph = w · image kNN + (1 − w) · text kNN
    initial_weight: float = 0.9  # mixing weight w₀ of the fusion before the first epoch
    decay_base: float = 0.9  # b in w_e / (1 − w_e) = w₀ / (1 − w₀) · b^(e(e+1)/2)
    reg_weight: float = 1e-3

    def validate(self, section: str) -> None:
        require(
            min(self.embedding_dim, self.mlp_hidden_dim, self.attention_hidden_dim) > 0,
            section,
            "embedding_dim, mlp_hidden_dim and attention_hidden_dim must be positive",
        )
        require(self.ui_layers >= 0 and self.item_layers >= 0, section, "ui_layers and item_layers must be >= 0")
        require(self.knn_k >= 1, section, "knn_k must be >= 1")
        require(0.0 <= self.image_knn_weight <= 1.0, section, "image_knn_weight must be in [0, 1]")
        require(0.0 < self.initial_weight < 1.0, section, "initial_weight must be in (0, 1)")
        require(0.0 < self.decay_base <= 1.0, section, "decay_base must be in (0, 1] (1: no decay)")
        require(self.reg_weight >= 0, section, "reg_weight must be >= 0")


def dct(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II of each row of ``x`` (along the last axis), as
    ``scipy.fft.dct(x, norm="ortho")``, in O(d log d) per row through one FFT (Makhoul 1980)."""
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(n, device=x.device, dtype=torch.float64)
    twiddle = torch.exp(-0.5j * math.pi * k / n)
    out = (torch.fft.fft(v.double(), dim=-1) * twiddle).real
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64, device=x.device)
    scale[0] = math.sqrt(1.0 / n)
    return (out * scale).to(x.dtype)


def transform_features(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """The shared branch's input: each modality's features through a per-item DCT-II
    (along the feature axis), concatenated in the order of ``features``."""
    return torch.cat([dct(x) for x in features.values()], dim=1)


def mixing_weight(epoch: int, initial_weight: float, decay_base: float) -> float:
    r"""The fusion's mixing weight :math:`w_e` during epoch ``epoch`` (``0`` = before
    training): the reference code's per-epoch update
    :math:`(w, 1-w) \leftarrow \mathrm{normalise}(w\,b^{e}, 1-w)`, in closed form
    :math:`\frac{w_e}{1-w_e} = \frac{w_0}{1-w_0}\, b^{e(e+1)/2}`."""
    t = math.log(initial_weight / (1.0 - initial_weight)) + math.log(decay_base) * epoch * (epoch + 1) / 2
    if t >= 0:  # the logistic function, without overflow and with full relative precision
        return 1.0 / (1.0 + math.exp(-t))
    return math.exp(t) / (1.0 + math.exp(t))


def branch_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear → LeakyReLU → Linear (no bias), the reference's per-branch encoder."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, out_dim, bias=False))


class ProgressiveWeightCopying(nn.Module):
    r"""LIRDRec's fusion of a user's K branch vectors :math:`a_1, …, a_K`.

    Weights :math:`\alpha = \mathrm{softmax}(w_e\, s + (1 - w_e)\, \theta_u)`, where
    :math:`s_k = \mathrm{MLP}_k(a_k)` are scores computed from the vectors, :math:`\theta`
    is a learned per-user ``[n_users, K]`` table and :math:`w_e` the mixing weight of the
    epoch (:func:`mixing_weight`). The fused vector is :math:`[\alpha_1 a_1; …; \alpha_K a_K]`.
    *Weight copying*: at the start of every epoch :math:`\theta` is overwritten with the
    weights :math:`\alpha` of the last training forward pass, so as :math:`w_e` decays the
    fusion keeps (and fine-tunes) the weights it had learned.

    Args:
        n_users: rows of :math:`\theta`.
        n_branches: K.
        dim: width of each branch vector.
        hidden_dim: hidden width of the scoring MLPs.
        initial_weight, decay_base: the schedule of :math:`w_e`.
    """

    def __init__(
        self, n_users: int, n_branches: int, dim: int, hidden_dim: int, initial_weight: float, decay_base: float
    ):
        super().__init__()
        self.initial_weight, self.decay_base = initial_weight, decay_base
        self.scorers = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, 1))
            for _ in range(n_branches)
        )
        self.theta = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, n_branches)))
        # State that checkpoints must carry to reproduce an epoch's scores.
        self.register_buffer("weight", torch.tensor(initial_weight))
        self.register_buffer("last_weights", self.theta.detach().clone())

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (≥ 1): decay the mixing weight and copy the last weights."""
        self.weight.fill_(mixing_weight(epoch, self.initial_weight, self.decay_base))
        with torch.no_grad():
            self.theta.copy_(self.last_weights)

    def weights(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The fusion weights α, ``[n_users, K]`` (rows sum to 1)."""
        scores = torch.cat([f(a) for f, a in zip(self.scorers, parts, strict=True)], dim=1)
        return torch.softmax(self.weight * scores + (1.0 - self.weight) * self.theta, dim=1)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``[α₁a₁; …; α_K a_K]``; in training mode also remembers α for the next copy."""
        alpha = self.weights(parts)
        if self.training:
            self.last_weights.copy_(alpha.detach())
        return torch.cat([alpha[:, k : k + 1] * a for k, a in enumerate(parts)], dim=1)


@register
class LIRDRec(Recommender):
    r"""LIRDRec: item vectors learned directly from multimodal features (no item id).

    Item branches (``[n_items, embedding_dim]`` each): :math:`\mathrm{MLP}_m(x^m)` per
    modality and :math:`\mathrm{MLP}_s([\mathrm{DCT}(x^{m_1}); \mathrm{DCT}(x^{m_2})])`.
    User branches: learned vectors. Node vectors :math:`e^{(0)} = [\bar{e}_1; …; \bar{e}_K]`
    (each branch L2-normalised per node) are propagated as
    :math:`e = \sum_{l=0}^{L} \hat{A}^l e^{(0)}` over the user–item graph. Users:
    :class:`ProgressiveWeightCopying` of their K branches; items:
    :math:`e_i + (S^{L'} e)_i` with :math:`S` the frozen kNN item–item graph.

    Args:
        n_users: number of users.
        feature_dims: modality → raw feature width, in branch order.
        shared_input: the shared branch's input, :func:`transform_features` of the
            features (``[n_items, Σ dims]``; computed once, it is not a parameter).
        item_graph: the normalised item–item kNN graph ``[n_items, n_items]`` (sparse).
        embedding_dim: width of each branch (64).
        mlp_hidden_dim: hidden width of the branch MLPs (256).
        attention_hidden_dim: hidden width of the fusion's scoring MLPs (16).
        ui_layers: layers over the user–item graph (2).
        item_layers: hops over the item–item graph (1).
        initial_weight, decay_base: the fusion's schedule (0.9, 0.9).
        reg_weight: weight of the mean-square regularisation (1e-3; 0 turns it off).
    """

    name = "lirdrec"
    Config = LIRDRecConfig
    uses_features = True
    #: The grid ``tune.spaces.lirdrec`` defaults to (docs/tuning.md).
    search_space = {"ui_layers": [2, 3, 4], "reg_weight": [0.01, 0.001, 0.0001]}

    def __init__(
        self,
        n_users: int,
        feature_dims: dict[str, int],
        shared_input: torch.Tensor,
        item_graph: torch.Tensor,
        *,
        embedding_dim: int = 64,
        mlp_hidden_dim: int = 256,
        attention_hidden_dim: int = 16,
        ui_layers: int = 2,
        item_layers: int = 1,
        initial_weight: float = 0.9,
        decay_base: float = 0.9,
        reg_weight: float = 1e-3,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, shared_input.shape[0]
        self.modalities = list(feature_dims)
        self.ui_layers, self.item_layers, self.reg_weight = ui_layers, item_layers, reg_weight
        n_branches = len(feature_dims) + 1
        self.item_encoders = nn.ModuleDict(
            {m: branch_mlp(d, mlp_hidden_dim, embedding_dim) for m, d in feature_dims.items()}
        )
        self.shared_encoder = branch_mlp(shared_input.shape[1], mlp_hidden_dim, embedding_dim)
        self.user_branches = nn.ModuleList(nn.Embedding(n_users, embedding_dim) for _ in range(n_branches))
        for emb in self.user_branches:
            nn.init.xavier_normal_(emb.weight)
        self.fusion = ProgressiveWeightCopying(
            n_users, n_branches, embedding_dim, attention_hidden_dim, initial_weight, decay_base
        )
        # Fixed inputs rebuilt by `build` from the data: kept out of the state dict.
        self.register_buffer("shared_input", shared_input, persistent=False)
        self.item_graph = FrozenGraph(item_graph)

    @classmethod
    def build(cls, data: GraphData, cfg: LIRDRecConfig, modalities: Sequence[str] | None = None, *unused) -> LIRDRec:
        modalities = list(modalities or data.features)
        features = {m: data.features[m] for m in modalities}
        graph = item_item_graph({m: x.cpu() for m, x in features.items()}, cfg.knn_k, cfg.image_knn_weight)
        return cls(
            data.n_users,
            {m: x.shape[1] for m, x in features.items()},
            transform_features(features),
            graph.to(data.device),
            embedding_dim=cfg.embedding_dim,
            mlp_hidden_dim=cfg.mlp_hidden_dim,
            attention_hidden_dim=cfg.attention_hidden_dim,
            ui_layers=cfg.ui_layers,
            item_layers=cfg.item_layers,
            initial_weight=cfg.initial_weight,
            decay_base=cfg.decay_base,
            reg_weight=cfg.reg_weight,
        )

    def encode_items(self, features: dict[str, torch.Tensor], shared_input: torch.Tensor) -> list[torch.Tensor]:
        """The K item branches, ``[n_items, embedding_dim]`` each: a function of each
        item's own features only (no id, no graph)."""
        return [self.item_encoders[m](features[m]) for m in self.modalities] + [self.shared_encoder(shared_input)]

    def forward(self, data: GraphData) -> Embeddings:
        """User and item vectors, ``[·, K · embedding_dim]``."""
        items = self.encode_items(data.features, self.shared_input)
        nodes = torch.cat(
            [F.normalize(torch.cat([u.weight, i]), dim=1) for u, i in zip(self.user_branches, items, strict=True)],
            dim=1,
        )
        h = propagate(data.adj, nodes, self.ui_layers)  # x + Âx + … + Â^L x
        user, item = h[: self.n_users], h[self.n_users :]
        user = self.fusion(list(user.chunk(len(items), dim=1)))
        hop = item
        for _ in range(self.item_layers):
            hop = self.item_graph(hop)
        return Embeddings(user=user, item=item + hop if self.item_layers else item)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``reg``: mean square of all user vectors plus that of all item vectors."""
        if self.reg_weight == 0:
            return {}
        return {"reg": Term(full_mean(emb.user.pow(2)) + full_mean(emb.item.pow(2)), self.reg_weight)}

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Progressive weight copying: the epoch's mixing weight, θ ← the last weights."""
        self.fusion.set_epoch(epoch)
