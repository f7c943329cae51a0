"""Peak memory of a command and every process it starts (Linux /proc), for
tests and benchmarks: the CPU workers and the fork server count as well."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Measured:
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    peaks_mb: dict[int, float] = field(default_factory=dict)  #: VmHWM of each process seen, by pid

    @property
    def peak_mb(self) -> float:
        """The sum of every process's peak resident memory (VmHWM): an upper bound of the run's peak."""
        return sum(self.peaks_mb.values())


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    except OSError:  # gone meanwhile
        pass
    return out


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_measured(cmd: Sequence[str], *, every: float = 0.1, env: dict[str, str] | None = None) -> Measured:
    """Run `cmd`, reading the VmHWM of it and of all its descendants every `every` s.
    A process's peak is read until it exits, so growth in its last `every` s may be missed."""
    t = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks: dict[int, float] = {}
    out: dict[str, str] = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    while proc.poll() is None:
        for pid in _tree(proc.pid):
            mb = _hwm_mb(pid)
            if mb is not None:
                peaks[pid] = max(peaks.get(pid, 0.0), mb)
        time.sleep(every)
    reader.join()
    return Measured(proc.returncode, time.perf_counter() - t, out.get("stdout", ""), out.get("stderr", ""), peaks)
