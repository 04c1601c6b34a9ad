"""params.yaml is read through typed configs: wrong names, types and ranges are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sea.config import load_params
from sea.data.catalog import DatasetConfig
from sea.errors import ConfigError
from sea.setup import TrainingSetup

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    setup = TrainingSetup.from_params(params)
    assert setup.loss.club_weight == params["loss"]["club_weight"]
    assert setup.train.run_seeds == [params["train"]["seed"]]
    assert DatasetConfig.from_dict(params["dataset"], "dataset").raw_dir == Path("data/raw/sample")


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("loss", {"club_weigth": 0.1}, "unknown key"),
        ("loss", {"club_weight": "a lot"}, "expected a number"),
        ("loss", {"distance": "cosine"}, "distance must be one of"),
        ("sea", {"generic_fraction": 1.5}, "generic_fraction must be in"),
        ("sea", {"embedding_dim": 64.5}, "expected an integer"),
        ("model", {"modalities": ["audio"]}, "modalities"),
        ("train", {"seeds": [1, 1]}, "seeds must not repeat"),
        ("club", {"pairing": "mine"}, "pairing"),
        ("eval", {"select": "auc"}, "select"),
    ],
)
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


# ------------------------------------------------ every mistake caught before any work


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "a\\b", "a\nb", " padded", "x" * 256, "é" * 128])
def test_dataset_name_must_be_one_plain_folder_name(name):
    # "." would make data/raw/. (all datasets) the download stage's output; ".." empties data/
    with pytest.raises(ConfigError, match="name"):
        DatasetConfig.from_dict({"name": name, "reviews_url": "r.json"}, "dataset")


def test_nul_in_any_string_param_is_rejected():
    with pytest.raises(ConfigError, match="NUL"):
        DatasetConfig.from_dict({"name": "x", "reviews_url": "r\0.json"}, "dataset")


@pytest.mark.parametrize("value", ["nan", ".inf", float("nan"), float("-inf"), "1e400"])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ConfigError, match="train.lr"):
        TrainingSetup.from_params({"train": {"lr": value}})


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("eval", {"select": "recall@50"}, "needs 50 in topk"),
        ("eval", {"topk": [10, 10]}, "topk must not repeat"),
        ("eval", {"batch_size": 0}, "batch_size"),
        ("train", {"batch_size": -1}, "batch_size"),
        ("train", {"seed": -1}, "seeds must be >= 0"),
        ("train", {"seeds": [1, -2]}, "seeds must be >= 0"),
        ("train", {"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ("train", {"device": "cpu:1"}, "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_training_params_out_of_range(section, values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingSetup.from_params({section: values})


def test_cuda_must_exist():
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"this machine has {n} CUDA device"):
        TrainingSetup.from_params({"train": {"device": f"cuda:{n}"}})


@pytest.mark.parametrize(
    "section, cls, values, message",
    [
        ("features.text", "TextFeatureConfig", {"batch_size": 0}, "batch_size must be >= 1"),
        ("features.text", "TextFeatureConfig", {"device": "tpu"}, "device must be"),
        ("features.image", "ImageFeatureConfig", {"batch_size": -1}, "batch_size must be >= 1"),
        ("features.image", "ImageFeatureConfig", {"model": "ViT-B-33"}, "not an open_clip architecture"),
        ("features.image", "ImageFeatureConfig", {"pretrained": "opnai"}, "not an open_clip tag for ViT-B-32"),
        ("features.image", "ImageFeatureConfig", {"pretrained": "weights/missing.pt"}, "does not exist"),
        ("features.image", "ImageFeatureConfig", {"workers": 0}, "workers"),
        ("features.image", "ImageFeatureConfig", {"precision": "half"}, r"precision must be one of \['auto'"),
        ("features.text", "TextFeatureConfig", {"precision": "fp16"}, "precision must be one of"),
        ("split", "SplitConfig", {"seed": -3}, "seed must be >= 0"),
    ],
)
def test_feature_and_split_params_out_of_range(section, cls, values, message):
    from sea.data.split import SplitConfig
    from sea.features.image import ImageFeatureConfig
    from sea.features.text import TextFeatureConfig

    classes = {c.__name__: c for c in (SplitConfig, ImageFeatureConfig, TextFeatureConfig)}
    with pytest.raises(ConfigError, match=message):
        classes[cls].from_dict(values, section)


def test_known_clip_tags_and_none_are_accepted():
    from sea.features.image import ImageFeatureConfig

    for tag in ("openai", "none", None, "laion2b_s34b_b79k"):
        assert ImageFeatureConfig.from_dict({"pretrained": tag}, "features.image").pretrained == tag
