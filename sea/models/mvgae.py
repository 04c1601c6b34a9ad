"""MVGAE (Yi & Chen, "Multi-Modal Variational Graph Auto-Encoder for Recommendation Systems",
IEEE TMM 2021), as MMRec runs it.

One variational graph encoder ("expert") per modality m and one more for the collaborative
signal (item id embeddings in place of features), each over the user–item training graph.
An expert's layer 0 is x = norm([p_u; P x_i]) (learned user preferences; item features, or
id embeddings, through a linear map to ``latent_dim``), then ``layers`` blocks
x ← σ(G conv(x)), then two heads give the node's Gaussian:

    μ = G_μ σ(conv_μ(x)) + σ(V_μ x),   log σ² = G_σ σ(conv_σ(x)) + σ(V_σ x)

with σ = LeakyReLU and conv(x) = dropout(norm(mean over the node and its neighbours of
W x_j, + b)). The experts are fused by a product of Gaussians (precision-weighted means):
the modalities first, that result then with the collaborative expert. Training draws
z = μ + s·ε·exp(½ log σ²) (torch's seeded generator; s = ``sample_scale``) for the fused
and for each expert's Gaussian; evaluation uses μ (no draw, no dropout). User and item
vectors are sigmoid(μ); score = their dot product.

Loss (the whole objective; the trainer runs it with ``loss.kind: none``, its
``preferred_loss``), summed over the fused Gaussian and every expert's:

- ``recon``: −Σ_b log₂ σ(σ(⟨ẑ_u, ẑ_i⁺⟩) − σ(max_j ⟨ẑ_u, ẑ_j⁻⟩)), ẑ = sigmoid(z), the max over
  every negative of the batch (MMRec's hardest in-batch negative), summed over the batch;
- ``kl``: the KL divergence to N(0, I), −½ mean over nodes of Σ_k (1 + log σ² − μ² − σ²),
  weighted β.

The neighbour mean is (A + I)·y / (deg + 1) with A the 0/1 pattern of the training graph:
one sparse product (:func:`spmm`) per convolution, never a dense matrix.

Differences from MMRec's ``mvgae.py`` (the published numbers come from that code):

- **Item rows.** MMRec's loss indexes the latent table (users, then items) with the raw
  item ids, without adding the number of users: its "positive" and "negative" items are
  the *users* with those ids, and no item row ever enters its loss (the items learn only
  through the convolutions of their neighbours). Here the items' own rows are scored.
- **Trained embeddings.** MMRec creates the user preferences and the collaborative item
  table as plain tensors (``xavier_normal_(torch.rand(...)).to(device)``), never
  updated. Here they are parameters, as in the paper; ``frozen_embeddings: true`` keeps
  them at their random draw as MMRec does.
- **Evaluation.** MMRec scores with the sigmoid of the fused mean of its *last training
  batch* (dropout on); here ``forward`` in eval mode recomputes it without dropout.
- **Sizes.** MMRec hard-codes ``dim_latent`` 128, dropout 0.1 and the sample scale 0.1;
  here they are fields (defaults those). MMRec runs at most 2 blocks whatever
  ``n_layers``; here ``layers`` blocks, default MMRec's 1. The unused maps MMRec builds for
  its ``concate`` option (off) are left out.
- **Modalities.** MMRec needs both image and text; here any non-empty subset (one
  modality: its expert fused with the collaborative one directly). With N negatives per
  positive, every negative of the batch is a candidate for the max (MMRec: N = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sea.batch import Batch, Embeddings, Term
from sea.config import Section, require
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import spmm
from sea.ops import full_sum, pointwise

#: MMRec's clamp of log σ² (before the draw and the KL term).
MAX_LOGVAR = 10.0
#: MMRec's floor added to each expert's variance in the product of experts.
POE_EPS = 1e-8


@dataclass
class MVGAEConfig(Section):
    """params.yaml [mvgae]. MMRec grid-searches beta and the learning rate."""

    embedding_dim: int = 64  # d: every layer's output, μ and log σ², the collaborative item table (MMRec: 64)
    latent_dim: int = 128  # layer 0: user preferences and projected item features (MMRec: dim_latent 128)
    layers: int = 1  # convolution blocks before the μ / log σ² heads (MMRec: n_layers 1)
    beta: float = 0.1  # weight of the KL terms; MMRec grid [0.01, 0.1, 1]
    dropout: float = 0.1  # dropout after every graph convolution, training only (MMRec: 0.1)
    sample_scale: float = 0.1  # z = μ + scale·ε·σ in training (MMRec's code: 0.1)
    frozen_embeddings: bool = False  # true: preferences and the item id table stay random, as MMRec's code

    def validate(self, section: str) -> None:
        require(self.embedding_dim > 0, section, "embedding_dim must be positive")
        require(self.latent_dim > 0, section, "latent_dim must be positive")
        require(self.layers >= 1, section, "layers must be >= 1")
        require(self.beta >= 0, section, "beta must be >= 0")
        require(0.0 <= self.dropout < 1.0, section, "dropout must be in [0, 1)")
        require(self.sample_scale >= 0, section, "sample_scale must be >= 0")


def xavier_normal(*shape: int) -> torch.Tensor:
    """A ``shape`` tensor drawn as :func:`torch.nn.init.xavier_normal_` draws it."""
    return nn.init.xavier_normal_(torch.empty(*shape))


def xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    """``nn.Linear`` whose weight is re-drawn xavier-normal (its bias keeps torch's)."""
    lin = nn.Linear(n_in, n_out)
    nn.init.xavier_normal_(lin.weight)
    return lin


class GraphConv(nn.Module):
    """MMRec's ``BaseModel`` with mean aggregation: ``dropout(norm(mean_{j ∈ N(v) ∪ {v}} W x_j + b))``.

    Args:
        n_in, n_out: widths.
        dropout: the rate applied in training mode.
    """

    def __init__(self, n_in: int, n_out: int, dropout: float):
        super().__init__()
        self.weight = nn.Parameter(xavier_normal(n_in, n_out))
        bound = 1.0 / math.sqrt(n_in)
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mean: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out = F.normalize(mean(x @ self.weight) + self.bias, dim=-1)
        return F.dropout(out, self.dropout, training=self.training)


class GaussianEncoder(nn.Module):
    """One expert (MMRec's ``GCN``): the user preferences, the item input's projection, the
    convolution blocks and the μ / log σ² heads.

    Args:
        n_users: users (one preference vector each).
        input_dim: width of the items' input (a modality's feature, or the id table).
        latent_dim: layer-0 width.
        embedding_dim: d.
        layers: blocks before the heads.
        dropout: rate after every convolution (training).
        frozen: the preferences as a fixed buffer rather than a parameter.
    """

    def __init__(
        self,
        n_users: int,
        input_dim: int,
        latent_dim: int,
        embedding_dim: int,
        layers: int,
        dropout: float,
        frozen: bool = False,
    ):
        super().__init__()
        preference = xavier_normal(n_users, latent_dim)
        if frozen:
            self.register_buffer("preference", preference)
        else:
            self.preference = nn.Parameter(preference)
        self.projection = xavier_linear(input_dim, latent_dim)
        ins = [latent_dim] + [embedding_dim] * (layers - 1)
        self.convs = nn.ModuleList([GraphConv(n, embedding_dim, dropout) for n in ins])
        # MMRec re-draws the first block's combination weight only; the second keeps nn.Linear's
        self.combine = nn.ModuleList(
            [xavier_linear(embedding_dim, embedding_dim)]
            + [nn.Linear(embedding_dim, embedding_dim) for _ in range(layers - 1)]
        )
        self.mu_conv, self.logvar_conv = (GraphConv(embedding_dim, embedding_dim, dropout) for _ in range(2))
        self.mu_combine, self.mu_own = (
            xavier_linear(embedding_dim, embedding_dim),
            xavier_linear(embedding_dim, embedding_dim),
        )
        self.logvar_combine = xavier_linear(embedding_dim, embedding_dim)
        self.logvar_own = xavier_linear(embedding_dim, embedding_dim)

    def forward(self, items: torch.Tensor, mean) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of every node, users then items, each ``[n_users + n_items, d]``.

        Args:
            items: the items' input ``[n_items, input_dim]``.
            mean: ``y -> (A + I)·y / (deg + 1)``, the mean over each node and its neighbours.
        """
        x = F.normalize(torch.cat([self.preference, self.projection(items)]), dim=1)
        for conv, combine in zip(self.convs, self.combine, strict=True):
            x = F.leaky_relu(combine(F.leaky_relu(conv(x, mean))))
        mu = self.mu_combine(F.leaky_relu(self.mu_conv(x, mean))) + F.leaky_relu(self.mu_own(x))
        logvar = self.logvar_combine(F.leaky_relu(self.logvar_conv(x, mean))) + F.leaky_relu(self.logvar_own(x))
        return mu, logvar


def product_of_experts(experts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The product of independent Gaussians (μ_e, log σ²_e): precision T_e = 1 / (σ²_e + ε),
    μ = Σ μ_e T_e / Σ T_e, log σ² = log(1 / Σ T_e)."""
    precision = [1.0 / (pointwise(torch.exp, logvar) + POE_EPS) for _, logvar in experts]
    total = torch.stack(precision).sum(0)
    mu = torch.stack([m * t for (m, _), t in zip(experts, precision, strict=True)]).sum(0) / total
    return mu, pointwise(torch.log, 1.0 / total)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """−½ · mean over rows of Σ_k (1 + log σ² − μ² − σ²), log σ² clamped at :data:`MAX_LOGVAR`."""
    logvar = logvar.clamp(max=MAX_LOGVAR)
    return -0.5 * full_sum(1 + logvar - mu.pow(2) - pointwise(torch.exp, logvar)) / mu.shape[0]


def reconstruction_loss(z: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """−Σ_b log₂ σ(σ(⟨ẑ_u, ẑ_i⁺⟩) − σ(max_j ⟨ẑ_u, ẑ_j⁻⟩)), ẑ = sigmoid(z), j over all of ``neg``.

    Args:
        z: the latent rows of every node ``[n_nodes, d]``.
        users, pos: the batch's user and positive-item *node* indices ``[B]``.
        neg: the batch's negative-item node indices ``[M]`` (all candidates of every row).
    """
    u, p, n = (pointwise(torch.sigmoid, z[ids]) for ids in (users, pos, neg))
    pos_score = pointwise(torch.sigmoid, (u * p).sum(-1))
    neg_score = pointwise(torch.sigmoid, (u @ n.T).max(dim=1).values)
    return -full_sum(pointwise(F.logsigmoid, pos_score - neg_score)) / math.log(2.0)


@register
class MVGAE(Recommender):
    r"""MVGAE ("Multi-Modal Variational Graph Auto-Encoder for Recommendation Systems",
    Yi & Chen, IEEE Transactions on Multimedia 2021).

    Each expert e (one per modality, plus the collaborative one over item id embeddings)
    encodes every node v as a Gaussian :math:`\mathcal{N}(\mu^e_v, \mathrm{diag}\,\sigma^{e\,2}_v)`
    with a graph convolution network over the user–item graph (see the module docstring),
    and the experts are fused by their product,

    .. math::
        \mu_v = \frac{\sum_e \mu^e_v / \sigma^{e\,2}_v}{\sum_e 1 / \sigma^{e\,2}_v}, \qquad
        \sigma^2_v = \Big(\sum_e 1 / \sigma^{e\,2}_v\Big)^{-1}

    (the modalities first, then with the collaborative expert). Training samples
    :math:`z = \mu + s\,\epsilon\,\sigma`, :math:`\epsilon \sim \mathcal{N}(0, I)`, and
    minimises, over the fused Gaussian and each expert's,

    .. math::
        -\sum_{b} \log_2 \sigma\big(\sigma(\hat z_u^\top \hat z_{i^+}) -
        \sigma(\max_j \hat z_u^\top \hat z_{j^-})\big)
        + \beta\, \mathrm{KL}\big(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathcal{N}(0, I)\big)

    with :math:`\hat z = \mathrm{sigmoid}(z)`. Users and items are represented by
    :math:`\mathrm{sigmoid}(\mu)`; score = dot product.

    Args:
        n_users, n_items: graph sizes.
        feature_dims: modality name -> raw feature width (one expert each).
        embedding_dim: d, the Gaussians' and the collaborative item table's width (64).
        latent_dim: layer-0 width of every expert (128).
        layers: convolution blocks before the heads (1).
        beta: β, the KL weight (0.1; 0 drops the term).
        dropout: dropout after every convolution, training only (0.1).
        sample_scale: s, the scale of the training draw (0.1).
        frozen_embeddings: keep the preferences and the item id table at their random draw
            (buffers), as MMRec's code does.
    """

    name = "mvgae"
    Config = MVGAEConfig
    uses_features = True
    #: The grid ``tune.spaces.mvgae`` defaults to (docs/tuning.md): MMRec's, 12 points.
    search_space = {"train.lr": [0.0001, 0.001, 0.01, 0.1], "beta": [0.01, 0.1, 1.0]}
    preferred_loss = "none"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_dims: dict[str, int],
        *,
        embedding_dim: int = 64,
        latent_dim: int = 128,
        layers: int = 1,
        beta: float = 0.1,
        dropout: float = 0.1,
        sample_scale: float = 0.1,
        frozen_embeddings: bool = False,
    ):
        super().__init__()
        if not feature_dims:
            raise ValueError("MVGAE needs at least one modality")
        self.n_users, self.n_items = n_users, n_items
        self.modalities = list(feature_dims)
        self.beta, self.sample_scale = beta, sample_scale

        def encoder(input_dim: int) -> GaussianEncoder:
            return GaussianEncoder(
                n_users, input_dim, latent_dim, embedding_dim, layers, dropout, frozen=frozen_embeddings
            )

        self.encoders = nn.ModuleDict({m: encoder(d) for m, d in feature_dims.items()})
        ids = xavier_normal(n_items, embedding_dim)  # MMRec's "collaborative" item input
        if frozen_embeddings:
            self.register_buffer("item_id", ids)
        else:
            self.item_id = nn.Parameter(ids)
        self.collaborative = encoder(embedding_dim)

    @classmethod
    def build(cls, data: GraphData, cfg: MVGAEConfig, modalities: Sequence[str] | None = None, *unused) -> MVGAE:
        modalities = list(modalities or data.features)
        return cls(
            data.n_users,
            data.n_items,
            {m: data.features[m].shape[1] for m in modalities},
            embedding_dim=cfg.embedding_dim,
            latent_dim=cfg.latent_dim,
            layers=cfg.layers,
            beta=cfg.beta,
            dropout=cfg.dropout,
            sample_scale=cfg.sample_scale,
            frozen_embeddings=cfg.frozen_embeddings,
        )

    @staticmethod
    def self_and_neighbour_mean(adj: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``y -> (A + I)·y / (deg + 1)``: the mean over each node and its neighbours, A the
        0/1 pattern of the normalised adjacency ``adj`` (CSR, symmetric)."""
        crow, col = adj.crow_indices(), adj.col_indices()
        pattern = torch.sparse_csr_tensor(crow, col, torch.ones_like(adj.values()), adj.shape)
        inverse = (1.0 / ((crow[1:] - crow[:-1]).to(adj.values().dtype) + 1.0)).unsqueeze(1)
        return lambda y: (spmm(pattern, y) + y) * inverse

    def experts(self, data: GraphData) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(μ, log σ²) of each expert: the modalities in order, then the collaborative one."""
        mean = self.self_and_neighbour_mean(data.adj)
        out = [self.encoders[m](data.features[m], mean) for m in self.modalities]
        return out + [self.collaborative(self.item_id, mean)]

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = μ + s·ε·exp(½ log σ²) (log σ² clamped), ε from torch's seeded generator."""
        std = pointwise(torch.exp, 0.5 * logvar.clamp(max=MAX_LOGVAR))
        return mu + torch.randn_like(std) * self.sample_scale * std

    def forward(self, data: GraphData) -> Embeddings:
        """sigmoid(fused μ) of every user and item; in training mode also the Gaussians and
        their draws (``extras["gaussians"]``: the fused one first, then each expert's)."""
        experts = self.experts(data)
        content = experts[0] if len(self.modalities) == 1 else product_of_experts(experts[:-1])
        mu, logvar = product_of_experts([content, experts[-1]])
        out = pointwise(torch.sigmoid, mu)
        extras = {}
        if self.training:
            extras["gaussians"] = [(m, lv, self.sample(m, lv)) for m, lv in [(mu, logvar)] + experts]
        return Embeddings(user=out[: self.n_users], item=out[self.n_users :], extras=extras)

    def extra_losses(self, emb: Embeddings, batch: Batch) -> dict[str, Term]:
        """``recon`` (weight 1) and ``kl`` (weight β), each summed over the fused Gaussian
        and every expert's (from a training-mode forward)."""
        gaussians = emb.extras["gaussians"]
        pos, neg = self.n_users + batch.pos, self.n_users + batch.neg.reshape(-1)
        recon = sum(reconstruction_loss(z, batch.users, pos, neg) for _, _, z in gaussians)
        terms = {"recon": Term(recon, 1.0)}
        if self.beta:
            terms["kl"] = Term(sum(kl_to_standard_normal(mu, lv) for mu, lv, _ in gaussians), self.beta)
        return terms
