"""Child processes die with their parent: SIGKILL a command mid-run, then nothing of it is left.

`chex train` (data-loader workers, and torchrun's processes with `--devices`), `chex data prepare`
(its worker pool) and `chex evaluate` (data-loader workers) are started in a new session, killed
with SIGKILL at a random moment after their workers appeared, and every process ever seen below
them must be gone (or a zombie, which holds no memory) within 10 s. `CHEX_KILL_REPEATS=20` runs
20 kills per command instead of the default few (`chexcli.workers`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl (Linux)")

REPEATS = int(os.environ.get("CHEX_KILL_REPEATS", "3"))
CHEX = [sys.executable, "-m", "chexcli"]


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), fields[0])
    return out


def _descendants(root: int) -> set[int]:
    table = _table()
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def kill_midway(args: list, cwd: Path, children: int, max_delay: float = 2.0, start_timeout: float = 180) -> set[int]:
    """Run `chex ARGS`, SIGKILL it at a random moment after `children` descendants exist; the
    descendants still alive 10 s later (killed before returning, so a failure leaves nothing)."""
    proc = subprocess.Popen(CHEX + [str(a) for a in args], cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + start_timeout
        while len(seen) < children:
            if proc.poll() is not None:
                pytest.fail(f"chex {' '.join(map(str, args))} ended (exit {proc.returncode}) before its workers "
                            f"started: {proc.stderr.read().decode()[-400:]}")
            if time.monotonic() > deadline:
                pytest.fail("the workers did not start in time")
            seen |= _descendants(proc.pid)
            time.sleep(0.05)
        end = time.monotonic() + random.uniform(0.0, max_delay)
        while time.monotonic() < end:  # keep recording: workers come and go between epochs and phases
            seen |= _descendants(proc.pid)
            time.sleep(0.05)
        seen |= _descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return _left_after(seen)


def _left_after(pids: set[int], seconds: float = 10) -> set[int]:
    """Those of `pids` still alive after `seconds` (then killed, so a failure leaves nothing behind)."""
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(pids)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from chexcli.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    prepare_synthetic(out, n=60, seed=0, progress=False)
    return out


TRAIN = ["train", "--stage", "1", "--model-config", "tiny", "--batch-size", "8", "--max-steps", "1000",
         "--checkpoint-every", "1000", "--val-every", "0", "--no-progress", "--set", "data.workers=2"]


@pytest.mark.parametrize("attempt", range(REPEATS))
def test_killed_training_leaves_no_data_loader_worker(synth, tmp_path, attempt):
    left = kill_midway(TRAIN + ["--data", synth, "--out", tmp_path / "runs"], tmp_path, children=2)
    assert not left, f"processes left behind: {sorted(left)}"


def test_killed_multi_process_training_leaves_nothing(synth, tmp_path):
    """`--devices 2`: the launcher, both training processes and their loader workers."""
    left = kill_midway(TRAIN + ["--devices", "2", "--data", synth, "--out", tmp_path / "runs"], tmp_path,
                       children=7, max_delay=1.0)  # launcher + 2 ranks + 2 x 2 loader workers
    assert not left, f"processes left behind: {sorted(left)}"


@pytest.mark.parametrize("attempt", range(REPEATS))
def test_killed_prepare_leaves_no_pool_worker(tmp_path, attempt):
    left = kill_midway(["data", "prepare", "synthetic", "--n", "3000", "--workers", "2", "--out", tmp_path / "s"],
                       tmp_path, children=2, max_delay=1.0)
    assert not left, f"processes left behind: {sorted(left)}"


@pytest.mark.parametrize("attempt", range(REPEATS))
def test_killed_evaluation_leaves_no_data_loader_worker(synth, tiny_bundle, tmp_path, attempt):
    left = kill_midway(["evaluate", "--task", "od_vindrcxr", "--model", tiny_bundle, "--data", synth, "--split",
                        "test", "--workers", "2", "--bootstrap", "1000", "--out", tmp_path / "ev"],
                       tmp_path, children=2, max_delay=0.5)
    assert not left, f"processes left behind: {sorted(left)}"


def test_a_worker_whose_parent_is_already_gone_exits(tmp_path):
    """The race: the parent dies between the fork and the worker's prctl call."""
    code = ("import os, sys; from chexcli.workers import die_with_parent; "
            "die_with_parent(parent_pid=os.getppid() + 1 if os.getppid() > 1 else 2); sys.exit(0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode == 1


BLOCKED_CHILDREN = {
    # workers busy in a task when the parent dies: nothing but the kernel's death signal stops them
    "pool": """
import multiprocessing as mp, time
from chexcli.workers import worker_init
def block(_):
    time.sleep(600)
if __name__ == "__main__":
    pool = mp.get_context("fork").Pool(2, initializer=worker_init())
    pool.map_async(block, range(2))
    time.sleep(600)
""",
    "dataloader": """
import time, torch
from torch.utils.data import DataLoader, Dataset
from chexcli.workers import worker_init
class Slow(Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, i):
        time.sleep(600)
if __name__ == "__main__":
    for _ in DataLoader(Slow(), num_workers=2, worker_init_fn=worker_init()):
        pass
""",
}


@pytest.mark.parametrize("kind", sorted(BLOCKED_CHILDREN))
def test_busy_workers_die_with_a_killed_parent(tmp_path, kind):
    script = tmp_path / "parent.py"
    script.write_text(BLOCKED_CHILDREN[kind])
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(_descendants(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _descendants(proc.pid)
        assert len(children) >= 2
        time.sleep(0.5)  # the workers are inside their task now
    finally:
        proc.kill()
        proc.wait()
    left = _left_after(children)
    assert not left, f"{kind} workers left behind: {sorted(left)}"


def test_multi_process_training_prints_no_torch_warning(synth, tmp_path):
    """No DDP unused-parameter warning, no DataLoader worker-count warning, no torchrun banner."""
    res = subprocess.run(CHEX + ["train", "--stage", "1", "--model-config", "tiny", "--batch-size", "8",
                                 "--max-steps", "3", "--val-every", "0", "--devices", "2", "--set", "data.workers=4",
                                 "--data", str(synth), "--out", str(tmp_path / "runs"), "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert res.returncode == 0, res.stderr[-2000:]
    for needle in ("Warning", "warn(", "OMP_NUM_THREADS", "find_unused_parameters", "worker processes in total"):
        assert needle not in res.stderr, res.stderr[-2000:]


def test_loader_workers_are_capped_to_the_cpus_of_each_process(monkeypatch):
    from chexcli.train.distributed import DistInfo
    from chexcli.train.trainer import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(8, DistInfo()) == 4
    assert loader_workers(1, DistInfo()) == 1 and loader_workers(0, DistInfo()) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers(8, DistInfo(rank=1, world=2, local_rank=1)) == 2
