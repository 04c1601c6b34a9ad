"""sea/runtime.py: the job registry that shares the cores among the pipeline's processes,
the thread setting, and how a stage reports a bad [compute] section. Real processes,
real lock files (in a temporary folder of the test's own)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sea.runtime import Jobs, cores

ROOT = Path(__file__).resolve().parents[1]


def start_member(folder: Path) -> subprocess.Popen:
    """A process that joins the registry in ``folder``, says so, and waits to be killed."""
    code = f"from sea.runtime import Jobs; j = Jobs({str(folder)!r}); j.join(); print('in', flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == "in"
    return proc


def test_jobs_counts_live_members_and_forgets_dead_ones(tmp_path):
    jobs = Jobs(tmp_path / "jobs")
    assert jobs.count() == 1  # this process, not yet counted in
    jobs.join()
    assert jobs.count() == 1
    members = [start_member(tmp_path / "jobs") for _ in range(2)]
    try:
        assert jobs.count() == 3
        members[0].send_signal(signal.SIGKILL)  # dies without leaving: its lock goes with it
        members[0].wait()
        assert jobs.count() == 2
        assert len(list((tmp_path / "jobs").glob("*.job"))) == 2  # the dead one's file is removed
    finally:
        for m in members:
            m.kill()
            m.wait()
    assert jobs.count() == 1
    jobs.leave()
    assert list((tmp_path / "jobs").glob("*.job")) == []


def test_cores_is_within_what_the_machine_has():
    assert 1 <= cores() <= (os.cpu_count() or 1)


SHARE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sea.runtime import ComputeConfig
    from sea import runtime
    runtime.start(ComputeConfig())
    ready = Path(sys.argv[1])
    ready.joinpath(sys.argv[2]).touch()
    while len([f for f in ready.iterdir() if f.suffix != ".done"]) < int(sys.argv[3]):
        time.sleep(0.05)
    runtime.rebalance()
    import torch
    print(torch.get_num_threads(), flush=True)
    ready.joinpath(sys.argv[2] + ".done").touch()  # stay counted in until every process has counted
    while len(list(ready.glob("*.done"))) < int(sys.argv[3]):
        time.sleep(0.05)
""")


def test_processes_started_together_share_the_cores(tmp_path):
    """Two computing processes on this machine take half the cores each (at least one)."""
    ready = tmp_path / "ready"
    ready.mkdir()
    env = os.environ | {"PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}  # a registry of the test's own
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHARE, str(ready), str(i), "2"], stdout=subprocess.PIPE, text=True, env=env
        )
        for i in range(2)
    ]
    threads = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert threads == [max(1, cores() // 2)] * 2
    (tmp_path / "alone").mkdir()
    alone = subprocess.run(
        [sys.executable, "-c", SHARE, str(tmp_path / "alone"), "0", "1"], capture_output=True, text=True, env=env
    )
    assert int(alone.stdout.strip()) == cores(), alone.stderr


def test_a_fixed_thread_setting_is_kept(tmp_path):
    (tmp_path / "ready").mkdir()
    code = SHARE.replace("runtime.start(ComputeConfig())", "runtime.start(ComputeConfig(threads=3))")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ready"), "0", "1"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
    )
    assert out.stdout.strip() == "3", out.stderr


@pytest.mark.parametrize(
    "section, message",
    [
        ("compute: {threads: 0}", "params.yaml [compute]: threads must be auto or a whole number in [1, 1024], got 0"),
        (
            "compute: {kernels: fast}",
            "params.yaml [compute]: kernels must be one of ['portable', 'intel', 'native'], got 'fast'",
        ),
        ("compute: {cores: 2}", "params.yaml [compute]: unknown key(s) ['cores']"),
    ],
)
def test_a_bad_compute_section_stops_a_stage_in_one_line(tmp_path, section, message):
    (tmp_path / "params.yaml").write_text(section + "\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipeline/evaluate.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"evaluate stage failed: {message}"), proc.stderr


def test_native_kernels_undo_a_portable_parents_pins(tmp_path):
    """A native stage started by a portable process computes with this CPU's own kernels."""
    code = "from sea.runtime import use_kernels, describe; use_kernels('native'); print(describe())"
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "COMPATIBLE",
        "SEA_KERNELS": "portable",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    described = ast.literal_eval(out.stdout.strip())
    assert described["kernels"] == "native"
    native = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY",)},
    )
    assert described["cpu_kernels"] == native.stdout.strip()


def test_start_stage_sets_up_the_portable_kernels(tmp_path):
    """start_stage reads [compute] from the stage's params.yaml and pins the kernels."""
    (tmp_path / "params.yaml").write_text("compute: {kernels: portable}\n")
    code = "from sea.runtime import start_stage, describe; start_stage('x'); print(*describe().values())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        check=True,
    )
    assert out.stdout.split()[0] == "portable"
    assert out.stdout.split()[1] in ("AVX2", "DEFAULT")
