"""MMRec folder interop: write/read round trip, bad folders, and the pipeline trained end to
end from an MMRec folder (then exported back to the same folder contents)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sea.data.amazon import read_reviews
from sea.data.graph import dedupe, k_core, reindex
from sea.data.mmrec import inter_file, read_features, read_inter, read_item_ids, write_folder
from sea.data.split import split
from sea.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processed() -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.Series]:
    """The bundled sample's interactions (5-core, mmrec split) with random features of odd widths."""
    core, _, asins = reindex(k_core(dedupe(read_reviews(ROOT / "data/sample/reviews_Sample_5.json.gz")), 5))
    inter = split(core, "mmrec", 999)[["user", "item", "rating", "timestamp", "split"]]
    inter = inter.astype({"rating": "float32", "timestamp": "int64"})
    rng = np.random.default_rng(0)
    features = {
        "image": rng.normal(size=(len(asins), 48)).astype(np.float32),
        "text": rng.normal(size=(len(asins), 20)).astype(np.float32),
    }
    return inter, features, pd.Series(asins.astype(str))


def test_round_trip(tmp_path, processed):
    inter, features, asins = processed
    write_folder(tmp_path, "toy", inter, features, asins)
    assert inter_file(tmp_path).name == "toy.inter"
    header = (tmp_path / "toy.inter").read_text().splitlines()[0].split("\t")
    assert header == ["userID", "itemID", "rating", "timestamp", "x_label"]
    back = read_inter(tmp_path / "toy.inter")
    pd.testing.assert_frame_equal(back.reset_index(drop=True), inter.reset_index(drop=True), check_dtype=False)
    assert (back["split"].astype(str) == inter["split"].astype(str).to_numpy()).all()
    for m, x in features.items():
        assert np.array_equal(read_features(tmp_path, m, len(asins)), x)
    assert read_item_ids(tmp_path, len(asins)).tolist() == asins.tolist()


def test_bad_inter_files(tmp_path):
    bad = tmp_path / "a.inter"
    bad.write_text("userID\titemID\trating\ttimestamp\tx_label\n0\t1\t5\t10\t0\n1\t2\t4\t11\t7\n")
    with pytest.raises(DataError, match=r"a\.inter:3: x_label"):
        read_inter(bad)
    bad.write_text("user\titem\n0\t1\n")
    with pytest.raises(DataError, match="missing column"):
        read_inter(bad)
    (tmp_path / "b.inter").write_text("")
    with pytest.raises(DataError, match="exactly one"):
        inter_file(tmp_path)


def test_pipeline_trains_from_an_mmrec_folder(tmp_path, processed):
    inter, features, asins = processed
    folder = tmp_path / "mmrec_in"
    write_folder(folder, "toy", inter, features, asins)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = {"name": "toy", "source": "mmrec", "path": str(folder)}
    params["train"] |= {"max_epochs": 2}
    params["club"] |= {"steps": 2}
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "graph", "text_features", "image_features", "export_mmrec", "train", "evaluate"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "pipeline" / f"{stage}.py")], cwd=work, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-3000:]}"
    import json

    metrics = json.loads((work / "reports/metrics.json").read_text())
    assert 0 < metrics["test"]["recall@20"] <= 1
    report = (work / "reports/report.md").read_text()
    assert "precomputed (image_feat.npy of the MMRec folder)" in report
    # exported again: the same interactions, split and features as the folder it came from
    out = work / "data/mmrec/toy"
    assert (out / "toy.inter").read_bytes() == (folder / "toy.inter").read_bytes()
    for name in ("image_feat.npy", "text_feat.npy"):
        assert np.array_equal(np.load(out / name), np.load(folder / name))
