"""Hostile params: a YAML alias bomb (and other oversized documents) in params.yaml, and a
corrupt or hostile CLIP checkpoint at ``features.image.pretrained``. Each must end in one
line naming the file (or the param), quickly and in little memory, and nothing in a
checkpoint may run."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from sea.config import MAX_PARAMS_BYTES, MAX_PARAMS_DEPTH, load_params
from sea.data.catalog import DatasetConfig
from sea.errors import MAX_SHOWN_CHARS, ConfigError, DataError, shown
from sea.features.image import (
    CHECKPOINT_SIZE_FACTOR,
    CHECKPOINT_SLACK_BYTES,
    ImageFeatureConfig,
    load_clip,
    read_checkpoint,
)
from sea.setup import TrainingSetup
from tests.shell import env

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- params.yaml


def laughs(depth: int = 9, width: int = 9) -> list:
    """A "billion laughs" value: ``width`` references to the level below, ``depth`` levels
    deep (9**9 = 387 million strings once expanded; each level is one shared list)."""
    level: list = ["lol"] * width
    for _ in range(depth - 1):
        level = [level] * width
    return level


def write_params(path: Path, key: str, value) -> Path:
    """The committed params with ``value`` at ``key`` (dotted), dumped by PyYAML: an object
    met twice is written once with an anchor and then as aliases, so a bomb stays small."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    *sections, last = key.split(".")
    node = params
    for s in sections:
        node = node[s]
    assert last in node, key  # the bomb replaces a real param
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


BOMB_KEYS = [
    "dataset.name",
    "dataset.reviews_url",
    "split.given",
    "features.image.model",
    "train.seeds",
    "eval.topk",
    "sea.knn_k",
    "freedom.knn_k",
]


@pytest.mark.parametrize("key", BOMB_KEYS)
def test_an_alias_bomb_is_refused_in_one_line_quickly_and_unexpanded(tmp_path: Path, key: str) -> None:
    path = write_params(tmp_path / "params.yaml", key, laughs())
    text = path.read_text()
    # a small file: eight anchored lists, each referred to eight times more, around nine "lol"s
    assert len(text) < 20_000 and text.count("&id") == 8 and text.count("*id") == 8 * 8
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as caught:
            load_params(path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(f"{path}, line ") and f", at {key}" in message, message
    assert "expands to more than 100000 values once YAML aliases are expanded" in message
    assert "\n" not in message and len(message) < 400
    assert elapsed < 5 and peak < 20 << 20, (elapsed, peak)  # before: 45-54 s and 3.1 GB


def test_a_small_alias_and_a_merge_key_still_load(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("defaults: &d {device: cpu, seeds: &s [1, 2]}\ntrain: {<<: *d, lr: 0.01}\nother: {seeds: *s}\n")
    params = load_params(path)
    assert params["train"] == {"device": "cpu", "seeds": [1, 2], "lr": 0.01}
    assert params["other"]["seeds"] == [1, 2]
    assert TrainingSetup.from_params({"train": params["train"]}).train.run_seeds == [1, 2]


def test_the_committed_params_are_far_inside_the_limits() -> None:
    data = (ROOT / "params.yaml").read_bytes()
    assert len(data) * 20 < MAX_PARAMS_BYTES
    assert load_params(ROOT / "params.yaml")["dataset"]["name"] == "sample"


def test_a_file_over_the_byte_cap_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"dataset: {name: sample}\n" + b"#" * MAX_PARAMS_BYTES)
    with pytest.raises(ConfigError, match=rf"^{path}: larger than {MAX_PARAMS_BYTES} bytes"):
        load_params(path)
    path.write_bytes(b"dataset: {name: sample}\n#" + b"#" * (MAX_PARAMS_BYTES - 26))  # just inside
    assert load_params(path) == {"dataset": {"name": "sample"}}


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 10_000 + "]" * 10_000,  # composing this recursed 10,000 Python frames deep
        "".join("  " * i + f"k{i}:\n" for i in range(MAX_PARAMS_DEPTH + 1)) + "  " * (MAX_PARAMS_DEPTH + 1) + "x: 1\n",
    ],
)
def test_deep_nesting_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}, line \d+: nests deeper than {MAX_PARAMS_DEPTH} levels$"):
        load_params(path)


def test_depth_built_from_aliases_is_refused(tmp_path: Path) -> None:
    # each line one level deeper than the one before, by aliasing it: 60 levels in 60 lines
    path = tmp_path / "params.yaml"
    path.write_text("a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 60)))
    with pytest.raises(ConfigError, match="nests deeper than 32 levels once YAML aliases are expanded"):
        load_params(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [1, *a]\n", r"line 1, at a\[1\]: has a YAML alias inside the collection it names"),
        (
            "s: &s " + "x" * 16_000 + "\nl: [" + ", ".join(["*s"] * 400) + "]\n",
            r"at l\[262\]: expands to more than 4194304 characters once YAML aliases are expanded",
        ),
        ("a: 1" + ":1" * 200_000 + "\n", "line 1: holds a value longer than 16384 characters"),  # base 60: was 12 s+
        ("a: 2024-13-45\n", "a value cannot be read: month must be in 1..12"),
        ("a: " + "9" * 5000 + "\n", "a value cannot be read: Exceeds the limit"),
        ("a: !!python/object/apply:os.system [touch x]\n", "line 1: not valid YAML: could not determine a constructor"),
        ("a: 1\n---\nb: 2\n", "line 2: not valid YAML: expected a single document in the stream but found another"),
        ("- 1\n", "expected a mapping of sections"),
    ],
)
def test_other_hostile_documents_are_one_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as caught:
        load_params(path)
    assert time.perf_counter() - start < 5
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    assert not (tmp_path / "x").exists()


def test_invalid_utf8_and_a_missing_file_are_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"dataset: {name: \xff\xfe}\n")
    with pytest.raises(ConfigError, match="not valid YAML: unacceptable character"):
        load_params(path)
    with pytest.raises(ConfigError, match=r"absent.yaml: cannot be read: No such file"):
        load_params(tmp_path / "absent.yaml")


def test_shown_is_short_and_never_renders_the_whole_value() -> None:
    bomb = laughs()  # repr() of this would be gigabytes
    start = time.perf_counter()
    text = shown(bomb)
    assert time.perf_counter() - start < 1 and len(text) <= MAX_SHOWN_CHARS and text.endswith("...")
    assert shown("sample") == "'sample'" and shown([10, 20]) == "[10, 20]"
    assert len(shown("x" * 1_000_000)) <= MAX_SHOWN_CHARS


@pytest.mark.parametrize(
    "params, where",
    [
        ({"train": {"seeds": laughs()}}, "train.seeds"),  # repr() of these would take minutes and gigabytes
        ({"eval": {"topk": laughs()}}, "eval.topk"),
        ({"sea": {"knn_k": laughs()}}, "sea.knn_k"),
        ({"model": {"name": laughs()}}, "model.name"),
        ({"model": {"modalities": ["x" * 1_000_000]}}, "params.yaml [model]: modalities[]"),
        (
            {"simplex": {"aggregator": "x" * 1_000_000}, "model": {"name": "simplex"}},
            "params.yaml [simplex]: aggregator",
        ),
        ({"eval": {"select": "recall@" + "9" * 5000}}, "params.yaml [eval]: select"),  # int() refused 5000 digits
        ({"train": {1: 2, "b": 3}}, "params.yaml [train]: unknown key(s) [1, 'b']"),  # mixed keys could not be sorted
        ({"train": ["not", "a", "mapping"]}, "params.yaml [train]: expected a mapping"),
    ],
)
def test_huge_or_odd_values_give_a_short_config_error(params: dict, where: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        TrainingSetup.from_params(params)
    assert time.perf_counter() - start < 2
    assert str(caught.value).startswith(where) and len(str(caught.value)) < 400, str(caught.value)


@pytest.mark.parametrize(
    "values",
    [
        {"name": "n" * 100_000},
        {"name": "x", "reviews_url": laughs()},
        {"name": "x", "mirror": "ftp://" + "m" * 100_000},
    ],
)
def test_dataset_messages_show_short_values(values: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        DatasetConfig.from_dict(values, "dataset")
    assert len(str(caught.value)) < 400


def stage(script: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``python pipeline/<script>.py`` run in ``cwd`` (its params.yaml), with its wall time."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / f"{script}.py")],
        cwd=cwd,
        env=env() | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.perf_counter() - start


@pytest.mark.parametrize(
    "script, key", [("download", "dataset.name"), ("train", "train.seeds"), ("image_features", "features.image.model")]
)
def test_a_stage_fails_on_the_bomb_in_one_line_quickly(tmp_path: Path, script: str, key: str) -> None:
    write_params(tmp_path / "params.yaml", key, laughs())
    proc, elapsed = stage(script, tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script} stage failed: params.yaml, line "), proc.stderr
    assert f"at {key}" in lines[0] and "YAML aliases" in lines[0]
    assert elapsed < 20, elapsed  # Python and torch start-up included; before: 45-54 s and 3.1 GB


# --------------------------------------------------------------------------- checkpoints


def small_model() -> nn.Module:
    """A stand-in architecture for the reader (the CLIP tests below use ViT-B-32)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def read(path: Path) -> dict:
    """The checked state dict of ``path`` for :func:`small_model`."""
    return read_checkpoint(path, small_model().state_dict(), "tiny")


class Payload:
    """Unpickling this creates the directory ``marker``: the proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def save(state: dict, path: Path) -> Path:
    """``state`` written to ``path``: safetensors for ``.safetensors``, else torch.save."""
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_real_checkpoint_loads_strictly(tmp_path: Path, suffix: str) -> None:
    source = small_model()
    for p in source.parameters():
        nn.init.normal_(p)
    path = save(source.state_dict(), tmp_path / f"ok{suffix}")
    target = small_model()
    target.load_state_dict(read(path), strict=True)
    x = torch.randn(5, 4)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_state_dict_and_module_wrappers_are_taken(tmp_path: Path) -> None:
    state = small_model().state_dict()
    path = save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pt")
    assert list(read(path)) == list(state)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_random_bytes_are_not_a_checkpoint(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(os.urandom(10_000))
    expected = "not a checkpoint: neither a torch.save archive" if suffix == ".pt" else "not a readable safetensors"
    with pytest.raises(DataError, match=rf"^checkpoint {path}: {expected}"):
        read(path)


def test_a_plain_pickle_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"0.weight": Payload(marker)}))
    with pytest.raises(DataError, match="not a checkpoint: neither a torch.save archive"):
        read(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the control: unpickled unsafely, the payload runs
    assert marker.is_dir()


def test_a_torch_save_archive_with_a_payload_is_refused_by_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Payload(marker)}, path)  # a real zip archive whose data.pkl calls os.mkdir
    with pytest.raises(
        DataError,
        match=r"holds Python objects, not only tensors: weights_only loading refuses "
        r"it \(it names posix.mkdir\); nothing in it was run",
    ):
        read(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_truncated_checkpoint_is_refused(tmp_path: Path, suffix: str) -> None:
    path = save(small_model().state_dict(), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    expected = "not a loadable torch.save archive" if suffix == ".pt" else "not a readable safetensors file"
    with pytest.raises(DataError, match=expected):
        read(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_wrong_shape_or_missing_key_is_refused(tmp_path: Path, suffix: str) -> None:
    state = small_model().state_dict()
    wrong = dict(state) | {"2.weight": torch.zeros(2, 4)}
    with pytest.raises(DataError, match=r"2.weight has shape \[2, 4\], tiny needs \[2, 3\]"):
        read(save(wrong, tmp_path / f"shape{suffix}"))
    renamed = {k.replace("1.", "norm."): v for k, v in state.items()}
    with pytest.raises(DataError, match=r"its keys are not those of tiny: 2 missing .*'1.weight'.*2 unexpected"):
        read(save(renamed, tmp_path / f"keys{suffix}"))


def test_non_tensors_odd_dtypes_and_nan_are_refused(tmp_path: Path) -> None:
    state = small_model().state_dict()
    with pytest.raises(DataError, match="not a state dict"):
        read(save({"0.weight": 1.0}, tmp_path / "numbers.pt"))
    with pytest.raises(DataError, match="0.bias is torch.int64, tiny needs torch.float32"):
        read(save(dict(state) | {"0.bias": torch.zeros(3, dtype=torch.int64)}, tmp_path / "int.pt"))
    with pytest.raises(DataError, match="1.weight holds NaN or infinite values"):
        read(save(dict(state) | {"1.weight": torch.tensor([1.0, float("nan"), 1.0])}, tmp_path / "nan.safetensors"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_file_far_larger_than_the_architecture_is_refused_unread(tmp_path: Path, suffix: str) -> None:
    n_params = sum(t.numel() for t in small_model().state_dict().values())
    limit = CHECKPOINT_SIZE_FACTOR * 4 * n_params + CHECKPOINT_SLACK_BYTES
    path = save(small_model().state_dict(), tmp_path / f"big{suffix}")
    with open(path, "r+b") as f:  # a real checkpoint, padded sparsely past the cap
        f.truncate(limit + 1)
    with pytest.raises(DataError, match="is more than a tiny checkpoint can need .* refused unread"):
        read(path)


# ------------------------------------------------------------- with ViT-B-32


@pytest.fixture(scope="module")
def vit_state() -> dict:
    model, _, _ = load_clip("ViT-B-32", None, device="cpu", seed=0)
    return model.state_dict()


def test_load_clip_reads_a_safetensors_checkpoint(tmp_path: Path, vit_state: dict) -> None:
    path = save(vit_state, tmp_path / "vit.safetensors")
    model, _, info = load_clip("ViT-B-32", str(path), device="cpu", seed=7)  # another seed: weights come from the file
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, vit_state[key], rtol=0, atol=0)
    assert info["pretrained_weights"] is True


def test_load_clip_refuses_a_wrong_shape_in_one_line(tmp_path: Path, vit_state: dict) -> None:
    path = save(dict(vit_state) | {"visual.proj": torch.zeros(768, 256)}, tmp_path / "vit.pt")
    with pytest.raises(DataError, match=r"visual.proj has shape \[768, 256\], ViT-B-32 needs \[768, 512\]$"):
        load_clip("ViT-B-32", str(path), device="cpu")


def test_the_params_check_refuses_a_bad_checkpoint_before_any_work(tmp_path: Path) -> None:
    big = tmp_path / "big.pt"
    with open(big, "wb") as f:  # sparse: 3 GB announced, nothing written
        f.truncate(3 << 30)
    start = time.perf_counter()
    with pytest.raises(
        ConfigError,
        match=rf"^params.yaml \[features.image\]: pretrained: checkpoint {big}: 3,221 MB "
        r"is more than a ViT-B-32 checkpoint can need \(2,488 MB",
    ):
        ImageFeatureConfig.from_dict({"pretrained": str(big), "device": "cpu"}, "features.image")
    assert time.perf_counter() - start < 30  # the architecture is built on the meta device


def test_the_image_stage_fails_on_a_random_checkpoint_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(os.urandom(4096))
    params = {
        "dataset": {"name": "toy", "reviews_url": "r.json"},
        "features": {"image": {"model": "ViT-B-32", "pretrained": "weights.pt", "device": "cpu"}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc, _ = stage("image_features", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "image_features stage failed: params.yaml [features.image]: pretrained: checkpoint weights.pt: not a "
        "checkpoint: neither a torch.save archive (zip) nor .safetensors (plain pickles and legacy torch.save "
        "files are not read; save it again with torch.save)"
    ]
