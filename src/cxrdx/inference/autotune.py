"""Batch size, intra-op threads and decode threads for ``cxrdx predict``, measured on this machine.

The best settings differ between CPUs (on an AVX-512 machine batch 8 beat batch 1, on an
AVX2 EPYC it was 27 % slower; see docs/performance.md), so they are measured, not tuned by
constants: at the first ONNX/OpenVINO predict of a model on a machine, a few seconds time
the pipeline's steady state (a batch in the network while decode threads prepare the next
one, from the job's own first image) at a few batch sizes and thread counts; the choice is cached in ``<cxrdx cache>/autotune.json`` under a key of the
machine (CPU model, flags and usable CPUs) and the model (its export, size and runtime).
Settings measured while the load average exceeded the CPU count are measured again once the
machine is quiet. ``cxrdx predict --no-autotune`` (or an explicit ``--batch-size``) skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrdx.device import available_threads, cpu_info
from cxrdx.files import atomic_write_json, cache_root

BATCH_SIZES = (1, 2, 4, 8)
MIN_SECONDS = 0.2  # per measured configuration (and at least two timed steps)
BUDGET_SECONDS = 6.0  # the whole measurement stops adding configurations after this
REVISION = 2  # part of the cache key: bump when what is measured changes (2: decoding alongside)


@dataclass
class Tuned:
    batch_size: int
    threads: int
    workers: int
    net_img_per_s: float  # the network at this batch size and thread count, decoding alongside
    decode_ms: float  # decoding + letterboxing one of the job's images, one thread
    measured_s: float  # what the measurement cost
    load: float = 0.0  # 1-minute load average when measured: a busy machine's choice is measured again


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
    make_session: Callable[[int], Any],
    run: Callable[[Any, np.ndarray], object],
    input_shape: tuple[int, ...],
    decode: Callable[[], object] | None,
    cores: int | None = None,
) -> Tuned:
    """Time the pipeline's steady state at BATCH_SIZES for ``cores`` and ``cores - 1`` intra-op threads.

    ``make_session(threads)`` builds a session; ``run(session, batch)`` runs one batch;
    ``decode()`` decodes one of the job's images. Each timed step is what ``iter_predict``
    does once it is running: one batch in the network while the decode threads prepare the
    next batch's images, so the network is measured with the decoding competing for the
    cores. The rate of a configuration is its best step (other work only adds time).
    """
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    cores = cores or available_threads()
    decode_s = 0.0
    if decode is not None:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            decode()
            times.append(time.perf_counter() - t0)
        decode_s = float(np.median(times))
    workers = max(1, cores - 1)
    rates: dict[tuple[int, int], float] = {}
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(workers, thread_name_prefix="cxrdx-autotune") as pool:

        def step(session: Any, x: np.ndarray) -> float:
            t0 = time.perf_counter()
            pending = [pool.submit(decode) for _ in range(len(x))] if decode is not None else []
            run(session, x)
            for f in pending:
                f.result()
            return time.perf_counter() - t0

        for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
            session = make_session(threads)
            for bs in BATCH_SIZES:
                if time.perf_counter() - start > BUDGET_SECONDS and rates:
                    break
                x = rng.standard_normal((bs, *input_shape)).astype(np.float32)
                run(session, x)  # this shape's first run sets up its buffers: not timed
                steps, t0 = [], time.perf_counter()
                while len(steps) < 2 or time.perf_counter() - t0 < MIN_SECONDS:
                    steps.append(step(session, x))
                rates[(threads, bs)] = bs / min(steps)
    (threads, bs), rate = max(rates.items(), key=lambda kv: kv[1])
    # decode threads: enough to decode as fast as the network runs, leaving it its cores
    need = math.ceil(decode_s * rate) if decode_s > 0 else 1
    return Tuned(
        bs, threads, max(1, min(need, workers)), rate, 1000 * decode_s, time.perf_counter() - start, _load()
    )


def tuned_for(
    model_key: str,
    make_session: Callable[[int], Any],
    run: Callable[[Any, np.ndarray], object],
    input_shape: tuple[int, ...],
    decode: Callable[[], object] | None,
    cores: int | None = None,
    measure_now: bool = True,
) -> tuple[Tuned | None, bool]:
    """The cached settings for (this machine, model, cores), measuring them first when there are none.

    Returns (settings, whether they were measured now); (None, False) when none are cached and
    ``measure_now`` is False (a job too small to pay for the measurement).
    """
    cores = cores or available_threads()
    key = f"{machine_key()} | {model_key} | {cores} cores | v{REVISION}"
    cached = load_cached(key)
    if cached is not None and cached.load > cores and _load() <= cores and measure_now:
        cached = None  # measured while other work shared the CPUs; now it is quiet enough to redo
    if cached is not None or not measure_now:
        return cached, False
    tuned = measure(make_session, run, input_shape, decode, cores)
    save_cached(key, tuned)
    return tuned, True


def describe(t: Tuned, fresh: bool) -> str:
    how = f"measured in {t.measured_s:.1f} s" if fresh else "cached for this machine and model"
    return (
        f"autotune: batch {t.batch_size}, {t.threads} network thread(s), {t.workers} decode thread(s) "
        f"({how}: network {t.net_img_per_s:.1f} img/s, decode {t.decode_ms:.0f} ms/img); --no-autotune to skip"
    )
