"""The dataset catalog: names fill in URLs and pins, params override, the mirror, trust on
first use, the listing command, and a 2023 official split end to end through the download
and graph stages, served by a real HTTP server on 127.0.0.1 under the catalog's paths."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sea.data.catalog import EXPLICIT, PINNED, Catalog, DatasetConfig, catalog, image_features_url, resolve
from sea.data.split import SplitConfig
from sea.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def ds(**values) -> DatasetConfig:
    return DatasetConfig.from_dict(values, "dataset")


def by_role(files) -> dict:
    return {d.role: d for d in files}


# --------------------------------------------------------------------------- resolving


def test_a_2014_name_fills_in_urls_and_image_features():
    files = by_role(resolve(ds(name="baby")))
    assert (
        files["reviews"].url == "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Baby_5.json.gz"
    )
    assert files["meta"].url == "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Baby.json.gz"
    assert files["reviews"].check == "tofu" and files["reviews"].record_key == "baby/reviews_Baby_5.json.gz"
    sports = catalog().get("sports")  # an alias
    assert sports.name == "sports_and_outdoors" and sports.url(sports.image_features) == (
        "http://snap.stanford.edu/data/amazon/productGraph/image_features/categoryFiles/"
        "image_features_Sports_and_Outdoors.b"
    )
    assert by_role(resolve(ds(name="clothing")))["reviews"].name == "reviews_Clothing_Shoes_and_Jewelry_5.json.gz"
    gift = by_role(resolve(ds(name="gift_cards-2018")))
    assert gift["reviews"].url.endswith("/amazon_v2/categoryFilesSmall/Gift_Cards_5.json.gz")
    assert gift["meta"].url.endswith("/amazon_v2/metaFiles2/meta_Gift_Cards.json.gz")


def test_2023_pins_are_the_official_hashes(amazon_real):
    official = {}
    for line in (amazon_real / "2023" / "official_sha256.txt").read_text().splitlines():
        path, _, _, oid, _, size = line.split()
        official[path + ".gz"] = (oid.removeprefix("sha256:"), int(size))
    pins = {
        f.path: (f.pin.content_sha256, f.pin.content_bytes)
        for e in catalog().entries.values()
        for f in e.all_files()
        if f.pin is not None and e.release.key == "2023"
    }
    assert pins == official and len(pins) == 70


def test_a_pin_covers_the_uncompressed_file(amazon_real):
    """The shared benchmark files are the official ones gzipped: their content matches the pin."""
    from sea.data.catalog import content_digest

    entry = catalog().get("all_beauty-2023")
    for f in entry.split_files("last_out"):
        local = amazon_real / "2023" / "all_beauty" / "5core" / "last_out" / f.name
        assert content_digest(local, f.pin.content_bytes) == (f.pin.content_sha256, f.pin.content_bytes)


def test_given_split_files_replace_the_reviews():
    files = resolve(ds(name="all_beauty-2023"), "last_out")
    assert [d.role for d in files] == ["train", "valid", "test", "meta"]
    assert files[0].url.endswith("/amazon_2023/benchmark/5core/last_out/All_Beauty.train.csv.gz")
    assert all(d.check == PINNED for d in files)
    assert [d.role for d in resolve(ds(name="all_beauty-2023", metadata=False), "timestamp")] == [
        "train",
        "valid",
        "test",
    ]
    with pytest.raises(ConfigError, match="'last_out' is not an official split of baby"):
        resolve(ds(name="baby"), "last_out")
    with pytest.raises(ConfigError, match="needs a catalog entry with official splits"):
        resolve(ds(name="mine", reviews_url="x/r.json.gz"), "last_out")


def test_params_override_the_catalog():
    mirror = by_role(resolve(ds(name="baby", mirror="http://lab.example/amazon/")))
    assert mirror["reviews"].url == "http://lab.example/amazon/categoryFiles/reviews_Baby_5.json.gz"
    local = by_role(
        resolve(
            ds(
                name="baby",
                reviews_url="/dumps/reviews_Baby_5.json.gz",
                reviews_sha256="AB" * 32,
                mirror="http://lab.example/",
            )
        )
    )
    assert local["reviews"].url == "/dumps/reviews_Baby_5.json.gz"  # explicit url beats the mirror
    assert local["reviews"].check == EXPLICIT and local["reviews"].sha256 == "ab" * 32
    assert local["meta"].url == "http://lab.example/categoryFiles/meta_Baby.json.gz"
    full = by_role(resolve(ds(name="all_beauty-2023", reviews_url="http://lab/x/All_Beauty.jsonl.gz")))["reviews"]
    assert full.check == PINNED and full.pin == catalog().get("all_beauty-2023").full_reviews.pin  # full reviews
    assert image_features_url(ds(name="baby", mirror="http://lab/")) == (
        "http://lab/image_features/categoryFiles/image_features_Baby.b"
    )
    assert image_features_url(ds(name="all_beauty-2023")) is None
    pinned = by_role(resolve(ds(name="all_beauty-2023", reviews_sha256="cd" * 32)))
    assert pinned["reviews"].check == EXPLICIT and pinned["reviews"].pin is None  # explicit beats the pin
    assert pinned["meta"].check == PINNED


def test_the_sample_comes_from_the_catalog_and_own_dumps_keep_their_explicit_urls():
    params = yaml.safe_load((REPO / "params.yaml").read_text())["dataset"]
    assert params["name"] == "sample" and params["reviews_url"] is None  # one param picks a dataset
    files = by_role(resolve(ds(**params)))
    assert files["reviews"].url == "data/sample/reviews_Sample_5.json.gz" and files["reviews"].check == PINNED
    assert files["meta"].url == "data/sample/meta_Sample.json.gz" and files["meta"].check == PINNED
    for f in files.values():  # the pins are the bundled files' own hashes
        assert hashlib.sha256((REPO / f.url).read_bytes()).hexdigest() == f.sha256
    baby = by_role(resolve(ds(**(params | {"name": "baby"}))))  # changing the name alone is enough
    assert baby["reviews"].name == "reviews_Baby_5.json.gz"
    own = by_role(
        resolve(ds(name="mine", reviews_url="data/sample/reviews_Sample_5.json.gz", reviews_sha256="ab" * 32))
    )
    assert own["reviews"].check == EXPLICIT and set(own) == {"reviews"}


def test_contradicting_params_are_refused_naming_the_param():
    own = {"reviews_url": "data/sample/reviews_Sample_5.json.gz", "reviews_sha256": "ab" * 32}
    with pytest.raises(
        ConfigError,
        match=r"reviews_url .* names the file 'reviews_Sample_5.json.gz', but catalog "
        r"entry 'baby' .* has 'reviews_Baby_5.json.gz'",
    ):
        resolve(ds(name="baby", **own))  # a dump of one's own under a catalog name
    with pytest.raises(ConfigError, match="mirror is set, but name 'mine' is not a catalog entry"):
        resolve(ds(name="mine", reviews_url="r.json.gz", mirror="http://x/"))
    with pytest.raises(ConfigError, match="reviews_url is required"):
        ds(name="mine")
    with pytest.raises(ConfigError, match="mirror must be an http"):
        ds(name="baby", mirror="lab/amazon")
    with pytest.raises(ConfigError, match="image_size must be one of"):
        ds(name="baby", image_size="huge")
    with pytest.raises(ConfigError, match="metadata: false contradicts meta_url"):
        ds(name="mine", reviews_url="r.json.gz", meta_url="m.json.gz", metadata=False)
    with pytest.raises(ConfigError, match="metadata: false contradicts meta_url/meta_sha256"):
        ds(name="baby", meta_sha256="ab" * 32, metadata=False)
    with pytest.raises(ConfigError, match=r"split\]: method: given needs given"):
        SplitConfig.from_dict({"method": "given"}, "split")
    with pytest.raises(ConfigError, match="given: 'last_out' is only read with method: given"):
        SplitConfig.from_dict({"method": "mmrec", "given": "last_out"}, "split")
    with pytest.raises(ConfigError, match="reviews_url and reviews_sha256 are not read with split.given"):
        resolve(ds(name="all_beauty-2023", reviews_sha256="ab" * 32), "last_out")
    with pytest.raises(ConfigError, match="reviews_url and reviews_sha256 are not read with split.given"):
        resolve(ds(name="all_beauty-2023", reviews_url="x/All_Beauty.csv.gz"), "last_out")


def test_catalog_file_is_checked(tmp_path):
    text = (REPO / "sea" / "data" / "catalog.yaml").read_text()
    bad = tmp_path / "catalog.yaml"
    bad.write_text(text.replace("  baby: {", "  sports: {", 1))  # a name given twice
    with pytest.raises(ValueError, match="'sports' appears twice"):
        Catalog.load(bad)
    bad.write_text(
        text + "    benchmark/5core/rating_only/Nothing.csv.gz: {content_sha256: " + "a" * 64 + ", content_bytes: 1}\n"
    )
    with pytest.raises(ValueError, match="pins of release 2023 for files no entry has"):
        Catalog.load(bad)


# --------------------------------------------------------------------------- the listing


def test_listing_command():
    env = os.environ | {"PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "sea", "datasets"], capture_output=True, text=True, env=env, check=True
    ).stdout
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()[1:]
        if len(line.split()) >= 5 and line.split()[1] in ("bundled", "2014", "2018", "2023")
    }
    assert rows["baby"][1:4] == ["2014", "Baby", "3"] and rows["baby"][4] == "0"
    assert rows["all_beauty-2023"][1:5] == ["2023", "All_Beauty", "15", "15"]
    assert rows["sports_and_outdoors"][-1] == "sports"
    assert rows["sample"][1:5] == ["bundled", "Sample", "2", "2"]
    assert len(rows) == len(catalog().entries)
    verbose = subprocess.run(
        [sys.executable, "-m", "sea", "datasets", "-v"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "image_features_Baby.b  [unpinned (trusted on first use)]" in verbose
    assert "last_out/All_Beauty.test.csv.gz  [pinned, content 14.7 kB uncompressed]" in verbose


# --------------------------------------------------------------------------- stages, served over HTTP


def failed_with(proc: subprocess.CompletedProcess, stage_name: str) -> str:
    """The one-line error of a failed stage (progress bars aside), with no traceback."""
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{stage_name} stage failed: ")
    return last


def stage(cwd: Path, name: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "pipeline" / f"{name}.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_params(cwd: Path, dataset: dict, split: dict | None = None) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] |= {k: None for k in params["dataset"] if k.endswith(("_url", "_sha256"))}
    params["dataset"] |= dataset
    params["split"] |= split or {}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def serve_as(root: Path, files: dict[str, Path]) -> Path:
    """Lay ``files`` (catalog path -> real file) out under ``root`` as the release's server does."""
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    return root


def test_unpinned_files_are_trusted_on_first_use(tmp_path, amazon_real, serve_dir):
    music = amazon_real / "2014" / "digital_music"
    site = serve_as(
        tmp_path / "site",
        {
            "categoryFiles/reviews_Digital_Music_5.json.gz": music / "reviews_Digital_Music_5.head.json.gz",
            "categoryFiles/meta_Digital_Music.json.gz": music / "meta_Digital_Music.head.json.gz",
        },
    )
    work = tmp_path / "work"
    work.mkdir()
    write_params(work, {"name": "digital_music", "mirror": serve_dir(site) + "/"})

    first = stage(work, "download")
    assert first.returncode == 0, first.stderr
    assert "sha256 trusted on first use (recorded)" in first.stdout
    record = json.loads((work / "data" / "hashes.json").read_text())
    reviews = music / "reviews_Digital_Music_5.head.json.gz"
    from sea.files import sha256_file

    assert record["digital_music/reviews_Digital_Music_5.json.gz"] == {
        "sha256": sha256_file(reviews),
        "bytes": reviews.stat().st_size,
    }
    assert set(record) == {"digital_music/reviews_Digital_Music_5.json.gz", "digital_music/meta_Digital_Music.json.gz"}
    raw = work / "data" / "raw" / "digital_music"
    assert (raw / "reviews_Digital_Music_5.json.gz").read_bytes() == reviews.read_bytes()
    source = (raw / "SOURCE.json").read_bytes()
    assert json.loads(source)["reviews"]["url"].endswith("/categoryFiles/reviews_Digital_Music_5.json.gz")
    assert json.loads(source)["reviews"]["verified"] == "trusted on first use"

    again = stage(work, "download")
    assert again.returncode == 0 and again.stdout.count("sha256 trusted on first use (verified)") == 2
    assert json.loads((work / "data" / "hashes.json").read_text()) == record
    assert (raw / "SOURCE.json").read_bytes() == source  # recording or verifying: the same output bytes

    # the server now has other bytes under the same name: refused, the first download kept
    shutil.copyfile(
        music / "reviews_Digital_Music_5.truncated.json.gz", site / "categoryFiles/reviews_Digital_Music_5.json.gz"
    )
    changed = failed_with(stage(work, "download"), "download")
    assert "sha256 mismatch" in changed and "data/hashes.json (trust on first use)" in changed
    assert (raw / "reviews_Digital_Music_5.json.gz").read_bytes() == reviews.read_bytes()
    assert json.loads((work / "data" / "hashes.json").read_text()) == record


def beauty_site(root: Path, amazon_real: Path, split: str = "last_out") -> Path:
    folder = amazon_real / "2023" / "all_beauty" / "5core" / split
    return serve_as(
        root,
        {
            f"benchmark/5core/{split}/All_Beauty.{p}.csv.gz": folder / f"All_Beauty.{p}.csv.gz"
            for p in ("train", "valid", "test")
        },
    )


def test_2023_official_split_end_to_end(tmp_path, amazon_real, serve_dir):
    """dataset.name: all_beauty-2023 + split.method: given, through download and graph."""
    site = beauty_site(tmp_path / "site", amazon_real)
    work = tmp_path / "work"
    work.mkdir()
    write_params(
        work,
        {"name": "all_beauty-2023", "mirror": serve_dir(site), "metadata": False},
        {"method": "given", "given": "last_out"},
    )

    down = stage(work, "download")
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("sha256 pinned") == 3 and not (work / "data" / "hashes.json").exists()
    assert sorted(serve_dir.hits) == sorted(
        f"/benchmark/5core/last_out/All_Beauty.{p}.csv.gz" for p in ("train", "valid", "test")
    )
    graph = stage(work, "graph")
    assert graph.returncode == 0, graph.stderr

    inter = pd.read_parquet(work / "data" / "processed" / "interactions.parquet")
    users = pd.read_parquet(work / "data" / "processed" / "users.parquet")
    items = pd.read_parquet(work / "data" / "processed" / "items.parquet")
    assert list(inter.columns) == ["user", "item", "rating", "timestamp", "split"]
    assert [str(t) for t in inter.dtypes[:4]] == ["int32", "int32", "float32", "int64"]
    assert list(inter["split"].cat.categories) == ["train", "valid", "test"]
    # exactly the official rows, no k-core and no re-split
    folder = amazon_real / "2023" / "all_beauty" / "5core" / "last_out"
    for part in ("train", "valid", "test"):
        official = pd.read_csv(folder / f"All_Beauty.{part}.csv.gz", dtype={"user_id": str, "parent_asin": str})
        mine = inter[inter["split"] == part]
        got = set(
            zip(
                users["reviewer_id"].to_numpy()[mine["user"]], items["asin"].to_numpy()[mine["item"]], mine["timestamp"]
            )
        )
        assert got == set(zip(official["user_id"], official["parent_asin"], official["timestamp"]))
    assert len(users) == 253 and len(items) == 356
    assert (inter.groupby("user")["split"].apply(lambda s: list(s)[-2:] == ["valid", "test"])).all()
    stats = json.loads((work / "data" / "processed" / "stats.json").read_text())
    assert stats["split"] | {} == {
        "method": "given",
        "given": "last_out",
        "seed": None,
        "train": 2029,
        "valid": 253,
        "test": 253,
    }
    assert stats["k_core"].startswith("as given")

    # graph again: the same bytes
    before = {p.name: p.read_bytes() for p in (work / "data" / "processed").iterdir()}
    assert stage(work, "graph").returncode == 0
    assert {p.name: p.read_bytes() for p in (work / "data" / "processed").iterdir()} == before


def test_2023_pin_mismatch_is_refused(tmp_path, amazon_real, serve_dir):
    site = beauty_site(tmp_path / "site", amazon_real)
    test_file = site / "benchmark/5core/last_out/All_Beauty.test.csv.gz"
    text = gzip.decompress(test_file.read_bytes()).replace(b",5.0,", b",4.0,", 1)
    test_file.write_bytes(gzip.compress(text))
    work = tmp_path / "work"
    work.mkdir()
    write_params(
        work,
        {"name": "all_beauty-2023", "mirror": serve_dir(site), "metadata": False},
        {"method": "given", "given": "last_out"},
    )
    error = failed_with(stage(work, "download"), "download")
    assert "All_Beauty.test.csv.gz: the uncompressed content does not match the catalog's pin" in error
    assert not (work / "data" / "raw").exists() or not any((work / "data" / "raw").iterdir())


def test_given_split_with_unseen_users_fails_in_graph_naming_file_and_line(tmp_path, amazon_real, serve_dir):
    site = beauty_site(tmp_path / "site", amazon_real, "timestamp")
    work = tmp_path / "work"
    work.mkdir()
    write_params(
        work,
        {"name": "all_beauty-2023", "mirror": serve_dir(site), "metadata": False},
        {"method": "given", "given": "timestamp"},
    )
    assert stage(work, "download").returncode == 0
    error = failed_with(stage(work, "graph"), "graph")
    assert "All_Beauty.valid.csv.gz:" in error and "has no row in the train file" in error


@pytest.mark.slow
def test_2023_official_split_runs_through_dvc_repro(tmp_path, amazon_real, serve_dir):
    """`dvc repro` of the whole pipeline on all_beauty-2023 with its official last_out split,
    served under the catalog's paths (dataset.mirror), with a model that reads no features:
    the shared files hold no All_Beauty metadata, so the feature stages write empty files."""
    from tests.shell import copy_tree, run

    site = beauty_site(tmp_path / "site", amazon_real)
    work = copy_tree(REPO, tmp_path / "work")
    write_params(
        work,
        {"name": "all_beauty-2023", "mirror": serve_dir(site), "metadata": False},
        {"method": "given", "given": "last_out"},
    )
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["model"]["name"] = "lightgcn"
    params["train"] |= {"max_epochs": 5, "device": "cpu"}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "all_beauty-2023"], work)
    out = run(["dvc", "repro"], work)
    assert "no item has any text input" in out.stderr and "no item has any image input" in out.stderr
    assert np.load(work / "data/features/text.npy", allow_pickle=False).shape == (356, 0)
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    recall = [v for k, v in pd.json_normalize(metrics).iloc[0].items() if "recall@20" in k]
    assert recall and all(0.0 <= r <= 1.0 for r in recall)
    split = pd.read_parquet(work / "data/processed/interactions.parquet")["split"].value_counts()
    assert split.to_dict() == {"train": 2029, "valid": 253, "test": 253}  # the official rows, as given
    recs = pd.read_parquet(work / "models" / "recommendations.parquet")
    assert recs["user"].nunique() == 253
    train = pd.read_parquet(work / "data" / "processed" / "interactions.parquet").query("split == 'train'")
    seen = set(zip(train["user"], train["item"]))
    assert not any((u, i) in seen for u, i in zip(recs["user"], recs["item"]))  # training items masked
    report = (work / "reports" / "report.md").read_text()
    assert "- train dump `All_Beauty.train.csv.gz`: sha256" in report and "verified: pinned" in report
    # a model that reads features stops with one line naming the missing modality
    bad = run(["dvc", "exp", "run", "-S", "model.name=sea"], work, check=False)
    assert bad.returncode != 0 and "no item had a usable image" in bad.stderr + bad.stdout


RELEASE_FILES = {  # a catalog name of each release -> (catalog path, file in ../shared)
    "digital_music": {
        "categoryFiles/reviews_Digital_Music_5.json.gz": "2014/digital_music/reviews_Digital_Music_5.head.json.gz",
        "categoryFiles/meta_Digital_Music.json.gz": "2014/digital_music/meta_Digital_Music.head.json.gz",
    },
    "gift_cards-2018": {
        "categoryFilesSmall/Gift_Cards_5.json.gz": "2018/gift_cards/Gift_Cards_5.json.gz",
        "metaFiles2/meta_Gift_Cards.json.gz": "2018/gift_cards/meta_Gift_Cards.json.gz",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RELEASE_FILES))
def test_a_catalog_name_runs_through_dvc_repro(name, tmp_path, amazon_real, serve_dir):
    """`dataset.name` alone (plus a mirror serving the real files under their catalog paths)
    runs the whole pipeline for the 2014 and 2018 releases; the metadata's image URLs point
    to Amazon's servers, unreachable here, so the image stage gives up after a bounded
    number of attempts and SEA trains on text."""
    from tests.shell import copy_tree, run

    site = serve_as(tmp_path / "site", {rel: amazon_real / src for rel, src in RELEASE_FILES[name].items()})
    work = copy_tree(REPO, tmp_path / "work")
    write_params(work, {"name": name, "mirror": serve_dir(site)})
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["model"]["modalities"] = ["text"]
    params["train"] |= {"max_epochs": 3, "device": "cpu"}
    params["features"]["image"] |= {"timeout": 5, "retries": 0}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", name], work)
    run(["dvc", "repro"], work)
    stats = json.loads((work / "data/processed/stats.json").read_text())
    assert stats["dataset"] == name and stats["after_k_core"]["items"] > 0
    assert {f["verified"] for f in stats["dumps"].values()} == {"trusted on first use"}
    text = json.loads((work / "data/features/text.json").read_text())
    assert text["n_with_text"] > 0
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["recall@20"] <= 1.0
    assert set(json.loads((work / "data/hashes.json").read_text())) == {
        f"{name}/{p.rsplit('/', 1)[1]}" for p in RELEASE_FILES[name]
    }


def test_a_damaged_hash_record_is_refused_naming_it(tmp_path):
    from sea.data.catalog import HashRecord
    from sea.errors import DataError

    path = tmp_path / "hashes.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"hashes\.json: not valid JSON"):
        HashRecord(path)
    path.write_text(json.dumps({"baby/reviews_Baby_5.json.gz": {"bytes": 3}}))
    with pytest.raises(DataError, match=r"hashes\.json: expected"):
        HashRecord(path)
    record = HashRecord(tmp_path / "new" / "hashes.json")
    record.add("b/x", "ab" * 32, 3)
    record.add("a/y", "cd" * 32, 4)
    record.save()
    assert list(json.loads((tmp_path / "new" / "hashes.json").read_text())) == ["a/y", "b/x"]  # sorted
    assert HashRecord(tmp_path / "new" / "hashes.json").expected("b/x") == "ab" * 32
