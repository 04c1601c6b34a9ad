"""LATTICE checked against its definition (sea/models/lattice.py), recomputed here with
dense matrices on a hand-sized graph: the frozen and learned kNN graphs, the item graph's
hops, the LightGCN backbone, the regulariser, the gradients into the projections through
the kept edges, and when the learned graph is rebuilt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from model_checks import assert_training_lowers_loss, edge_batch

from sea.config import load_params
from sea.errors import ConfigError
from sea.losses import bpr_loss
from sea.models.base import GraphData, model_class
from sea.models.graphs import knn_lists
from sea.models.lattice import LATTICE, LATTICEConfig, initial_graph
from sea.tune import TuneConfig, grid_points

K = 3


def tiny_data(dims=None, n_items: int = 6) -> GraphData:
    """4 users, 6 items, every split non-empty; random features (no ties among cosines)."""
    dims = dims or {"image": 5, "text": 4}
    rows = [
        (0, 0, "train"),
        (0, 1, "train"),
        (0, 4, "train"),
        (1, 1, "train"),
        (1, 2, "train"),
        (2, 3, "train"),
        (2, 5, "train"),
        (3, 0, "train"),
        (3, 5, "train"),
        (0, 2, "valid"),
        (1, 3, "valid"),
        (2, 4, "test"),
        (3, 1, "test"),
    ]
    inter = pd.DataFrame(rows, columns=["user", "item", "split"])
    g = np.random.default_rng(5)
    return GraphData.build(inter, n_items, {m: g.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()})


def build(data: GraphData, **overrides) -> LATTICE:
    torch.manual_seed(0)
    cfg = LATTICEConfig.from_dict({"embedding_dim": 4, "feat_embed_dim": 3, "knn_k": K} | overrides, "lattice")
    model = LATTICE.build(data, cfg, list(data.features))
    with torch.no_grad():  # modality weights away from their equal start, so that α matters
        model.modal_weight.copy_(torch.linspace(-0.4, 0.3, len(model.modalities)))
    return model


# ------------------------------------------------------------------ the definition, densely


def dense_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """S[i, j] = cos(x_i, x_j) for the k largest cosines of row i (itself included), else 0."""
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    keep = torch.zeros_like(sim).scatter_(1, sim.detach().topk(k, dim=1).indices, 1.0)
    return sim * keep


def dense_norm(s: torch.Tensor) -> torch.Tensor:
    d = s.sum(1).pow(-0.5)
    return d[:, None] * s * d[None, :]


def reference(model: LATTICE, data: GraphData) -> tuple[torch.Tensor, torch.Tensor]:
    """(user vectors, item vectors) from the paper's formulas (MMRec's order of the
    modality mix), dense, differentiable in the model's parameters. With SEA's separation
    the projections read each modality's materialised split [g; s]."""
    feats = {m: data.features[m].double() for m in model.modalities}
    inputs = feats
    if model.separation is not None:
        split = model.separation.split
        inputs = {m: F.linear(feats[m], split[m].weight.double(), split[m].bias.double()) for m in feats}
    alpha = torch.softmax(model.modal_weight.double(), 0)
    initial = sum(alpha[j] * dense_norm(dense_knn(feats[m], K)) for j, m in enumerate(model.modalities))
    learned = dense_norm(
        sum(
            alpha[j] * dense_knn(F.linear(inputs[m], *(p.double() for p in model.projections[m].parameters())), K)
            for j, m in enumerate(model.modalities)
        )
    )
    lam = model.lambda_coeff
    a = (1 - lam) * learned + lam * initial
    h = model.item.weight.double()
    for _ in range(model.n_layers):
        h = a @ h
    n_users, n_items = data.n_users, data.n_items
    adj = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    adj[data.train_users, n_users + data.train_items] = 1.0
    adj[n_users + data.train_items, data.train_users] = 1.0
    adj = dense_norm(adj)
    x = torch.cat([model.user.weight, model.item.weight]).double()
    layers = [x]
    for _ in range(model.cf_layers):
        layers.append(adj @ layers[-1])
    out = torch.stack(layers).mean(0)
    return out[:n_users], out[n_users:] + F.normalize(h, dim=1)


# ------------------------------------------------------------------ graphs


@pytest.mark.parametrize("m", ["image", "text"])
def test_initial_graph_is_the_normalised_weighted_knn_of_the_raw_features(m):
    data = tiny_data()
    model = build(data)
    expected = dense_norm(dense_knn(data.features[m].double(), K))
    got = model.initial[m].matrix.to_dense().double()
    assert got.count_nonzero() == data.n_items * K  # top-k lists, kept sparse
    assert torch.allclose(got, expected, atol=1e-6)


def test_knn_lists_do_not_depend_on_the_chunk():
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(23, 7)), dtype=torch.float32)
    whole, whole_cos = knn_lists(x, 4, 1024)
    for chunk in (1, 5, 22):
        idx, cos = knn_lists(x, 4, chunk)
        assert torch.equal(idx, whole) and torch.allclose(cos, whole_cos)
    assert torch.equal(whole[:, 0], torch.arange(23))  # each item is its own nearest neighbour
    sparse = initial_graph(x, 4, 5)
    assert sparse.layout == torch.sparse_csr and sparse.values().numel() == 23 * 4


def test_knn_k_above_the_item_count_keeps_every_item():
    x = torch.randn(3, 2)
    idx, _ = knn_lists(x, 10, 2)
    assert idx.shape == (3, 3) and torch.equal(idx.sort(1).values, torch.arange(3).expand(3, 3))


# ------------------------------------------------------------------ forward and loss


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_layers": 2, "cf_layers": 1, "lambda_coeff": 0.5},
        {"lambda_coeff": 0.0},
        {"lambda_coeff": 1.0},
        {"knn_chunk": 2},
    ],
)
def test_forward_matches_the_definition(overrides):
    data = tiny_data()
    model = build(data, **overrides).eval()
    with torch.no_grad():
        emb = model(data)
        user, item = reference(model, data)
    assert torch.allclose(emb.user.double(), user, atol=1e-5)
    assert torch.allclose(emb.item.double(), item, atol=1e-5)
    # training mode's first forward is the same function of the same weights
    with torch.no_grad():
        train_emb = model.train()(data)
    assert torch.allclose(train_emb.item, emb.item, atol=1e-6)


def test_one_modality():
    data = tiny_data({"text": 4})
    model = build(data).eval()
    with torch.no_grad():
        assert torch.allclose(model(data).item.double(), reference(model, data)[1], atol=1e-5)


def test_reg_term_is_half_the_squared_norms_over_the_batch():
    data = tiny_data()
    model = build(data, reg_weight=1e-3)
    emb, batch = model.train()(data), edge_batch(data, 2)
    term = model.extra_losses(emb, batch)["reg"]
    u, p, n = emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg]
    expected = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(batch.users)
    assert term.weight == 1e-3 and torch.allclose(term.value, expected)
    assert build(data, reg_weight=0.0).extra_losses(emb, batch) == {}


# ------------------------------------------------------------------ gradients and the rebuild schedule


def test_gradients_match_the_dense_definition_and_reach_every_parameter():
    data = tiny_data()
    model = build(data, lambda_coeff=0.5)
    batch = edge_batch(data, 1)

    def loss_of(user, item):
        return bpr_loss(user[batch.users], item[batch.pos], item[batch.neg[:, 0]])

    model.train().on_epoch_start(1, torch.Generator())
    emb = model(data)
    loss_of(emb.user, emb.item).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, g in got.items():
        assert g.abs().sum() > 0, f"{name} got no gradient"
    model.zero_grad()
    loss_of(*reference(model, data)).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(got[name].double(), p.grad.double(), atol=1e-6), name


def test_learned_graph_is_rebuilt_once_per_epoch_then_reused_detached():
    data = tiny_data()
    model = build(data)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = edge_batch(data, 1)

    def step() -> dict[str, bool]:
        emb = model(data)
        opt.zero_grad()
        bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg[:, 0]]).backward()
        reached = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}
        opt.step()
        return reached

    model.train().on_epoch_start(1, torch.Generator())
    first = step()
    assert first["projections.image.weight"] and first["modal_weight"]
    cached = model.cached[0].to_dense()
    second = step()  # same epoch: the first batch's graph, without gradient
    assert not second["projections.image.weight"] and not second["modal_weight"] and second["item.weight"]
    assert torch.equal(model.cached[0].to_dense(), cached) and torch.equal(model.cached[1].to_dense(), cached.T)
    model.eval()
    with torch.no_grad():
        eval_one, eval_two = model(data).item, model(data).item
    assert torch.equal(eval_one, eval_two)  # deterministic, rebuilt from the current weights
    assert torch.equal(model.cached[0].to_dense(), cached)  # evaluation leaves the epoch's graph alone
    with torch.no_grad():
        model.train().on_epoch_start(2, torch.Generator())
        rebuilt = model(data).item  # the projections moved: the rebuilt graph differs
        assert not torch.allclose(model.cached[0].to_dense(), cached)
        assert torch.allclose(model(data).item, rebuilt, atol=1e-6)  # its frozen copy is the same A
    third = step()
    assert not third["projections.text.weight"]
    model.on_epoch_start(3, torch.Generator())
    assert step()["projections.text.weight"]


def test_a_short_training_run_lowers_the_loss():
    data = tiny_data()
    model = build(data)
    assert_training_lowers_loss(model, data, edge_batch(data, 1))


# ------------------------------------------------------------------ config


def test_registered_with_its_section_and_grid():
    params = load_params()
    assert model_class("lattice") is LATTICE and LATTICE.uses_features
    assert LATTICEConfig.from_dict(params["lattice"], "lattice") == LATTICEConfig()
    space = TuneConfig.from_dict(params.get("tune"), "tune").space("lattice")
    assert space["reg_weight"].values == (0.0, 1e-5, 1e-4, 1e-3)
    assert len(grid_points(space)) <= 12


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 0),
        ("feat_embed_dim", -1),
        ("cf_layers", -1),
        ("n_layers", 0),
        ("knn_k", 0),
        ("lambda_coeff", 1.5),
        ("lambda_coeff", -0.1),
        ("reg_weight", -1e-3),
        ("knn_chunk", 0),
        ("separation", "clip"),
        ("generic_fraction", 1.0),
        ("head_dim", 0),
    ],
)
def test_config_errors_name_the_param(field, value):
    with pytest.raises(ConfigError, match=rf"^params.yaml \[lattice\]: {field} "):
        LATTICEConfig.from_dict({field: value}, "lattice")


# ------------------------------------------------------------------ LATTICE+SEA


@pytest.mark.parametrize("compose", [True, False])
def test_with_the_separation_the_projections_read_the_split(compose):
    data = tiny_data()
    model = build(data, separation="sea", head_dim=2)
    model.separation.compose = compose
    plain = build(data)
    for name, p in plain.named_parameters():  # the backbone's initialisation is unchanged by the switch
        assert torch.equal(p, model.get_parameter(name)), name
    model.eval()
    with torch.no_grad():
        emb = model(data)
        assert torch.allclose(emb.item.double(), reference(model, data)[1], atol=1e-5)
        assert not torch.allclose(emb.item, plain.eval()(data).item, atol=1e-4)  # the split matters
    assert "split" in emb.extras


def test_with_the_separation_every_main_parameter_gets_gradient():
    data = tiny_data()
    model = build(data, separation="sea", head_dim=2)
    batch = edge_batch(data, 1)
    model.train().on_epoch_start(1, torch.Generator())
    emb = model(data)
    model.auxiliary_step(emb, batch)
    terms = model.extra_losses(emb, batch)
    assert {"reg", "club", "solosim"} <= set(terms)
    loss = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg[:, 0]])
    (loss + sum(t.weight * t.value for t in terms.values())).backward()
    main = {id(p) for p in model.main_parameters()}
    for name, p in model.named_parameters():
        if id(p) in main:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    assert len(main) < len(list(model.parameters()))  # the CLUB estimators are fitted apart
