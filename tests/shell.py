"""Running the project's commands (dvc, git, stage scripts) from tests: the venv's tools
first on PATH, offline, no analytics; a failed command raises with its output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
    }


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def git_repo(dest: Path) -> None:
    """``git init`` with an identity (queued DVC experiments need one)."""
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.email", "ci@example.invalid"], dest)
    run(["git", "config", "user.name", "CI"], dest)


def copy_tree(root: Path, dest: Path) -> Path:
    """The working tree of ``root`` (tracked and untracked, not ignored files) copied to
    ``dest``, made a git repository (not yet committed)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        if (root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest / rel)
    git_repo(dest)
    return dest
