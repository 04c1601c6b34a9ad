"""Top-K recommendations from a trained checkpoint, with Amazon's ids.

    from sea.recommend import recommend
    top = recommend("models/model.safetensors", ["<reviewerID>", ...], k=10)
    # columns: reviewer_id, user, rank (1..k), item, asin, score

:func:`recommend` rebuilds whichever registered model the checkpoint names, from the
checkpoint alone plus the processed data it was trained on (``data/processed``, and
``data/features`` for models that read features); :func:`top_items` is the same ranking
for a model already in memory (the train stage uses it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sea import artifacts
from sea.batch import Embeddings
from sea.checkpoint import Checkpoint, load_checkpoint
from sea.errors import DataError
from sea.evaluation import embed, score_fn
from sea.metrics import top_k
from sea.models.base import GraphData, Recommender
from sea.setup import TrainingSetup
from sea.train import build_model, load_graph_data

COLUMNS = ["reviewer_id", "user", "rank", "item", "asin", "score"]


def top_items(
    model: Recommender, emb: Embeddings, data: GraphData, users: np.ndarray, k: int, batch_size: int = 4096
) -> pd.DataFrame:
    """The ``k`` best items for each of ``users`` (int ids), training items masked: a
    table (user int32, rank int16 from 1, item int32, score float32), best first. Users with
    fewer than ``k`` items left get fewer rows."""
    users = np.asarray(users, dtype=np.int64)
    items, scores = top_k(score_fn(model, emb), data.csr["train"], users, data.n_items, k, batch_size)
    k = items.shape[1]
    table = pd.DataFrame(
        {
            "user": np.repeat(users, k).astype(np.int32),
            "rank": np.tile(np.arange(1, k + 1), len(users)).astype(np.int16),
            "item": items.reshape(-1).numpy().astype(np.int32),
            "score": scores.reshape(-1).numpy().astype(np.float32),
        }
    )
    return table[np.isfinite(table["score"])].reset_index(drop=True)


def with_ids(table: pd.DataFrame, root: str | Path = ".") -> pd.DataFrame:
    """``table`` (user, item, …) with ``reviewer_id`` and ``asin`` from the graph stage's
    users and items tables under ``root``."""
    root = Path(root)
    users = pd.read_parquet(root / artifacts.USERS).set_index("user")["reviewer_id"]
    asins = pd.read_parquet(root / artifacts.ITEMS, columns=["item", "asin"]).set_index("item")["asin"]
    return table.assign(
        reviewer_id=users.reindex(table["user"]).to_numpy(), asin=asins.reindex(table["item"]).to_numpy()
    )


def load_model(ckpt: Checkpoint, data: GraphData, seed: int | None = None) -> Recommender:
    """The checkpoint's model for ``seed`` (default: its first seed), rebuilt on ``data``
    and loaded with the trained weights."""
    setup = TrainingSetup.from_params(ckpt.params)
    if (data.n_users, data.n_items) != (ckpt.n_users, ckpt.n_items):
        raise DataError(
            f"the checkpoint was trained on {ckpt.n_users} users and {ckpt.n_items} items; "
            f"the processed data has {data.n_users} and {data.n_items}"
        )
    dims = {m: int(x.shape[1]) for m, x in data.features.items()}
    if dims != ckpt.feature_dims:
        raise DataError(f"the checkpoint was trained on features {ckpt.feature_dims}; the data has {dims}")
    model = build_model(data, setup)
    model.load_state_dict(ckpt.run(seed).state_dict)
    return model


def recommend(
    checkpoint: str | Path = artifacts.MODEL,
    user_ids: Sequence[str] | None = None,
    k: int = 10,
    *,
    seed: int | None = None,
    root: str | Path = ".",
    device: str = "cpu",
    batch_size: int = 4096,
) -> pd.DataFrame:
    """Top-``k`` recommendations for reviewers, from a trained checkpoint.

    Args:
        checkpoint: a ``models/model.safetensors`` written by the train stage.
        user_ids: reviewer ids as in the dumps (``reviewerID``; for an MMRec folder, the
            raw ids of ``u_id_mapping.csv`` or the user numbers as strings); ``None``: all
            users. An unknown id is a :class:`~sea.errors.DataError`.
        k: items per user. Items the user trained on are never recommended.
        seed: which seed's weights (default: the first seed trained).
        root: the project folder whose ``data/processed`` (and ``data/features``) the
            model was trained on.
        device: where to compute ("cpu", "cuda").
        batch_size: users scored at once.

    Returns:
        A DataFrame with one row per (user, rank), in the order of ``user_ids``, best item
        first: ``reviewer_id`` (str), ``user`` (int32, the internal id), ``rank`` (1…k),
        ``item`` (int32), ``asin`` (str), ``score`` (float32, the model's score).
    """
    ckpt = load_checkpoint(checkpoint, device)
    setup = TrainingSetup.from_params(ckpt.params)
    data = load_graph_data(setup, device, root)
    reviewers = pd.read_parquet(Path(root) / artifacts.USERS)
    if user_ids is None:
        users = reviewers["user"].to_numpy(np.int64)
    else:
        index = pd.Index(reviewers["reviewer_id"].astype(str))
        pos = index.get_indexer([str(u) for u in user_ids])
        if (pos < 0).any():
            unknown = [u for u, p in zip(user_ids, pos) if p < 0]
            raise DataError(
                f"{Path(root) / artifacts.USERS}: unknown reviewer id(s) {unknown[:5]}"
                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            )
        users = reviewers["user"].to_numpy(np.int64)[pos]
    model = load_model(ckpt, data, seed)
    table = top_items(model, embed(model, data), data, users, k, batch_size)
    return with_ids(table, root)[COLUMNS]
