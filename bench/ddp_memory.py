"""What each rank of distributed training holds in memory, since every rank keeps a full
replica: the graph, the item features, the model with its gradients and Adam state, and
the activations one full-graph training step saves for backward. Measured from the
tensors themselves (any device; CPU is fine), on the synthetic graphs of
bench/train_speed.py, then extrapolated linearly to the size where one rank stops
fitting on a GPU.

    python bench/ddp_memory.py                          # sample and baby presets, lightgcn sea freedom
    python bench/ddp_memory.py --preset baby --models sea
    python bench/ddp_memory.py --preset baby --scaling  # + bytes per extra user, item, interaction
"""

from __future__ import annotations

import argparse

import torch
from train_speed import PRESETS, synthetic

from sea.batch import Batch
from sea.models.base import GraphData, model_class
from sea.samplers import UniformNegatives
from sea.setup import TrainingSetup
from sea.train import build_model, seed_everything

GIB = 2**30


def nbytes(t: torch.Tensor) -> int:
    if t.layout == torch.sparse_csr:
        return nbytes(t.crow_indices()) + nbytes(t.col_indices()) + nbytes(t.values())
    if t.layout == torch.sparse_coo:
        return nbytes(t._indices()) + nbytes(t._values())
    return t.numel() * t.element_size()


def measure(model_name: str, sizes: tuple[int, int, int, int, int], batch_size: int) -> dict[str, float]:
    """Bytes per rank of: graph (adjacency + training edges), features, the model's
    parameters ×4 (weights, gradients, Adam's two moments) and its frozen buffers (kNN
    graphs), and one training step's tensors saved for backward."""
    n_users, n_items, n_train, d_img, d_txt = sizes
    setup = TrainingSetup.from_params({"model": {"name": model_name}, "train": {"batch_size": batch_size}})
    df, feats = synthetic(n_users, n_items, n_train, {"image": d_img, "text": d_txt})
    data = GraphData.build(df, n_items, feats if model_class(model_name).uses_features else {})
    seed_everything(0)
    model = build_model(data, setup)
    params = sum(nbytes(p) for p in model.parameters())
    seen = {p.data_ptr() for p in model.parameters()}
    buffers = sum(nbytes(b) for b in model.buffers() if b.data_ptr() not in seen)
    gen = torch.Generator().manual_seed(0)
    model.on_epoch_start(1, gen)
    negatives = UniformNegatives(data.train_users, data.train_items, data.n_users, data.n_items, gen)
    idx = torch.randint(len(data.train_users), (batch_size,), generator=gen)
    batch = Batch(data.train_users[idx], data.train_items[idx], negatives(data.train_users[idx], 1))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # storages, not views
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        emb = model(data)
        loss = setup.make_ranking_loss(data)(emb, batch)
        terms = model.extra_losses(emb, batch)
        total = loss + sum(t.weight * t.value for t in terms.values())
    total.backward()
    return {
        "graph": (nbytes(data.adj) + nbytes(data.train_users) + nbytes(data.train_items)) / GIB,
        "features": sum(nbytes(x) for x in data.features.values()) / GIB,
        "model (x4: weights, grads, Adam)": 4 * params / GIB,
        "frozen buffers (kNN graphs)": buffers / GIB,
        "step activations": sum(saved.values()) / GIB,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, nargs="+", default=list(PRESETS))
    p.add_argument("--models", nargs="+", default=["lightgcn", "sea", "freedom"])
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument(
        "--scaling",
        action="store_true",
        help="also measure with twice the users, the items, the interactions (one at a time) "
        "and print the bytes each extra one costs",
    )
    args = p.parse_args()
    for preset in args.preset:
        n_users, n_items, n_train, d_img, d_txt = PRESETS[preset]
        print(
            f"{preset}: {n_users:,} users, {n_items:,} items, ~{n_train:,} training interactions, "
            f"features {d_img}+{d_txt}"
        )
        for name in args.models:
            parts = measure(name, PRESETS[preset], args.batch_size)
            total = sum(parts.values())
            detail = ", ".join(f"{k} {v * 1024:.1f}" for k, v in parts.items())
            print(f"  {name:9s} {total * 1024:8.1f} MiB per rank  ({detail} MiB)")
            if args.scaling:
                print(
                    "            bytes per extra "
                    + ", ".join(
                        f"{what} {per:,.0f}"
                        for what, per in marginal_bytes(name, preset, args.batch_size, total).items()
                    )
                )


def marginal_bytes(model_name: str, preset: str, batch_size: int, total: float) -> dict[str, float]:
    """Bytes per rank that one more user, item or training interaction costs: the
    difference to a graph with twice as many of them (the others unchanged)."""
    n_users, n_items, n_train, d_img, d_txt = PRESETS[preset]
    out = {}
    for what, sizes, n in (
        ("user", (2 * n_users, n_items, n_train), n_users),
        ("item", (n_users, 2 * n_items, n_train), n_items),
        ("interaction", (n_users, n_items, 2 * n_train), n_train),
    ):
        out[what] = (sum(measure(model_name, (*sizes, d_img, d_txt), batch_size).values()) - total) * GIB / n
    return out


if __name__ == "__main__":
    main()
