"""Named variants as queued DVC experiments, and their results read back from git.

A variant is a name plus ``-S key=value`` overrides on top of the committed params.
:func:`run_variants` queues each one (``dvc exp run --queue -n <name> -S ...``) and runs
them all with ``dvc exp run --run-all``. Each runs in its own temporary copy of the
repository, re-running only the stages whose params changed (the others come from the DVC
cache), so the workspace and its ``dvc repro`` state are left alone. A finished experiment
is a git commit under ``refs/exps/<baseline sha[:2]>/<baseline sha[2:]>/<name>``, where the
baseline is the commit it was queued from; :func:`experiment_commit` finds it and
:func:`show_file` reads a git-tracked output (``reports/per_user.parquet``,
``reports/metrics.json``) from it.

Before queueing, :func:`clean_queue` clears what an interrupted earlier run leaves behind:
a task still marked "Running" with no worker alive (``dvc exp run --run-all`` would wait
for it forever) is killed and removed, and queued tasks with the names about to be queued
are removed; earlier finished experiments of those names on the same commit are replaced.

Failures (no git identity, a DVC command that fails, an experiment that did not finish)
raise :class:`ExperimentError` with the remedy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sea.errors import ConfigError

EXPS_NAMESPACE = "refs/exps"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*(\[\d+\])*=.*$", re.DOTALL)


class ExperimentError(RuntimeError):
    """A DVC or git step of the experiment runner failed; the message says what to do."""


@dataclass(frozen=True)
class QueueTask:
    """One line of ``dvc queue status``."""

    task: str
    name: str
    status: str  # Queued | Running | Success | Failed


# ------------------------------------------------------------------ commands


def _dvc_command() -> list[str]:
    exe = shutil.which("dvc")
    return [exe] if exe else [sys.executable, "-m", "dvc"]


def dvc(*args: str, cwd: Path = Path("."), capture: bool = False) -> subprocess.CompletedProcess:
    """Run ``dvc args``; echo it unless ``capture``; ExperimentError when it fails."""
    if not capture:
        print("$ dvc " + " ".join(args), flush=True)
    proc = subprocess.run([*_dvc_command(), *args], cwd=cwd, text=True, capture_output=capture)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] if capture else []
        raise ExperimentError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode})" + (f": {detail[0]}" if detail else "")
        )
    return proc


def git(*args: str, cwd: Path = Path(".")) -> str:
    """Run ``git args`` and return its stdout; ExperimentError with git's message on failure."""
    proc = subprocess.run(["git", *args], cwd=cwd, text=True, capture_output=True)
    if proc.returncode != 0:
        raise ExperimentError(f"`git {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def head(cwd: Path = Path(".")) -> str:
    """The full sha of HEAD, the baseline new experiments are queued from."""
    return git("rev-parse", "--verify", "HEAD^{commit}", cwd=cwd).strip()


# ------------------------------------------------------------------ finished experiments


def experiment_ref(name: str, baseline: str) -> str:
    """DVC's ref of experiment ``name`` queued from commit ``baseline`` (a full sha)."""
    return f"{EXPS_NAMESPACE}/{baseline[:2]}/{baseline[2:]}/{name}"


def experiment_commit(name: str, cwd: Path = Path("."), baseline: str | None = None) -> str | None:
    """The commit of finished experiment ``name`` on ``baseline`` (default HEAD), or None."""
    ref = experiment_ref(name, baseline or head(cwd))
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=cwd, text=True, capture_output=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def show_file(rev: str, path: str, cwd: Path = Path(".")) -> bytes:
    """The bytes of git-tracked ``path`` at commit ``rev`` (``git show <rev>:<path>``)."""
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        raise ExperimentError(f"{path} is not in commit {rev[:7]}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


# ------------------------------------------------------------------ the queue


def queue_status(cwd: Path = Path(".")) -> tuple[list[QueueTask], int]:
    """The tasks of ``dvc queue status`` and the number of active workers."""
    out = dvc("queue", "status", cwd=cwd, capture=True).stdout
    tasks, active, in_table = [], 0, False
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["Task"] and words[-1:] == ["Status"]:
            in_table = True
        elif not words:
            in_table = False
        elif in_table and len(words) >= 3:
            tasks.append(QueueTask(words[0], words[1], words[-1]))
        if m := re.match(r"Worker status:\s*(\d+)\s+active", line.strip()):
            active = int(m.group(1))
    return tasks, active


def clean_queue(names: list[str], cwd: Path = Path(".")) -> None:
    """Clear stale queue entries before queueing ``names`` (see the module docstring).

    Refuses (ExperimentError) while a queue worker is active: another run is in progress.
    """
    tasks, active = queue_status(cwd)
    running = [t for t in tasks if t.status == "Running"]
    if active:
        raise ExperimentError(
            f"a DVC experiment run is in progress ({active} active worker(s), tasks "
            f"{[t.name for t in running]}): wait for it, or stop it with `dvc queue kill <task>`"
        )
    if running:
        ids = [t.task for t in running]
        print(
            f"stale tasks marked Running with no worker alive: {[t.name for t in running]}; removing them", flush=True
        )
        dvc("queue", "kill", *ids, cwd=cwd)
        dvc("queue", "remove", *ids, cwd=cwd)
    ours = [t.task for t in tasks if t.status == "Queued" and t.name in names]
    if ours:
        dvc("queue", "remove", *ours, cwd=cwd)
    others = sorted({t.name for t in tasks if t.status == "Queued" and t.name not in names})
    if others:
        print(
            f"warning: other queued experiments will run too: {others} (`dvc queue remove --queued` drops them)",
            file=sys.stderr,
            flush=True,
        )


def check_ready(cwd: Path = Path(".")) -> None:
    """A git identity and a commit to queue from; warn about untracked files DVC won't see."""
    for key in ("user.name", "user.email"):
        if not subprocess.run(["git", "config", key], cwd=cwd, capture_output=True, text=True).stdout.strip():
            raise ExperimentError(f"queued DVC experiments need a git identity: git config {key} ...")
    head(cwd)
    untracked = git("ls-files", "--others", "--exclude-standard", cwd=cwd).split()
    if untracked:
        print(
            f"warning: {len(untracked)} untracked file(s) are not seen by the experiments "
            f"(git add them first): {', '.join(untracked[:5])}{' ...' if len(untracked) > 5 else ''}",
            file=sys.stderr,
            flush=True,
        )


def check_variants(variants: dict[str, list[str]]) -> None:
    """Experiment names usable as git refs; overrides of the form ``key=value``."""
    for name, sets in variants.items():
        if not NAME.match(name):
            raise ConfigError(f"experiment name {name!r}: use letters, digits, '_', '.', '-'")
        for s in sets:
            if not OVERRIDE.match(s):
                raise ConfigError(f"override {s!r} of {name!r} is not of the form section.key=value")


def queue(variants: dict[str, list[str]], cwd: Path = Path(".")) -> str:
    """Queue each variant as ``dvc exp run --queue -n <name> -S <override> ...``; return
    the baseline commit (HEAD) they were queued from.

    A finished experiment of the same name on HEAD is removed first (DVC refuses to queue
    over it).
    """
    base = head(cwd)
    old = [experiment_ref(n, base) for n in variants if experiment_commit(n, cwd, base)]
    if old:
        dvc("exp", "remove", *old, cwd=cwd)
    for name, sets in variants.items():
        dvc("exp", "run", "--queue", "-n", name, *[a for s in sets for a in ("-S", s)], cwd=cwd)
    return base


def run_all(names: list[str], cwd: Path = Path("."), jobs: int = 1, baseline: str | None = None) -> dict[str, str]:
    """``dvc exp run --run-all``; the commit of each of ``names`` (queued from ``baseline``,
    default HEAD). ExperimentError naming the experiments that did not finish (DVC itself
    exits 0 when one fails)."""
    dvc("exp", "run", "--run-all", "--jobs", str(jobs), cwd=cwd)
    return finished(names, cwd, baseline)


def finished(names: list[str], cwd: Path = Path("."), baseline: str | None = None) -> dict[str, str]:
    """The commit of each of ``names`` queued from ``baseline`` (default HEAD);
    ExperimentError listing the missing ones."""
    base = baseline or head(cwd)
    commits = {n: experiment_commit(n, cwd, base) for n in names}
    missing = [n for n, c in commits.items() if c is None]
    if missing:
        raise ExperimentError(
            f"no finished experiment {missing} on commit {base[:7]}; see "
            f"`dvc queue logs {missing[0]}` (a failed run), or run from the commit they were "
            "queued from"
        )
    return {n: c for n, c in commits.items() if c is not None}


def run_variants(variants: dict[str, list[str]], cwd: Path = Path("."), jobs: int = 1) -> dict[str, str]:
    """Queue and run every variant; the experiment commit of each (name -> sha). The
    experiments are looked up on the commit they were queued from, so committing while
    they run does not lose them."""
    check_variants(variants)
    check_ready(cwd)
    clean_queue(list(variants), cwd)
    base = queue(variants, cwd)
    return run_all(list(variants), cwd, jobs, baseline=base)
