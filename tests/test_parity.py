"""The parity checks (scripts/parity/, see its README.md): each model's script runs the
reference implementation's model file next to ours and exits 0 only when every figure is
within its tolerance. The reference code is not in this repository: these tests run
against the checkout that $SEA_PARITY_MMREC (MMRec), $SEA_PARITY_COHESION (COHESION) or
the authors' $SEA_PARITY_GUME, $SEA_PARITY_MENTOR, $SEA_PARITY_PGL names, and skip, with
the reason, where the variable is unset or the checkout lacks the model's file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "scripts" / "parity"

_spec = importlib.util.spec_from_file_location("sea_parity_checks", PARITY / "common.py")
parity = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)  # defines things only: the shims and stand-ins are installed by setup()


def test_every_check_has_its_script() -> None:
    scripts = {p.stem for p in PARITY.glob("*.py")} - {"common"}
    assert scripts == set(parity.CHECKS)


@pytest.mark.parametrize("model", sorted(parity.CHECKS))
def test_parity(model: str) -> None:
    reference, relative = parity.CHECKS[model]
    root = os.environ.get(reference.env)
    if not root:
        pytest.skip(f"${reference.env} is unset: the root of a checkout of {reference.url} (commit {reference.commit})")
    if not (Path(root) / relative).is_file():
        pytest.skip(f"${reference.env}={root} has no {relative}")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, str(PARITY / f"{model}.py"), "--ref", root],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert f"parity ok {model}" in run.stdout
