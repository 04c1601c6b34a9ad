"""Checkpoints: everything needed to rebuild a trained model without the pipeline.

One ``.safetensors`` file holds, for every seed trained, the best-validation state dict
(tensor names ``<seed>/<parameter name>``) and, in its metadata, one JSON document under
the key ``checkpoint``::

    {"format": "sea-checkpoint/1", "model": "lightgcn",
     "params": {"model": {...}, "lightgcn": {...}, "loss": {...}, "club": {...},
                "train": {...}, "eval": {...}},          # the sections it was trained with
     "n_users": 1534, "n_items": 600, "feature_dims": {"text": 384},
     "runs": [{"seed": 999, "best_epoch": 37}]}

The bytes depend only on the weights and that document (JSON with sorted keys, one
metadata entry: safetensors orders several entries at random), so the same training gives
the same file. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from sea.errors import DataError
from sea.files import atomic_path

FORMAT = "sea-checkpoint/1"


@dataclass
class Run:
    """One seed's best-validation weights."""

    seed: int
    best_epoch: int
    state_dict: dict[str, torch.Tensor]


@dataclass
class Checkpoint:
    params: dict  # TrainingSetup.to_dict() of the training run
    n_users: int
    n_items: int
    feature_dims: dict[str, int] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)

    @property
    def model_name(self) -> str:
        return self.params["model"]["name"]

    def run(self, seed: int | None = None) -> Run:
        """The run of ``seed`` (default: the first seed trained)."""
        if seed is None:
            return self.runs[0]
        for r in self.runs:
            if r.seed == seed:
                return r
        raise DataError(f"the checkpoint has no seed {seed}; it has {[r.seed for r in self.runs]}")


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically; same weights and params give the same bytes."""
    tensors = {
        f"{r.seed}/{k}": v.detach().to("cpu").contiguous().clone() for r in ckpt.runs for k, v in r.state_dict.items()
    }
    meta = {
        "format": FORMAT,
        "model": ckpt.model_name,
        "params": ckpt.params,
        "n_users": ckpt.n_users,
        "n_items": ckpt.n_items,
        "feature_dims": ckpt.feature_dims,
        "runs": [{"seed": r.seed, "best_epoch": r.best_epoch} for r in ckpt.runs],
    }
    blob = save(tensors, metadata={"checkpoint": json.dumps(meta, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (a DataError if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint there (run the train stage first)")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads((f.metadata() or {}).get("checkpoint", "null"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise DataError(f"{path}: not a {FORMAT} checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        raise DataError(f"{path}: unreadable checkpoint: {e}") from None
    runs = []
    for r in meta["runs"]:
        prefix = f"{r['seed']}/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        runs.append(Run(int(r["seed"]), int(r["best_epoch"]), state))
    return Checkpoint(
        params=meta["params"],
        n_users=int(meta["n_users"]),
        n_items=int(meta["n_items"]),
        feature_dims={m: int(d) for m, d in meta["feature_dims"].items()},
        runs=runs,
    )
