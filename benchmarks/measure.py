"""Whole-process wall time and peak memory of a command, its children included.

``/usr/bin/time -v`` reports the largest single process; a Snakemake run is a
tree of short jobs, so we also sample the summed RSS of the whole tree.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import asdict, dataclass

import psutil


@dataclass
class Measurement:
    """What one command cost."""

    wall_s: float
    peak_tree_rss_mb: float  # largest sum of RSS over the process tree at any sample
    peak_single_rss_mb: float  # largest RSS of any one process in the tree
    returncode: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure(cmd: list[str], cwd: str | None = None, interval: float = 0.1, **kwargs) -> Measurement:
    """Run ``cmd`` and sample the RSS of it and all its descendants every ``interval`` s."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, **kwargs)
    root = psutil.Process(proc.pid)
    peaks = {"tree": 0, "single": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            if rss:
                peaks["tree"] = max(peaks["tree"], sum(rss))
                peaks["single"] = max(peaks["single"], max(rss))
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    returncode = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    return Measurement(wall, peaks["tree"] / 2**20, peaks["single"] / 2**20, returncode)


def run_child(cmd: list[str], name: str) -> tuple[float, float]:
    """Run ``cmd`` as one child process and wait for it.

    Returns its wall seconds and its peak RSS in MiB (``ru_maxrss`` from ``os.wait4``: the
    child's own high-water mark). Raises ``SystemExit`` naming ``name`` if it fails.
    """
    import os

    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{name} failed with status {status}")
    return wall, usage.ru_maxrss / 1024
