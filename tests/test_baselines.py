"""BPR-MF and LightGCN against their definitions on a hand-sized graph, and LightGCN
against PyG's implementation with the same weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from sea.batch import Batch
from sea.errors import ConfigError
from sea.losses import embedding_l2, rows_norm
from sea.models.base import GraphData, model_class
from sea.models.bprmf import BPRMF
from sea.models.lightgcn import LightGCN
from sea.setup import TrainingSetup

# 3 users, 4 items; user 2 has a valid and a test item
EDGES = [(0, 0), (0, 1), (1, 1), (1, 2), (1, 3), (2, 0), (2, 3)]


@pytest.fixture
def data() -> GraphData:
    rows = [(u, i, "train") for u, i in EDGES] + [(2, 1, "valid"), (2, 2, "test")]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    return GraphData.build(inter, n_items=4)


def dense_adjacency(n_users: int, n_items: int, edges) -> np.ndarray:
    """D^-1/2 A D^-1/2 of the bipartite graph, users first, written out by hand."""
    a = np.zeros((n_users + n_items, n_users + n_items))
    for u, i in edges:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    d = a.sum(1)
    return a / np.sqrt(np.outer(d, d))


def batch() -> Batch:
    return Batch(users=torch.tensor([0, 2]), pos=torch.tensor([1, 3]), neg=torch.tensor([[2, 3], [1, 2]]))


def test_registry_and_sections():
    assert model_class("bprmf") is BPRMF and model_class("lightgcn") is LightGCN
    setup = TrainingSetup.from_params({"model": {"name": "lightgcn"}, "lightgcn": {"layers": 2, "reg_weight": 0.5}})
    assert (setup.model_cfg.layers, setup.model_cfg.reg_weight, setup.model_cfg.embedding_dim) == (2, 0.5, 64)
    for section, values in [
        ("lightgcn", {"layers": -1}),
        ("lightgcn", {"reg_weight": -1.0}),
        ("bprmf", {"embedding_dim": 0}),
        ("bprmf", {"layers": 2}),
    ]:
        with pytest.raises(ConfigError, match=section):
            TrainingSetup.from_params({"model": {"name": section}, section: values})


def test_bprmf_scores_are_dot_products_of_its_embeddings(data):
    torch.manual_seed(0)
    model = BPRMF.build(data, BPRMF.Config(embedding_dim=5, reg_weight=0.1))
    emb = model(data)
    u, v = model.user_emb.weight.detach().numpy(), model.item_emb.weight.detach().numpy()
    np.testing.assert_allclose(model.score(emb, torch.tensor([2, 0])).detach().numpy(), (u @ v.T)[[2, 0]], rtol=1e-6)


def test_bprmf_regulariser_is_mmrec_embedding_norm(data):
    torch.manual_seed(0)
    model = BPRMF.build(data, BPRMF.Config(embedding_dim=5, reg_weight=0.1))
    b = batch()
    terms = model.extra_losses(model(data), b)
    u, v = model.user_emb.weight.detach().numpy(), model.item_emb.weight.detach().numpy()
    # sum of the Frobenius norms of the batch's user, positive and negative vectors / batch size
    expected = (np.linalg.norm(u[[0, 2]]) + np.linalg.norm(v[[1, 3]]) + np.linalg.norm(v[[2, 3, 1, 2]])) / 2
    assert terms["reg"].value.item() == pytest.approx(expected, rel=1e-5)
    assert terms["reg"].weight == 0.1
    assert BPRMF.build(data, BPRMF.Config(reg_weight=0.0)).extra_losses(model(data), b) == {}


def test_embedding_l2_hand_values():
    a, b = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    rows = torch.tensor([0, 1])
    assert embedding_l2((a, rows), (b, rows)).item() == pytest.approx((5.0 + 1.0) / 2)
    # rows of a lookup repeat: [3, 4] twice and [1, 0] four times
    assert embedding_l2((a, torch.tensor([0, 0])), (b, torch.tensor([[0, 0], [0, 0]]))).item() == pytest.approx(
        (50**0.5 + 2.0) / 2
    )


@pytest.mark.parametrize("shape", [(5,), (6, 40)])  # fewer ids than rows (gathered), more (counted)
def test_rows_norm_is_the_norm_of_the_gathered_rows_with_its_gradient(shape):
    torch.manual_seed(0)
    table = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(30, shape)
    got = rows_norm(table, ids)
    (grad,) = torch.autograd.grad(got, table)
    expected = table[ids].norm()
    (expected_grad,) = torch.autograd.grad(expected, table)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_lightgcn_is_the_mean_of_propagated_layers(data, layers):
    torch.manual_seed(1)
    model = LightGCN.build(data, LightGCN.Config(embedding_dim=4, layers=layers))
    emb = model(data)
    a_hat = dense_adjacency(3, 4, EDGES)
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().double().numpy()
    expected = sum(np.linalg.matrix_power(a_hat, k) @ x for k in range(layers + 1)) / (layers + 1)
    np.testing.assert_allclose(emb.user.detach().numpy(), expected[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.item.detach().numpy(), expected[3:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 3])
def test_lightgcn_equals_pyg_lightgcn_with_the_same_weights(data, layers):
    torch.manual_seed(2)
    model = LightGCN.build(data, LightGCN.Config(embedding_dim=8, layers=layers))
    pyg = PyGLightGCN(num_nodes=3 + 4, embedding_dim=8, num_layers=layers)
    with torch.no_grad():
        pyg.embedding.weight.copy_(torch.cat([model.user_emb.weight, model.item_emb.weight]))
    users, items = data.train_users, data.train_items + data.n_users
    edge_index = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
    theirs = pyg.get_embedding(edge_index)
    ours = model(data)
    torch.testing.assert_close(torch.cat([ours.user, ours.item]), theirs, rtol=1e-5, atol=1e-6)


def test_lightgcn_regularises_layer_zero_vectors(data):
    torch.manual_seed(3)
    model = LightGCN.build(data, LightGCN.Config(embedding_dim=4, layers=2, reg_weight=0.01))
    b = batch()
    terms = model.extra_losses(model(data), b)
    u, v = model.user_emb.weight.detach().numpy(), model.item_emb.weight.detach().numpy()
    expected = (np.linalg.norm(u[[0, 2]]) + np.linalg.norm(v[[1, 3]]) + np.linalg.norm(v[[2, 3, 1, 2]])) / 2
    assert terms["reg"].value.item() == pytest.approx(expected, rel=1e-5)
    assert terms["reg"].weight == 0.01


def test_lightgcn_propagates_only_training_edges(data):
    # user 2's valid item 1 and test item 2 must not leak into the graph
    torch.manual_seed(4)
    model = LightGCN.build(data, LightGCN.Config(embedding_dim=4, layers=1))
    with torch.no_grad():
        model.user_emb.weight.zero_()
        model.item_emb.weight.zero_()
        model.item_emb.weight[2] = 1.0  # only item 2 carries a signal
    emb = model(data)
    assert emb.user[2].abs().sum().item() == 0.0  # item 2 is not a training neighbour of user 2
    assert emb.user[1].abs().sum().item() > 0.0  # but it is one of user 1
