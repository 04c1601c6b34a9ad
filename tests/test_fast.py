"""The composed formulation of SEA's split (sea/models/separation.py, SplitFeatures) is the
same function as the plain one: on the same batch, every model that reads a split gives
the same outputs, losses, estimator fits and gradients, whichever formulation it uses."""

from __future__ import annotations

import copy

import pytest
import torch

from sea.losses import RankingLoss
from sea.models.base import GraphData
from sea.models.separation import set_composed
from tests.test_sea import make, make_batch

VARIANTS = {
    "sea": ("sea", {}, {}, {}),
    "sea_reference_pairing": ("sea", {}, {}, {"pairing": "reference"}),
    "sea_l2": ("sea", {}, {"distance": "l2"}, {}),
    "vbpr_sea": ("vbpr", {"separation": "sea"}, {}, {}),
    "freedom_sea": ("freedom", {"separation": "sea", "dropout": 0.0}, {}, {}),
}


def one_step(model, data: GraphData, batch, seed: int = 7):
    """Outputs, the estimators' fit logs, every loss term and every gradient of one step
    (the trainer's order: forward, estimator fit, losses, backward)."""
    torch.manual_seed(seed)  # CLUB's permutation of negatives
    model.train()
    emb = model(data)
    logs = model.auxiliary_step(emb, batch)
    terms = {"bpr": RankingLoss("bpr")(emb, batch)} | {k: t.value for k, t in model.extra_losses(emb, batch).items()}
    total = sum(terms.values())
    model.zero_grad(set_to_none=True)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return emb, logs, terms, grads


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_composed_and_plain_split_give_the_same_step(variant, dtype):
    name, cfg, loss, club = VARIANTS[variant]
    fast, data = make(name, cfg, loss=loss, club=club, feature_dims={"image": 96, "text": 40})
    data.features = {m: x.to(dtype) for m, x in data.features.items()}
    data.adj = data.adj.to(dtype)
    fast = fast.to(dtype)
    plain = copy.deepcopy(fast)
    assert set_composed(plain, False) == 1
    assert fast.separation.compose and not plain.separation.compose
    batch = make_batch(data, n=48, negatives=2)

    emb_f, logs_f, terms_f, grads_f = one_step(fast, data, batch)
    emb_p, logs_p, terms_p, grads_p = one_step(plain, data, batch)

    # float64 is the tight check; float32 sums over thousands of terms in another order
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 1e-4}
    torch.testing.assert_close(emb_f.user, emb_p.user, **tol)
    torch.testing.assert_close(emb_f.item, emb_p.item, **tol)
    assert logs_f.keys() == logs_p.keys()
    for k in logs_f:
        torch.testing.assert_close(torch.as_tensor(logs_f[k]), torch.as_tensor(logs_p[k]), **tol)
    assert terms_f.keys() == terms_p.keys() and {"bpr", "club"} <= terms_f.keys()
    for k in terms_f:
        torch.testing.assert_close(terms_f[k], terms_p[k], **tol)
    assert grads_f.keys() == grads_p.keys()
    assert any(n.startswith("separation.split.") for n in grads_f)  # W itself is trained
    # each gradient relative to its own size; a gradient that is 0 in exact arithmetic (a
    # bias before batch norm) is rounding noise in both, compared at the largest one's size
    floor = max(g.abs().max() for g in grads_p.values()) * (1e-4 if dtype == torch.float64 else 1e-2)
    for n in grads_f:
        scale = grads_p[n].abs().max().clamp(min=floor)
        torch.testing.assert_close(grads_f[n] / scale, grads_p[n] / scale, **tol, msg=lambda m, n=n: f"{n}: {m}")
    # and the estimators were fitted to the same values
    for (n, a), (_, b) in zip(fast.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=n: f"{n}: {m}")


def test_composed_projection_reads_only_the_rows_and_part_asked_for():
    model, data = make("sea", feature_dims={"image": 30, "text": 12})
    split = model.separation(data.features)
    layer = torch.nn.Linear(15, 4)
    rows = torch.tensor([[3, 1], [1, 0]])  # any index shape, repeats allowed
    expected = layer(split.parts("image")[1][rows])
    torch.testing.assert_close(split.apply("image", layer, "unique", rows), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="part"):
        split.apply("image", layer, "middle", rows)


def test_fixed_sparse_products_have_torchs_value_and_gradient():
    from sea.models.graphs import FrozenGraph, item_item_graph, spmm, user_item_adjacency

    g = torch.Generator().manual_seed(3)
    users, items = torch.randint(0, 40, (300,), generator=g), torch.randint(0, 25, (300,), generator=g)
    adj = user_item_adjacency(users.numpy(), items.numpy(), 40, 25)
    dense = adj.to_dense()
    assert torch.equal(dense, dense.T)  # exactly symmetric: its own transpose serves the backward
    knn = item_item_graph({"image": torch.randn(25, 6, generator=g), "text": torch.randn(25, 5, generator=g)}, 3, 0.3)
    assert not torch.equal(knn.to_dense(), knn.to_dense().T)  # a kNN graph is not
    for matrix, product in [
        (adj, lambda x: spmm(adj, x)),
        (knn, FrozenGraph(knn)),
        (adj, FrozenGraph(adj, symmetric=True)),
    ]:
        x = torch.randn(matrix.shape[1], 4, generator=g, dtype=torch.float64)
        w = torch.randn(matrix.shape[0], 4, generator=g, dtype=torch.float64)
        ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = product(ours.float()).double()
        expected = torch.sparse.mm(matrix, ref.float()).double()
        (out * w).sum().backward()
        (expected * w).sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-6, atol=1e-6)
