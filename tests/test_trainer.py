"""The model-agnostic trainer: config, negatives, loss, the epoch loop's calls, early
stopping, determinism, checkpoints and what the stages read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sea import artifacts
from sea.batch import Embeddings, Term
from sea.checkpoint import Checkpoint, Run, load_checkpoint, save_checkpoint
from sea.errors import ConfigError, DataError
from sea.evaluation import embed, evaluate
from sea.losses import bpr_loss, ranking_loss
from sea.models.base import REGISTRY, GraphData, register
from sea.models.bprmf import BPRMF
from sea.samplers import UniformNegatives
from sea.setup import TrainingSetup
from sea.train import build_model, fit, load_graph_data, seed_everything

# ------------------------------------------------------------------ data


def planted_interactions(n_users: int = 60, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Users in 3 groups, each liking its own third of the items: learnable structure."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = np.arange(n_items)[(np.arange(n_items) % 3) == (u % 3)]
        items = rng.choice(group, size=7, replace=False)
        rows += [(u, int(i), s) for i, s in zip(items, ["train"] * 5 + ["valid", "test"], strict=True)]
    return pd.DataFrame(rows, columns=["user", "item", "split"])


@pytest.fixture
def data() -> GraphData:
    return GraphData.build(planted_interactions(), n_items=30)


def setup_for(name: str = "bprmf", **train) -> TrainingSetup:
    return TrainingSetup.from_params(
        {
            "model": {"name": name},
            name: {"embedding_dim": 8},
            "train": {"lr": 0.05, "batch_size": 64, "max_epochs": 8, "patience": 50} | train,
            "eval": {"topk": [5, 10], "select": "recall@10"},
        }
    )


# ------------------------------------------------------------------ config


def test_model_section_is_the_chosen_models_own():
    setup = TrainingSetup.from_params(
        {"model": {"name": "bprmf"}, "bprmf": {"reg_weight": 0.5}, "lightgcn": {"layers": "not even checked"}}
    )
    assert setup.model_cfg.reg_weight == 0.5
    assert set(setup.to_dict()) == {"model", "bprmf", "loss", "club", "train", "eval"}
    assert TrainingSetup.from_params(setup.to_dict()).to_dict() == setup.to_dict()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model": {"name": "nope"}}, r"name 'nope' is not a known model; known: \[.*'bprmf'.*'lightgcn'"),
        ({"loss": {"kind": "hinge"}}, "kind must be one of"),
        ({"train": {"negatives": 0}}, "negatives must be >= 1"),
        ({"model": {"name": "bprmf", "embedding_dim": 64}}, "unknown key"),
        ({"model": {"name": "bprmf", "modalities": []}}, "modalities"),
        ({"model": {"name": "bprmf", "modalities": ["text"]}, "club": {"pairing": "reference"}}, "both modalities"),
    ],
)
def test_bad_model_and_training_params(params, message):
    with pytest.raises(ConfigError, match=message):
        TrainingSetup.from_params({"model": {"name": "bprmf"}} | params)


# ------------------------------------------------------------------ negatives


def sampler_for(users, items, n_users, n_items, seed=0) -> UniformNegatives:
    return UniformNegatives(
        torch.tensor(users), torch.tensor(items), n_users, n_items, torch.Generator().manual_seed(seed)
    )


def test_nth_negative_enumerates_each_users_non_training_items():
    users = [0, 0, 0, 2, 2, 1, 0]
    items = [4, 1, 3, 0, 7, 5, 1]  # user 0: {1, 3, 4}; user 1: {5}; user 2: {0, 7}; user 3: none
    s = sampler_for(users, items, n_users=4, n_items=8)
    for u, positives in {0: {1, 3, 4}, 1: {5}, 2: {0, 7}, 3: set()}.items():
        free = [i for i in range(8) if i not in positives]
        r = torch.arange(len(free)).unsqueeze(0)
        assert s.nth_negative(torch.tensor([u]), r).tolist() == [free]


def test_negatives_are_uniform_over_the_non_training_items():
    s = sampler_for([0, 0, 0], [1, 3, 4], n_users=1, n_items=8)
    neg = s(torch.zeros(4000, dtype=torch.long), n=5)
    assert neg.shape == (4000, 5)
    counts = np.bincount(neg.reshape(-1).numpy(), minlength=8)
    assert counts[[1, 3, 4]].sum() == 0
    expected = 20000 / 5
    assert np.all(np.abs(counts[[0, 2, 5, 6, 7]] - expected) < 5 * np.sqrt(expected))  # ~5 sigma


def test_negatives_never_hit_training_items_and_follow_the_seed(data):
    def draw(seed):
        sampler = UniformNegatives(
            data.train_users, data.train_items, data.n_users, data.n_items, torch.Generator().manual_seed(seed)
        )
        return sampler(data.train_users, 3)

    neg = draw(7)
    train = set(zip(data.train_users.tolist(), data.train_items.tolist(), strict=True))
    assert not any((u, i) in train for u, row in zip(data.train_users.tolist(), neg.tolist(), strict=True) for i in row)
    assert torch.equal(neg, draw(7)) and not torch.equal(neg, draw(8))


# ------------------------------------------------------------------ loss


def test_bpr_with_several_negatives_is_the_mean_over_them():
    g = torch.Generator().manual_seed(0)
    u, p, n = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    by_hand = np.mean(
        [-np.log(1 / (1 + np.exp(-(u[b] @ p[b] - u[b] @ n[b, j]).item()))) for b in range(4) for j in range(2)]
    )
    assert ranking_loss("bpr", u, p, n).item() == pytest.approx(by_hand, rel=1e-5)
    assert bpr_loss(u, p, n[:, 0]).item() == pytest.approx(bpr_loss(u, p, n[:, :1]).item())


# ------------------------------------------------------------------ the loop


class Probe(BPRMF):
    """BPR-MF that records the trainer's calls and holds a parameter outside the main
    optimiser (not registered: fit takes the instance)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aside = nn.Parameter(torch.ones(3))
        self.calls: list[tuple] = []

    def on_epoch_start(self, epoch, generator):
        self.calls.append(("epoch", epoch, isinstance(generator, torch.Generator)))

    def auxiliary_step(self, emb, batch):
        self.calls.append(("aux", tuple(batch.neg.shape), self.training))
        return {"probe": torch.tensor(2.0)}

    def main_parameters(self):
        return [self.user_emb.weight, self.item_emb.weight]


def test_fit_calls_the_hooks_and_steps_only_main_parameters(data):
    setup = setup_for(negatives=3, max_epochs=3)
    seed_everything(0)
    model = Probe(data.n_users, data.n_items, embedding_dim=8)
    result = fit(model, data, setup, seed=0, log=lambda _: None)
    n_batches = -(-len(data.train_users) // 64)
    epochs = [c for c in model.calls if c[0] == "epoch"]
    assert epochs == [("epoch", e, True) for e in (1, 2, 3)]
    aux = [c for c in model.calls if c[0] == "aux"]
    assert len(aux) == 3 * n_batches and all(c[2] for c in aux)
    assert {c[1][1] for c in aux} == {3}  # [B, negatives]
    assert torch.equal(model.aside.detach(), torch.ones(3))
    assert [row["probe"] for row in result.history] == [2.0, 2.0, 2.0]
    assert {"epoch", "loss", "bpr", "reg", "valid_recall@10", "valid_ndcg@5"} <= set(result.history[0])
    assert "seconds" not in result.history[0]


def test_fit_learns_and_keeps_the_best_state(data):
    setup = setup_for(max_epochs=15)
    seed_everything(0)
    model = build_model(data, setup)
    before = evaluate(model, data, "valid", [10])["recall@10"]
    result = fit(model, data, setup, seed=0, log=lambda _: None)
    valid = [row["valid_recall@10"] for row in result.history]
    assert result.best_valid["recall@10"] == max(valid) > before
    assert valid[result.best_epoch - 1] == max(valid)
    # the model is left in its best state, and that is what the metrics describe
    assert all(torch.equal(v, result.best_state[k]) for k, v in model.state_dict().items())
    assert evaluate(model, data, "valid", [5, 10])["recall@10"] == pytest.approx(max(valid))


def test_early_stopping_counts_evaluations_without_improvement(data):
    setup = setup_for(lr=1e-12, max_epochs=30, patience=3, eval_every=2)
    seed_everything(0)
    result = fit(build_model(data, setup), data, setup, seed=0, log=lambda _: None)
    # nothing changes, so the first evaluation (epoch 2) is the best; 3 more evaluations end it
    assert result.best_epoch == 2
    assert len(result.history) == 8
    assert ["valid_recall@10" in row for row in result.history] == [False, True] * 4


def test_training_is_deterministic_on_cpu(data, tmp_path):
    def once(path):
        setup = setup_for("lightgcn", negatives=2, max_epochs=4)
        seed_everything(5)
        model = build_model(data, setup)
        result = fit(model, data, setup, seed=5, log=lambda _: None)
        save_checkpoint(
            path,
            Checkpoint(setup.to_dict(), data.n_users, data.n_items, {}, [Run(5, result.best_epoch, result.best_state)]),
        )
        return result.history

    assert once(tmp_path / "a.safetensors") == once(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_embed_is_eval_mode_and_gradient_free(data):
    model = build_model(data, setup_for("lightgcn"))
    model.train()
    emb = embed(model, data)
    assert not model.training
    assert not emb.user.requires_grad and not emb.item.requires_grad


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_bytes_depend_only_on_weights_and_params(tmp_path):
    state = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.tensor([1.5, -2.0])}
    setup = setup_for()
    ckpt = lambda s: Checkpoint(setup.to_dict(), 4, 5, {"text": 7}, [Run(1, 3, s), Run(2, 9, s)])  # noqa: E731
    save_checkpoint(tmp_path / "one.safetensors", ckpt(state))
    save_checkpoint(tmp_path / "two.safetensors", ckpt({k: v.clone() for k, v in reversed(state.items())}))
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()

    back = load_checkpoint(tmp_path / "one.safetensors")
    assert back.model_name == "bprmf" and back.params == setup.to_dict()
    assert (back.n_users, back.n_items, back.feature_dims) == (4, 5, {"text": 7})
    assert [(r.seed, r.best_epoch) for r in back.runs] == [(1, 3), (2, 9)]
    assert all(torch.equal(back.run(2).state_dict[k], v) for k, v in state.items())
    with pytest.raises(DataError, match="no seed 3"):
        back.run(3)


def test_bad_checkpoints_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="run the train stage"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(DataError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not a sea-checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


# ------------------------------------------------------------------ what the stages read


def write_processed(root, interactions: pd.DataFrame, n_items: int) -> None:
    (root / artifacts.PROCESSED).mkdir(parents=True)
    interactions.astype({"user": "int32", "item": "int32"}).to_parquet(root / artifacts.INTERACTIONS)
    pd.DataFrame({"item": np.arange(n_items, dtype="int32"), "asin": [f"B{i:04d}" for i in range(n_items)]}).to_parquet(
        root / artifacts.ITEMS
    )


def test_models_without_features_read_no_feature_files(tmp_path):
    write_processed(tmp_path, planted_interactions(), 30)
    # features that would be refused (an image encoder that decoded nothing) do not matter
    artifacts.write_features("image", np.zeros((30, 4)), {"n_decoded": 0}, tmp_path / artifacts.FEATURES)
    data = load_graph_data(setup_for("lightgcn"), root=tmp_path)
    assert data.features == {} and (data.n_users, data.n_items) == (60, 30)


@pytest.fixture
def feature_model():
    """A throw-away registered model that reads features (removed afterwards)."""

    @register
    class FeatureProbe(BPRMF):
        name = "feature_probe_test"
        uses_features = True

        def forward(self, data):
            self.seen = sorted(data.features)
            return Embeddings(self.user_emb.weight, self.item_emb.weight)

    yield FeatureProbe
    REGISTRY.pop(FeatureProbe.name)


def test_models_with_features_read_only_the_chosen_modalities(tmp_path, feature_model):
    write_processed(tmp_path, planted_interactions(), 30)
    root = tmp_path / artifacts.FEATURES
    artifacts.write_features("text", np.ones((30, 6)), {"n_with_text": 30}, root)
    artifacts.write_features("image", np.zeros((30, 4)), {"n_decoded": 0}, root)
    setup = TrainingSetup.from_params({"model": {"name": feature_model.name, "modalities": ["text"]}})
    data = load_graph_data(setup, root=tmp_path)
    assert list(data.features) == ["text"] and data.features["text"].shape == (30, 6)
    setup = TrainingSetup.from_params({"model": {"name": feature_model.name, "modalities": ["image", "text"]}})
    with pytest.raises(DataError, match="image"):
        load_graph_data(setup, root=tmp_path)


# ------------------------------------------------------------------ models with their own objective, or none


@pytest.fixture
def own_objective_model():
    """A throw-away BPR-MF whose BPR is its own term (``preferred_loss`` none), as BM3's
    objective is its own alignment losses (removed afterwards)."""

    @register
    class OwnObjective(BPRMF):
        name = "own_objective_test"
        preferred_loss = "none"

        def extra_losses(self, emb, batch):
            value = bpr_loss(emb.user[batch.users], emb.item[batch.pos], emb.item[batch.neg])
            return {"own_bpr": Term(value, 1.0)}

    yield OwnObjective
    REGISTRY.pop(OwnObjective.name)


def test_loss_kind_none_trains_on_the_models_own_terms_alone(data, own_objective_model):
    """With no ranking term, the step is the model's own BPR: the same weights as BPR-MF
    (no regularisation) trained with loss.kind bpr from the same start and seed."""
    runs = {}
    for name in ("bprmf", own_objective_model.name):
        setup = TrainingSetup.from_params(
            {
                "model": {"name": name},
                name: {"embedding_dim": 8, "reg_weight": 0.0},
                "loss": {"kind": "bpr" if name == "bprmf" else "auto"},
                "train": {"lr": 0.05, "batch_size": 64, "max_epochs": 3, "patience": 50},
                "eval": {"topk": [5, 10], "select": "recall@10"},
            }
        )
        seed_everything(0)
        model = build_model(data, setup)
        result = fit(model, data, setup, seed=1, log=lambda s: None, progress=False)
        runs[name] = (result, model)
    (plain, plain_model), (own, own_model) = runs["bprmf"], runs[own_objective_model.name]
    assert "none" not in own.history[0] and "own_bpr" in own.history[0]
    assert [r["loss"] for r in own.history] == pytest.approx([r["loss"] for r in plain.history], rel=1e-6)
    torch.testing.assert_close(own_model.user_emb.weight, plain_model.user_emb.weight)


def test_loss_kind_none_only_for_a_model_with_its_own_objective(own_objective_model):
    with pytest.raises(ConfigError, match=r"\[loss\]: kind: none .* 'bprmf' has no objective of its own"):
        TrainingSetup.from_params({"model": {"name": "bprmf"}, "loss": {"kind": "none"}})
    # auto resolves to none for it; a named ranking loss on top of its own terms is allowed
    assert TrainingSetup.from_params({"model": {"name": own_objective_model.name}}).ranking_loss == "none"
    assert (
        TrainingSetup.from_params({"model": {"name": own_objective_model.name}, "loss": {"kind": "bpr"}}).ranking_loss
        == "bpr"
    )


@pytest.fixture
def untrained_model():
    """A throw-away model without parameters (``trainable`` False): items scored by their
    training popularity, the same for every user (removed afterwards)."""

    @register
    class Popularity(BPRMF):
        name = "untrained_test"
        trainable = False

        def __init__(self, popularity: torch.Tensor):
            nn.Module.__init__(self)
            self.register_buffer("popularity", popularity, persistent=False)

        @classmethod
        def build(cls, data, cfg, *unused):
            return cls(torch.bincount(data.train_items, minlength=data.n_items).float())

        def forward(self, data):
            return Embeddings(torch.ones(data.n_users, 1), self.popularity[:, None])

    yield Popularity
    REGISTRY.pop(Popularity.name)


def test_a_model_without_training_is_evaluated_once(data, untrained_model):
    setup = setup_for(untrained_model.name)
    model = build_model(data, setup)
    result = fit(model, data, setup, seed=1, log=lambda s: None, progress=False)
    valid = evaluate(model, data, "valid", [5, 10])
    assert result.best_epoch == 0 and len(result.history) == 1 and result.history[0]["epoch"] == 0
    assert result.best_valid["recall@10"] == pytest.approx(valid["recall@10"]) and valid["recall@10"] > 0
    assert result.history[0]["valid_recall@10"] == pytest.approx(valid["recall@10"])
