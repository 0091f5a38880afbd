"""Shared helpers for the benchmark scripts: machine facts, timing, peak RSS, tables.

Benchmarks print numbers; they are not tests. Everything here is stdlib (psutil is
used when installed) so a benchmark can import it before torch.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cxrdx_cmd(*args: str) -> list[str]:
    """`python -m cxrdx ARGS` with the interpreter running this script (the project's venv)."""
    return [sys.executable, "-m", "cxrdx", *args]


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    """One line: CPUs, CPU model and its ISA flags, load average, Python and torch versions (torch only if imported)."""
    from cxrdx.device import isa_line

    torch = sys.modules.get("torch")
    torch_part = f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""
    return (
        f"{os.cpu_count()} CPUs ({isa_line()}), load average {load_average()}, "
        f"Python {platform.python_version()}{torch_part}"
    )


@dataclass
class StepTimes:
    """Per-step wall times (s) of a timed loop, after warmup."""

    seconds: list[float] = field(default_factory=list)
    items_per_step: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def best(self) -> float:
        return min(self.seconds) if self.seconds else float("nan")

    @property
    def rate(self) -> float:
        """Items per second at the median step time (robust to one slow step)."""
        return self.items_per_step / self.median if self.seconds else float("nan")

    @property
    def best_rate(self) -> float:
        return self.items_per_step / self.best if self.seconds else float("nan")


def time_steps(
    step: Callable[[], object],
    warmup: int,
    steps: int,
    items_per_step: int,
    sync: Callable[[], object] | None = None,
) -> StepTimes:
    """Run ``step`` warmup + steps times; return the timed steps' wall times."""
    for _ in range(warmup):
        step()
    if sync:
        sync()
    out = StepTimes(items_per_step=items_per_step)
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if sync:
            sync()
        out.seconds.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmHWM = peak RSS, VmRSS = current), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_rss_mb(pid: int) -> float | None:
    """Current RSS of a process plus its descendants (psutil when installed, else /proc), MB."""
    try:
        import psutil  # type: ignore[import-not-found]

        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
        except psutil.Error:
            return None
    except ImportError:
        pass
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            pids.extend(int(c) for c in children)
    except OSError:
        pass
    kbs = [_status_kb(p, "VmRSS") for p in pids]
    known = [k for k in kbs if k is not None]
    return sum(known) / 1024 if known else None


@dataclass
class ProcessMemory:
    rc: int | None
    seconds: float
    peak_rss_mb: float  # largest single process (kernel ru_maxrss / VmHWM)
    peak_tree_mb: float | None  # largest sampled sum over the process and its children
    stdout: str = ""
    stderr: str = ""


class MemoryWatch:
    """Start a command and sample its memory until it exits (or ``stop`` is called).

    The child is reaped only by ``wait`` (os.wait4), never by Popen.poll, so the
    kernel's ru_maxrss of the exact child is available at the end.
    """

    def __init__(self, cmd: Sequence[str], interval: float = 0.05, **popen_kwargs) -> None:
        self.cmd = list(cmd)
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs
        )
        self.peak_tree: float | None = None
        self.peak_hwm_kb = 0
        self._done = threading.Event()
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=lambda: self._out.append(self.proc.stdout.read()), daemon=True),
            threading.Thread(target=lambda: self._err.append(self.proc.stderr.read()), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self._sampler = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._sampler.start()

    def _sample(self, interval: float) -> None:
        while not self._done.is_set():
            hwm = _status_kb(self.proc.pid, "VmHWM")  # None once it is a zombie
            if hwm:
                self.peak_hwm_kb = max(self.peak_hwm_kb, hwm)
                rss = tree_rss_mb(self.proc.pid)
                if rss is not None:
                    self.peak_tree = rss if self.peak_tree is None else max(self.peak_tree, rss)
            time.sleep(interval)

    def current_mb(self) -> float | None:
        return tree_rss_mb(self.proc.pid)

    def alive(self) -> bool:
        return _status_kb(self.proc.pid, "VmRSS") is not None

    def interrupt(self) -> None:
        """Ctrl-C for the child (os.kill: Popen.send_signal would reap it and lose ru_maxrss)."""
        hwm = _status_kb(self.proc.pid, "VmHWM")  # last chance to read it while alive
        if hwm:
            self.peak_hwm_kb = max(self.peak_hwm_kb, hwm)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float | None = None) -> ProcessMemory:
        """Wait for exit (kill after ``timeout`` s); the kernel's ru_maxrss completes the sampled peak."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                os.kill(self.proc.pid, signal.SIGKILL)
                deadline = None
            time.sleep(0.05)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._done.set()
        for t in self._readers:
            t.join(5)
        seconds = time.perf_counter() - self.start
        peak_kb = max(usage.ru_maxrss, self.peak_hwm_kb)  # ru_maxrss is in kB on Linux
        return ProcessMemory(
            self.proc.returncode,
            seconds,
            peak_kb / 1024,
            self.peak_tree,
            "".join(self._out),
            "".join(self._err),
        )


def self_peak_rss_mb() -> float:
    """Peak RSS of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- cxrdx training loader


def train_loader_helpers(device: str = "cpu"):
    """(make_loader(source, batch, workers), make_to_input(preprocessing), description) for ``device``.

    Uses the loader and per-batch input step that ``cxrdx train`` itself builds
    (``cxrdx.training.data.train_loader`` / ``to_input``), so a benchmark measures the real
    path. ``workers=None`` means cxrdx.training's default for the device and source.
    """
    import torch

    from cxrdx.training.config import TrainConfig
    from cxrdx.training.data import to_input as _to_input
    from cxrdx.training.data import train_loader as _train_loader

    dev = torch.device(device)

    def make_loader(source, batch: int, workers: int | None):
        cfg = TrainConfig(data="bench", out="bench", batch_size=batch, workers=workers)
        return _train_loader(source, cfg, dev, 0, 1)[0]

    def make_to_input(pre, memory_format=torch.channels_last):
        cfg = TrainConfig(data="bench", out="bench")  # defaults: flip on, affine off
        rng = torch.Generator(device=dev).manual_seed(0)
        return lambda squares: _to_input(squares, pre, dev, memory_format, rng, cfg, True)

    return make_loader, make_to_input, "cxrdx.training.data.train_loader + _to_input"


def free_port() -> int:
    """A free TCP port on loopback, for a server a benchmark starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- output


def fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], file=None) -> None:
    """A Markdown table (pastes straight into docs/performance.md)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = file or sys.stdout
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |", file=out)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |", file=out)
    out.flush()


def say(message: str) -> None:
    """Progress to stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)
