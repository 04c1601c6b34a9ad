"""ItemKNNCBF (Ferrari Dacrema, Cremonesi & Jannach, RecSys 2019): the content-based
item-kNN baseline, with nothing learnt by gradient (``trainable = False``: the trainer
evaluates it once).

Each item's neighbours are the ``knn_k`` items whose features are most similar to its own
by a cosine with a shrink term; a user's score for an item is the sum of the similarities
of that item's neighbours the user trained on. Built once, chunk-wise
(:func:`shrunk_cosine_knn`): only the sparse top-k lists are kept.

The features are the modalities of ``model.modalities``, each first divided by its mean
row norm (one number per modality) so that every modality weighs the same on average
while items keep their relative norms; ``combine: concat`` (default) then takes one
similarity of the concatenated features (the paper's single ICM: their code stacks
feature sets side by side), ``combine: sum`` sums one similarity per modality.

Differences from the reference code (MaurizioFD/RecSys2019_DeepLearning_Evaluation,
``ItemKNNCBFRecommender`` with ``Compute_Similarity``; MMRec has no ItemKNNCBF):

- its ICMs are sparse token counts, weighted optionally by BM25 or TF-IDF
  (``feature_weighting``); these features are dense embeddings, for which neither
  weighting is defined, so there is no such knob (the reference's default is ``none``);
- the per-modality scaling above is ours (the reference has one ICM). Scaling each row to
  unit norm instead would turn the shrink term into one constant factor, with no effect
  on any ranking;
- only the cosine of ``Compute_Similarity``'s similarities (its default) is implemented.

As in the reference: the denominator is ‖x_i‖‖x_j‖ + shrink + 1e-6; an item's own
similarity is set to 0 before its top-k is taken, and zero similarities are dropped
from the lists; the history a user's score sums over is binary (distinct training items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sea.batch import Embeddings
from sea.config import Section, require, require_choice
from sea.models.base import GraphData, Recommender, register
from sea.models.graphs import FrozenGraph
from sea.ops import full_mean

#: Added to every denominator, as the reference does (a zero feature row gives 0, not NaN).
EPS = 1e-6
#: Similarities computed at once while building the lists: rows per chunk = this // n_items.
CHUNK_ELEMENTS = 1 << 24
COMBINE = ("concat", "sum")


@dataclass
class ItemKNNCBFConfig(Section):
    """params.yaml [itemknncbf]. Defaults: the reference's ``fit`` (topK 50, shrink 100)."""

    knn_k: int = 50  # neighbours kept per item; paper's search: 5 to 800
    shrink: float = 100.0  # added to the cosine's denominator; paper's search: 0 to 1000
    combine: str = "concat"  # concat: one similarity of the concatenated modalities | sum: one per modality, summed

    def validate(self, section: str) -> None:
        require(self.knn_k >= 1, section, f"knn_k must be >= 1, got {self.knn_k}")
        require(self.shrink >= 0, section, f"shrink must be >= 0, got {self.shrink}")
        require_choice(self.combine, COMBINE, section, "combine")


def shrunk_cosine_knn(
    features: Sequence[torch.Tensor], k: int, shrink: float, rows_per_chunk: int | None = None
) -> torch.Tensor:
    """The top-``k`` neighbours of every item by the shrunk cosine, as an (n, n) CSR matrix.

    Row j holds sim(j, i) = Σ_b x^b_j·x^b_i / (‖x^b_j‖‖x^b_i‖ + shrink + 1e-6) (a sum over
    the blocks ``features``, each ``[n, d_b]``) for the ``k`` largest i, with sim(j, j) set
    to 0 before the selection and zero values left out. Computed ``rows_per_chunk`` rows at
    a time (default: about 16M similarities per chunk, a function of n alone, so the result
    is too); never the whole n × n matrix.
    """
    n = features[0].shape[0]
    k = min(k, n)
    norms = [x.norm(dim=1) for x in features]
    step = rows_per_chunk or max(1, CHUNK_ELEMENTS // max(n, 1))
    rows, cols, vals = [], [], []
    for start in range(0, n, step):
        stop = min(n, start + step)
        sim = sum(
            (x[start:stop] @ x.T) / (nx[start:stop, None] * nx[None, :] + (shrink + EPS))
            for x, nx in zip(features, norms, strict=True)
        )
        own = torch.arange(stop - start, device=sim.device)
        sim[own, own + start] = 0.0
        values, index = sim.topk(k, dim=1)
        keep = values != 0
        rows.append((own + start)[:, None].expand(-1, k)[keep])
        cols.append(index[keep])
        vals.append(values[keep])
    coo = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), (n, n))
    return coo.coalesce().to_sparse_csr()


def feature_blocks(features: dict[str, torch.Tensor], combine: str) -> list[torch.Tensor]:
    """Each modality divided by its mean row norm; one block (``concat``) or one per
    modality (``sum``), in the order given."""
    scaled = []
    for x in features.values():
        x = x.float()
        mean_norm = float(full_mean(x.norm(dim=1)))
        scaled.append(x / mean_norm if mean_norm > 0 else x)
    return [torch.cat(scaled, dim=1)] if combine == "concat" else scaled


@register
class ItemKNNCBF(Recommender):
    r"""ItemKNNCBF ("Are We Really Making Much Progress? A Worrying Analysis of Recent Neural
    Recommendation Approaches", Ferrari Dacrema, Cremonesi & Jannach, RecSys 2019): the
    content-based item-kNN baseline. With :math:`\mathbf{x}_i` an item's features,

    .. math::
        s(j, i) = \frac{\mathbf{x}_j \cdot \mathbf{x}_i}{\lVert\mathbf{x}_j\rVert\,
        \lVert\mathbf{x}_i\rVert + \text{shrink}}, \qquad
        \text{score}(u, j) = \sum_{i \in I_u \cap N_k(j)} s(j, i)

    where :math:`N_k(j)` are the ``knn_k`` items of largest :math:`s(j, \cdot)` (j itself
    excluded) and :math:`I_u` the user's training items. ``combine: sum`` replaces
    :math:`s` by the sum of one such term per modality. Nothing is learnt
    (``trainable = False``) and the state dict is empty: the lists are rebuilt from the
    features by :meth:`build`.

    :meth:`forward` returns zero-width user and item vectors and the users' training items
    in ``extras["history"]``; :meth:`score` adds, for each user of a batch, the sparse
    columns of the lists of its training items (the history row times the transposed
    lists, never a dense items × items matrix).

    Args:
        n_users, n_items: graph sizes.
        neighbours: the (n_items, n_items) sparse matrix of :func:`shrunk_cosine_knn`,
            row j holding :math:`s(j, i)` for :math:`i \in N_k(j)`.
    """

    name = "itemknncbf"
    Config = ItemKNNCBFConfig
    uses_features = True
    trainable = False
    #: The grid ``tune.spaces.itemknncbf`` defaults to (docs/tuning.md).
    search_space = {"knn_k": [10, 50, 100, 200], "shrink": [0.0, 1.0, 10.0]}

    def __init__(self, n_users: int, n_items: int, neighbours: torch.Tensor):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.neighbours = FrozenGraph(neighbours)

    @classmethod
    def build(
        cls, data: GraphData, cfg: ItemKNNCBFConfig, modalities: Sequence[str] | None = None, *unused
    ) -> ItemKNNCBF:
        modalities = list(modalities or data.features)
        blocks = feature_blocks({m: data.features[m] for m in modalities}, cfg.combine)
        return cls(data.n_users, data.n_items, shrunk_cosine_knn(blocks, cfg.knn_k, cfg.shrink))

    def forward(self, data: GraphData) -> Embeddings:
        """Zero-width vectors and ``extras["history"]``: (crow, col) of every user's
        distinct training items, sorted."""
        device = self.neighbours.values.device
        key = torch.unique(data.train_users.to(device) * self.n_items + data.train_items.to(device))
        users, items = key // self.n_items, key % self.n_items
        crow = torch.zeros(self.n_users + 1, dtype=torch.long, device=device)
        crow[1:] = torch.bincount(users, minlength=self.n_users).cumsum(0)
        return Embeddings(
            torch.zeros(self.n_users, 0, device=device),
            torch.zeros(self.n_items, 0, device=device),
            {"history": (crow, items)},
        )

    def score(self, emb: Embeddings, users: torch.Tensor) -> torch.Tensor:
        """``[len(users), n_items]``: for each user, the sum over its training items i of
        column i of the neighbour lists (s(j, i) for every j with i in N_k(j)), added in a
        fixed order (items ascending) whatever the thread count."""
        crow, items = emb.extras["history"]
        owner, history = csr_entries(crow, users)  # (row in the batch, training item), users' items ascending
        lists = self.neighbours.transpose  # row i: the items j with i among their neighbours, and s(j, i)
        entry, pos = csr_entries(lists.crow_indices(), items[history])
        out = torch.zeros(len(users) * self.n_items, device=crow.device)
        out.index_add_(0, owner[entry] * self.n_items + lists.col_indices()[pos], lists.values()[pos])
        return out.view(len(users), self.n_items)


def csr_entries(crow: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of ``rows`` of a CSR matrix with row pointers ``crow``, in order: for each,
    its position in ``rows`` and its position in the matrix's column and value arrays."""
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    which = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    first = torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts)
    return which, first + torch.arange(len(which), device=rows.device)
