"""params.yaml is read through typed configs: wrong names, types and ranges are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sea.config import ConfigError, DatasetConfig, TrainingSetup, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    setup = TrainingSetup.from_params(params)
    assert setup.loss.club_weight == params["loss"]["club_weight"]
    assert setup.train.run_seeds == [params["train"]["seed"]]
    assert DatasetConfig.from_dict(params["dataset"], "dataset").raw_dir == Path("data/raw/sample")


@pytest.mark.parametrize("section, values, message", [
    ("loss", {"club_weigth": 0.1}, "unknown key"),
    ("loss", {"club_weight": "a lot"}, "expected a number"),
    ("loss", {"distance": "cosine"}, "distance must be one of"),
    ("sea", {"generic_fraction": 1.5}, "generic_fraction must be in"),
    ("sea", {"embedding_dim": 64.5}, "expected an integer"),
    ("model", {"modalities": ["audio"]}, "modalities"),
    ("train", {"seeds": [1, 1]}, "seeds must not repeat"),
    ("club", {"pairing": "mine"}, "pairing"),
    ("eval", {"select": "auc"}, "select"),
])
def test_bad_values_are_rejected(section, values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingSetup.from_params({section: values})


def test_numbers_written_as_yaml_strings_are_accepted():
    # YAML reads `1e-4` (no dot) as a string
    assert TrainingSetup.from_params({"train": {"lr": "1e-4"}}).train.lr == pytest.approx(1e-4)


def test_dataset_source_needs_its_fields():
    with pytest.raises(ConfigError, match="reviews_url"):
        DatasetConfig.from_dict({"name": "x"}, "dataset")
    with pytest.raises(ConfigError, match="path"):
        DatasetConfig.from_dict({"name": "x", "source": "mmrec"}, "dataset")


def test_reference_pairing_needs_both_modalities():
    with pytest.raises(ValueError, match="both modalities"):
        TrainingSetup.from_params({"club": {"pairing": "reference"}, "model": {"modalities": ["text"]}})
