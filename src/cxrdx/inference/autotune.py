"""Which backend and precision ``cxrdx predict`` runs, measured on this machine and cached.

The fastest backend differs between CPUs (OpenVINO bf16 was 4x ONNX Runtime fp32 on an AMX Xeon;
docs/performance.md), so it is measured, not set by constants. Each candidate the machine offers
(``inference/choose.py``: ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 where the CPU has native
bf16, the int8 model ``cxrdx quantize`` made) runs the checkpoint's reference images
(``inference/reference.py``) in batches: that times its network and gives its outputs, which a
reduced precision must match against the stored fp32 outputs before it may be chosen. The fastest
admitted candidate wins. The result is cached in ``<cxrdx cache>/autotune.json`` under a key of the
machine (CPU model, flags, usable CPUs), the export and the candidates, with every candidate's rate
and check (the record of the choice). It is measured when the export is written (``cxrdx
train``/``import``/``calibrate``), else at the first large enough predict; a choice measured while
the load average exceeded the CPU count is measured again once quiet.

Opening a candidate costs time too (OpenVINO's import and, the first time, its compile): each one's
opening with warm caches is measured with it (``open_s``), and a job of N images runs the admitted
candidate with the least ``open_s + N / rate`` (``Tuned.for_images``): a few images on ONNX Runtime,
a folder on OpenVINO bf16, say. serve and listen, which run for long, take the fastest.

Per job only the decoding is timed (several of the job's images: one odd film, e.g. RGBA, must not
decide), to give the decode threads: enough to keep up with the network, leaving it its cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.device import available_threads, cpu_info
from cxrdx.files import atomic_write_json, cache_root

# The batch predict runs. The network alone sometimes ran faster at batch 1 (DenseNet121: ONNX Runtime
# 17.0 vs 15.0 img per CPU-s at 320 px), but end to end, with decoding beside it and the per-batch work
# after it, batch 8 won on every backend measured (ONNX 12.1 vs 10.8; OpenVINO bf16 at 224 px 19.4-21.9
# vs 10.8-12.4 img per CPU-s): docs/performance.md section 13. So batch 1 is no longer a candidate.
BATCH = 8
TIME_IMAGES = 16  # the reference images each candidate is timed on (after one untimed batch)
DECODE_IMAGES = 4  # the job's images timed for the decode threads
# part of the cache key: bump when what is measured changes (3: backend and precision; 4: open_s, batch 8)
REVISION = 4


@dataclass
class Tuned:
    batch_size: int
    threads: int
    workers: int  # decode threads (set per job from its decode time)
    net_img_per_s: float  # the chosen network at its batch size
    decode_ms: float  # decoding + letterboxing one of the job's images, one thread (median)
    measured_s: float  # what the measurement cost
    load: float = 0.0  # 1-minute load average when measured: a busy machine's choice is measured again
    candidate: str = "onnx fp32"  # "<runtime> <precision>": the chosen backend
    rates: dict[str, float] = field(default_factory=dict)  # every candidate's img/s at batch BATCH
    checks: dict[str, dict] = field(default_factory=dict)  # every candidate's reference check (Check.to_dict)
    open_s: dict[str, float] = field(default_factory=dict)  # every candidate's opening, warm caches (s)

    def admitted(self, name: str) -> bool:
        return bool(self.checks.get(name, {"passed": True}).get("passed"))

    def for_images(self, n: int | None) -> Tuned:
        """The settings for a job of ``n`` images: the admitted candidate that finishes first counting its
        opening (None: a long-running server, the fastest)."""
        if n is None or not self.open_s:
            return self
        names = [c for c in self.rates if self.admitted(c) and c in self.open_s]
        best = min(
            names, key=lambda c: (self.open_s[c] + n / self.rates[c], c != self.candidate), default=None
        )
        return self._running(best)

    def among(self, names: Sequence[str]) -> Tuned | None:
        """This choice (measured over more candidates) restricted to ``names``: the fastest of them it
        admitted, or the one named when only one is (``--precision bf16`` runs what it is asked for)."""
        names = [n for n in names if n in self.rates]
        allowed = names if len(names) == 1 else [n for n in names if self.admitted(n)]
        if not allowed:
            return None
        return self._running(max(allowed, key=lambda c: (self.rates[c], c == self.candidate)))

    def _running(self, name: str | None) -> Tuned:
        """These settings with candidate ``name`` (at its own rate); itself for its own candidate or None."""
        if name is None or name == self.candidate:
            return self
        return replace(self, candidate=name, net_img_per_s=self.rates[name])

    @property
    def runtime(self) -> str:
        return self.candidate.split()[0]

    @property
    def precision(self) -> str:
        return self.candidate.split()[1]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def cache_file() -> Path:
    return cache_root() / "autotune.json"


def machine_key() -> str:
    """CPU model + flags + usable CPUs: the same key on the same kind of machine."""
    model, flag_set = cpu_info()
    flags = " ".join(sorted(flag_set))
    digest = hashlib.sha256(f"{model}|{flags}|{available_threads()}".encode()).hexdigest()[:16]
    return f"{model} x{available_threads()} {digest}"


def cache_key(model_key: str, candidates: Sequence[str], cores: int) -> str:
    return f"{machine_key()} | {model_key} | {', '.join(candidates)} | {cores} cores | v{REVISION}"


def cached_choice(model_key: str, candidates: Sequence[str], cores: int) -> Tuned | None:
    """The cached choice among exactly ``candidates``, else one measured over more of them, restricted
    (``--precision fp32`` after the default's measurement: its fp32 rates are in it)."""
    exact = load_cached(cache_key(model_key, candidates, cores))
    if exact is not None:
        return exact
    head, tail = f"{machine_key()} | {model_key} | ", f" | {cores} cores | v{REVISION}"
    try:
        keys = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in keys:
        if key.startswith(head) and key.endswith(tail):
            measured = key[len(head) : -len(tail)].split(", ")
            if set(candidates) <= set(measured) and (wider := load_cached(key)) is not None:
                return wider.among(candidates)
    return None


def load_cached(key: str) -> Tuned | None:
    try:
        entry = json.loads(cache_file().read_text(encoding="utf-8")).get(key)
        return Tuned(**{k: v for k, v in entry.items() if k in Tuned.__dataclass_fields__}) if entry else None
    except (OSError, ValueError, TypeError):
        return None


def save_cached(key: str, tuned: Tuned) -> None:
    path = cache_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data[key] = asdict(tuned)
    with contextlib.suppress(Exception):  # a read-only cache: measured again next time
        atomic_write_json(path, data)


def measure(
    candidates: Sequence[str],
    make_session: Callable[[str], Any],
    run: Callable[[Any, np.ndarray], np.ndarray],
    x: np.ndarray,
    check: Callable[[str, np.ndarray], dict | None],
    cores: int | None = None,
    open_cost: Callable[[str], float] = lambda name: 0.0,
    reopen: Callable[[str], bool] = lambda name: False,
) -> tuple[Tuned, Any]:
    """Time every candidate on the reference inputs ``x`` and keep the fastest one ``check`` admits.

    ``make_session(name)`` opens a candidate (``open_cost(name)``: seconds a job pays on top of
    ``make_session``'s own time, e.g. importing the runtime; a runtime with a compiled-model cache,
    OpenVINO, is opened twice and the second opening counts); ``run(session, batch)`` returns its raw outputs;
    ``check(name, outputs)`` compares the outputs of the first ``len(outputs)`` images of ``x`` with
    fp32 (a Check dict with "passed", or None: always admitted): all of them for a reduced precision,
    the ``TIME_IMAGES`` timed ones for an fp32 candidate. Each candidate's first batch sets up its
    buffers and is not timed; its rate is its best batch. Returns (settings, the winner's session).
    """
    start = time.perf_counter()
    cores = cores or available_threads()
    rates: dict[str, float] = {}
    checks: dict[str, dict] = {}
    sessions: dict[str, Any] = {}
    opening: dict[str, float] = {}
    for name in candidates:
        cost = open_cost(name)  # before the first opening imports the runtime
        t0 = time.perf_counter()
        session = make_session(name)
        if reopen(name):  # the compiled model is cached now: what every later job pays
            t0 = time.perf_counter()
            session = make_session(name)
        opening[name] = time.perf_counter() - t0 + cost
        run(session, x[:BATCH])
        outs, steps = [], []
        # an exact (fp32) candidate is checked on the timed images only, a reduced one on all of them
        stop = min(len(x), TIME_IMAGES) if name.endswith(" fp32") else len(x)
        for i in range(0, stop, BATCH):
            t0 = time.perf_counter()
            outs.append(np.asarray(run(session, x[i : i + BATCH]), dtype=np.float32))
            if i < TIME_IMAGES and (i + BATCH <= len(x) or not steps):
                steps.append((time.perf_counter() - t0) / len(x[i : i + BATCH]))
        rates[name] = 1.0 / max(min(steps), 1e-9)
        verdict = check(name, np.concatenate(outs))
        if verdict is not None:
            checks[name] = verdict
        if verdict is None or verdict.get("passed"):
            sessions[name] = session
    best = max(sessions, key=lambda n: rates[n])
    tuned = Tuned(
        BATCH, cores, 1, rates[best], 0.0, time.perf_counter() - start, _load(), best, rates, checks, opening
    )
    return tuned, sessions[best]


def decode_ms(decoders: Sequence[Callable[[], object]]) -> float:
    """Median ms to decode + letterbox each of several images (one thread)."""
    times = []
    for decode in decoders:
        t0 = time.perf_counter()
        decode()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) if times else 0.0


def workers_for(decode_ms: float, net_img_per_s: float, cores: int) -> int:
    """Decode threads that keep up with the network, at most all CPUs but one, at least one."""
    need = math.ceil(decode_ms / 1000 * net_img_per_s) if decode_ms > 0 else 1
    return max(1, min(need, cores - 1))


def tuned_for(
    model_key: str,
    candidates: Sequence[str],
    measure_fn: Callable[[], tuple[Tuned, Any]],
    cores: int | None = None,
    measure_now: bool = True,
) -> tuple[Tuned | None, bool, Any]:
    """The cached choice for (this machine, model, candidates, cores), measured first when there is none.

    Returns (settings, whether measured now, the winner's session when measured now, else None);
    (None, False, None) when none is cached and ``measure_now`` is False.
    """
    cores = cores or available_threads()
    key = cache_key(model_key, candidates, cores)
    cached = cached_choice(model_key, candidates, cores)
    if cached is not None and cached.load > cores and _load() <= cores and measure_now:
        cached = None  # measured while other work shared the CPUs; now it is quiet enough to redo
    if cached is not None or not measure_now:
        return cached, False, None
    tuned, session = measure_fn()
    save_cached(key, tuned)
    return tuned, True, session


def describe(t: Tuned, fresh: bool, fastest: str | None = None) -> str:
    """One line for the job; ``fastest``: the fastest candidate when the job's size chose another."""
    how = f"measured in {t.measured_s:.1f} s" if fresh else "cached for this machine and model"
    if fastest and fastest != t.candidate:
        opens = ", ".join(f"{n} {t.open_s[n]:.2f} s" for n in (t.candidate, fastest) if n in t.open_s)
        how += f"; for this job's size, since opening costs {opens}"
    others = ", ".join(f"{n} {r:.1f}" for n, r in sorted(t.rates.items(), key=lambda kv: -kv[1]))
    rejected = [n for n, c in t.checks.items() if not c.get("passed")]
    no = f"; rejected by the reference check: {', '.join(rejected)}" if rejected else ""
    return (
        f"autotune: {t.candidate}, batch {t.batch_size}, {t.threads} network thread(s), {t.workers} decode "
        f"thread(s) ({how}: img/s {others}{no}; decode {t.decode_ms:.0f} ms/img); --no-autotune to skip"
    )
