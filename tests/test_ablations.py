"""scripts/ablations.py: the overrides each variant is queued with, and its table. The run
itself (8 queued experiments) is the end-to-end test in tests/test_pipeline.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablations", ROOT / "scripts" / "ablations.py")
ablations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablations)


def result(value: float, seeds: list[int], overrides: list[str]) -> dict:
    split = {c: value for c in ablations.COLUMNS}
    std = {c: value / 10 for c in ablations.COLUMNS}
    return {
        "valid": split,
        "test": split,
        "std": {"valid": std, "test": std},
        "seeds": seeds,
        "most_popular": {"valid": {c: 0.01 for c in ablations.COLUMNS}, "test": {c: 0.02 for c in ablations.COLUMNS}},
        "overrides": overrides,
    }


def test_every_variant_trains_sea_with_the_seeds_and_extras():
    queued = ablations.experiment_overrides([1, 2], ["train.max_epochs=1"])
    assert list(queued) == [f"abl-{v}" for v in ablations.VARIANTS]
    assert queued["abl-no_club"] == ["model.name=sea", "loss.club_weight=0", "train.seeds=[1,2]", "train.max_epochs=1"]
    assert ablations.experiment_overrides(None, [])["abl-full"] == ["model.name=sea"]


def test_table_shows_std_only_over_several_seeds():
    text = ablations.table(
        {"full": result(0.25, [1, 2, 3], []), "text_only": result(0.125, [999], ["model.modalities=[text]"])}
    )
    lines = text.splitlines()
    assert lines[2] == "| full | (params.yaml) | " + " | ".join(["0.2500 ± 0.0250"] * 8) + " |"
    assert lines[3] == "| text_only | `model.modalities=[text]` | " + " | ".join(["0.1250"] * 8) + " |"
    assert lines[4] == "| most popular | | " + " | ".join(["0.0100"] * 4 + ["0.0200"] * 4) + " |"
