"""What every bench script needs: the kernels it computes with (the pipeline's portable
ones, or native with ``SEA_KERNELS=native``), the commit it measured and a CUDA sync
before a clock read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sea.runtime import KERNELS_ENV, describe, use_kernels

use_kernels(os.environ.get(KERNELS_ENV, "portable"))  # before torch computes anything

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def stage_env(cwd: Path) -> dict[str, str]:
    """The environment a bench runs a pipeline stage or script in: ``cwd`` importable, no
    progress bars, no hub, and this interpreter as the stages' ``python``."""
    return os.environ | {
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(cwd),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


def commit() -> str:
    """The short hash of the checkout's HEAD, or ``?`` outside a git checkout."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "?"


def kernels() -> str:
    """The kernels this bench process computes with, in words."""
    k = describe()
    return f"{k['kernels']} kernels (ATen {k['cpu_kernels']})"


def sync(device: str | torch.device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
