"""Search a model's hyper-parameters on validation, re-train the best over seeds, report.

    python scripts/tune.py --model lightgcn                       # params.yaml [tune]
    python scripts/tune.py --model bprmf --sampler random --trials 10 --processes 2
    python scripts/tune.py --model freedom -S train.max_epochs=50 -S tune.top=2

Reads params.yaml ([tune] and the sections a training run reads) and the graph and feature
stages' files under data/ (run `dvc repro` first). The study lives in
data/cache/tuning/<model>/<key>.journal (git-ignored): a killed search resumes without
re-running finished trials; `--processes N` starts N worker processes sharing it. Writes
reports/tuning/<model>.json and reports/tuning/<model>.md (each trial's seconds:
logs/tuning/<model>.json). `dvc repro tuning/dvc.yaml:tune@<model>` runs it as a DVC stage
of its own; the main pipeline's `dvc repro` never starts a search. See docs/tuning.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's sea/, also without an install

from sea.runtime import start_stage, waiting  # noqa: E402

start_stage("tune")  # first, before torch computes anything: params.yaml [compute]

import argparse  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import optuna  # noqa: E402

from sea import tune  # noqa: E402
from sea.cli import run_main  # noqa: E402
from sea.config import load_params  # noqa: E402
from sea.errors import ConfigError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model to tune (a section of params.yaml [tune] spaces)")
    parser.add_argument("--sampler", choices=tune.SAMPLERS, help="override tune.sampler")
    parser.add_argument("--trials", type=int, help="override tune.trials (random, tpe)")
    parser.add_argument("--pruner", choices=tune.PRUNERS, help="override tune.pruner")
    parser.add_argument("--processes", type=int, help="override tune.processes: worker processes sharing the study")
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param for the whole search, as dvc exp run -S (repeatable)",
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # a worker process of a search
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tune.Search:
    flags = {"sampler": args.sampler, "trials": args.trials, "pruner": args.pruner, "processes": args.processes}
    return tune.Search.prepare(load_params(), args.model, args.overrides, **flags)


def run_workers(search: tune.Search, argv: list[str], data) -> None:
    """``tune.processes`` worker processes on the study (one: this process); this one shows
    the bar meanwhile."""
    progress = tune.Progress(search)
    if search.config.processes == 1:
        try:
            tune.run_worker(search, 0, progress, data)
        finally:
            progress.close()
        return
    command = [sys.executable, __file__, *argv]
    with waiting():  # counted out while the workers compute: they share the cores
        workers = [subprocess.Popen([*command, "--worker", str(i)]) for i in range(search.config.processes)]
        try:
            study = search.study()
            while any(w.poll() is None for w in workers):
                progress.update(study)
                time.sleep(1.0)
            progress.update(study)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
                    w.wait()
            progress.close()
    failed = [i for i, w in enumerate(workers) if w.returncode != 0]
    if failed:
        raise ConfigError(f"tune worker(s) {failed} failed (exit {workers[failed[0]].returncode}); see above")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes must be at least 1")
    search = prepare(args)
    if args.worker is not None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        tune.run_worker(search, args.worker)
        return
    with tune.study_lock(search):
        stale = tune.recover(search)
        if stale:
            print(f"resuming {search.journal}: trial(s) {stale} were interrupted and run again", flush=True)
        data = search.load_data()
        run_workers(search, argv, data)
        study = search.study()
        pick, candidates = tune.select(search, study, data)
        tune.test_metrics(search, pick, data)  # the pick only: the one place the test split is read
        rep = tune.report(search, study, pick, candidates)
        seconds = tune.trial_seconds(study)
    json_path, md_path = tune.write_reports(rep, seconds=seconds)
    sel, select = rep["selection"]["selected"], rep["select"]
    print(
        f"selected trial {sel['trial']} {sel['params']}: valid {select} "
        f"{sel['valid'][select]['mean']:.4f}, test {select} {sel['test'][select]['mean']:.4f} "
        f"(mean over seeds {search.config.seeds})\nwrote {json_path} and {md_path}\ntrain it: {sel['command']}"
    )


if __name__ == "__main__":
    run_main(main, "tune failed")
