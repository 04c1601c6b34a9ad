"""What pruning and parallel workers save in a grid search (scripts/tune.py, docs/tuning.md).

    python bench/tune_speed.py                      # LightGCN's 20-point grid on the sample
    python bench/tune_speed.py --model bprmf --skip-processes
    python bench/tune_speed.py --orders 0 1 2 --skip-processes   # the pruned searches over 3 grid orders
    python bench/tune_speed.py --data /path/to/other/checkout      # that folder's data/processed (a Baby-size graph)

Needs the graph stage's files (`dvc repro graph`; feature files too for a model that reads
features). Each search runs in a fresh temporary folder (its own study), as worker
processes of scripts/tune.py (`--worker`), search phase only (no selection re-runs):

1. the full grid without pruning, one process: epochs trained, wall time;
2. the same grid with each pruner of ``--pruners`` (median, asha), one process, once per
   grid order of ``--orders`` (``tune.seed``: the order in which the grid's points are
   tried, which decides what the pruner has seen when it judges a trial): epochs trained,
   wall time, the compute ratio to the full grid and whether the best trial is the same
   (and its validation value). Trials are seeded, so the full grid's figures do not depend
   on the order and it runs once;
3. the pruned grid with two worker processes sharing the study: wall time.

Prints the figures; nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from sea import artifacts, tune  # noqa: E402
from sea.config import load_params  # noqa: E402


def search(model: str, pruner: str, processes: int, overrides: list[str], data: Path = ROOT) -> dict:
    """One search phase in a fresh folder (the graph and feature files of ``data``); its
    epochs, trials and wall time."""
    with tempfile.TemporaryDirectory(prefix="tune-speed-") as tmp:
        tmp = Path(tmp)
        shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
        for folder in (artifacts.PROCESSED, artifacts.FEATURES):
            if (data / folder).is_dir():
                (tmp / folder).parent.mkdir(parents=True, exist_ok=True)
                os.symlink((data / folder).resolve(), tmp / folder)
        extra = [a for o in overrides for a in ("-S", o)]
        args = ["--model", model, "--pruner", pruner, "--processes", str(processes), *extra]
        command = [sys.executable, str(ROOT / "scripts" / "tune.py"), *args]
        env = os.environ | {"TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        workers = [subprocess.Popen([*command, "--worker", str(i)], cwd=tmp, env=env) for i in range(processes)]
        codes = [w.wait() for w in workers]
        seconds = time.perf_counter() - start
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        s = tune.Search.prepare(load_params(tmp / "params.yaml"), model, overrides, root=tmp, pruner=pruner)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trials = s.study().get_trials()
        done = [t for t in trials if "duplicate_of" not in t.user_attrs and t.state != TrialState.FAIL]
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value)
        return {
            "seconds": seconds,
            "trials": len(done),
            "pruned": sum(t.state == TrialState.PRUNED for t in done),
            "epochs": sum(t.user_attrs.get("epochs", 0) for t in done),
            "best": (best.params, round(best.value, 4)),
            "duplicates": sum("duplicate_of" in t.user_attrs for t in trials),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lightgcn")
    parser.add_argument("--skip-processes", action="store_true", help="skip the two-process run")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pruners", nargs="+", choices=["median", "asha"], default=["median", "asha"])
    parser.add_argument(
        "--orders", type=int, nargs="+", default=[None], metavar="SEED", help="grid orders (tune.seed) to prune in"
    )
    parser.add_argument(
        "--data", type=Path, default=ROOT, help="a checkout whose data/processed (and data/features) to search on"
    )
    args = parser.parse_args()
    extra = args.overrides
    full = search(args.model, "none", 1, extra, args.data)
    print(f"full grid, 1 process: {full}", flush=True)
    for name in args.pruners:
        for order in args.orders:
            at = [] if order is None else [f"tune.seed={order}"]
            run = search(args.model, name, 1, [*extra, *at], args.data)
            print(f"{name} pruner, 1 process{'' if order is None else f', grid order {order}'}: {run}", flush=True)
            print(
                f"  epochs: {run['epochs']} {name} vs {full['epochs']} full: {full['epochs'] / run['epochs']:.2f}x "
                f"less compute; best valid {run['best'][1]} vs {full['best'][1]} (the same point: "
                f"{run['best'][0] == full['best'][0]}; points that tie take the first in grid order)",
                flush=True,
            )
            if name == "median":
                pruned = run
    if not args.skip_processes and "median" in args.pruners:
        two = search(args.model, "median", 2, extra, args.data)
        print(f"median pruner, 2 processes: {two}", flush=True)
        print(f"wall time: 1 process {pruned['seconds']:.1f} s, 2 processes {two['seconds']:.1f} s")


if __name__ == "__main__":
    main()
