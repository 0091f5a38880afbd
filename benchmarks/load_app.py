"""Load test of the web app: N concurrent uploads to a real ``cxrdx serve`` on loopback.

Starts ``python -m cxrdx serve`` on a free 127.0.0.1 port, sends ``--requests`` uploads
from ``--concurrency`` client threads through ``gradio_client`` (the documented API,
``/predict``), in ``--waves`` rounds, and reports: how many were answered, answered
correctly (every finding present, no error, and the same probabilities, within
1e-4, as the app's own ``Analyzer`` in this process for that image), failed, or dropped (no answer within
``--timeout``); p50/p95/max latency per request; and the server's peak RSS (VmHWM
from /proc, this exact process) after start-up and after each wave, so growth
between waves shows whether memory stays bounded.

Weights: ``--weights CKPT``, or a randomly initialised ``--arch`` (default
densenet121, real size) saved at ``--size`` px: speed and memory do not depend on
the weight values. Images: phantom chest radiographs (``cxrdx.phantom``) of
``--image-px`` (default 1024, like NIH) as PNG, a few distinct ones cycled.

    python benchmarks/load_app.py [--requests 50] [--concurrency 50] [--waves 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, _status_kb, free_port  # noqa: E402


class Server:
    """``cxrdx serve`` as a child process; ``url`` once it answers HTTP."""

    def __init__(
        self, weights: str | Path, *extra: str, backend: str = "torch", ready_s: float = 180, cwd: Path = REPO
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxrdx", "serve", "--weights", str(weights), "--port", str(self.port),
             "--backend", backend, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
        )  # fmt: skip
        deadline = time.monotonic() + ready_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cxrdx serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"cxrdx serve did not answer within {ready_s:.0f} s:\n{self.output()}")
            time.sleep(0.25)

    def peak_rss_mb(self) -> float | None:
        kb = _status_kb(self.proc.pid, "VmHWM")
        return None if kb is None else kb / 1024

    def rss_mb(self) -> float | None:
        kb = _status_kb(self.proc.pid, "VmRSS")
        return None if kb is None else kb / 1024

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class WaveResult:
    requests: int
    answered: int = 0
    correct: int = 0
    failed: int = 0  # answered with an error
    dropped: int = 0  # no answer within the timeout
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None

    def summary(self) -> dict:
        lat = sorted(self.latencies_s)
        pct = (lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))]) if lat else (lambda q: None)
        out = {k: v for k, v in asdict(self).items() if k != "latencies_s"}
        out["errors"] = self.errors[:5]
        out.update(
            p50_s=pct(0.5),
            p95_s=pct(0.95),
            max_s=lat[-1] if lat else None,
            mean_s=statistics.fmean(lat) if lat else None,
            throughput_per_s=self.answered / self.wall_s if self.wall_s else None,
        )
        return out


def run_wave(
    url: str,
    images: list[Path],
    expected: dict[str, dict[str, float]] | None,
    requests: int,
    concurrency: int,
    timeout: float,
    tolerance: float = 1e-4,
) -> WaveResult:
    """``requests`` uploads from ``concurrency`` threads sharing one client; each is timed alone."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, max_workers=max(concurrency, 1))
    result = WaveResult(requests)
    lock = threading.Lock()
    start_gate = threading.Barrier(min(concurrency, requests))

    def one(i: int) -> None:
        image = images[i % len(images)]
        if i < start_gate.parties:
            with contextlib.suppress(threading.BrokenBarrierError):
                start_gate.wait(timeout=30)  # the first wave of requests really is concurrent
        t0 = time.perf_counter()
        try:
            job = client.submit(handle_file(str(image)), api_name="/predict")
            answer = job.result(timeout=timeout)
        except TimeoutError:
            with lock:
                result.dropped += 1
            return
        except Exception as exc:  # noqa: BLE001 - counted and reported, not raised
            with lock:
                result.answered += 1
                result.failed += 1
                result.errors.append(f"{image.name}: {type(exc).__name__}: {exc}")
            return
        dt = time.perf_counter() - t0
        ok = (
            isinstance(answer, dict)
            and answer.get("error") is None
            and len(answer.get("probabilities") or {}) > 0
        )
        why = "" if ok else f"wrong answer {str(answer)[:200]}"
        if ok and expected is not None:
            want = expected[image.name]
            got = answer["probabilities"]
            diff = max(abs(got[k] - want[k]) for k in want) if set(got) == set(want) else float("inf")
            ok = diff <= tolerance
            why = "" if ok else f"probabilities differ from the Python API's by up to {diff:.2e}"
        with lock:
            result.answered += 1
            result.latencies_s.append(dt)
            if ok:
                result.correct += 1
            else:
                result.errors.append(f"{image.name}: {why}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="load") as pool:
        list(pool.map(one, range(requests)))
    result.wall_s = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        client.close()
    return result


def make_images(folder: Path, n: int, px: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    from cxrdx.labels import FINDINGS
    from cxrdx.phantom.render import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image, _ = make_phantom(rng, px, [FINDINGS[i % len(FINDINGS)]])
        path = folder / f"phantom_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def make_weights(path: Path, arch: str, size: int) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    save_checkpoint(
        path, build_model(arch), CheckpointMeta(architecture=arch, preprocessing=Preprocessing(size=size))
    )
    return path


def expected_probabilities(weights: Path, images: list[Path]) -> dict[str, dict[str, float]]:
    """What the server must answer: the same checkpoint and the app's own code path, in this process."""
    from cxrdx.app.analyzer import Analyzer
    from cxrdx.inference.predictor import Predictor

    analyzer = Analyzer(Predictor.load(weights, backend="torch"))
    return {p.name: analyzer.predict(str(p))[1].probabilities for p in images}


def run(
    weights: Path | None = None,
    arch: str = "densenet121",
    size: int = 224,
    requests: int = 50,
    concurrency: int = 50,
    waves: int = 2,
    timeout: float = 300.0,
    image_px: int = 1024,
    distinct: int = 5,
    workdir: Path | None = None,
    serve_args: tuple[str, ...] = (),
) -> dict:
    """The whole benchmark; returns a JSON-able report."""
    with tempfile.TemporaryDirectory(prefix="cxrdx-load-") as tmp:
        work = Path(workdir or tmp)
        random_weights = weights is None
        if weights is None:
            weights = make_weights(work / f"{arch}-random.safetensors", arch, size)
        images = make_images(work / "images", distinct, image_px)
        expected = expected_probabilities(Path(weights), images)
        report: dict = {
            "weights": str(weights) if not random_weights else f"random {arch} at {size} px",
            "images": f"{distinct} phantom PNGs, {image_px} px",
            "requests_per_wave": requests,
            "concurrency": concurrency,
            "cpus": os.cpu_count(),
            "load_average_before": os.getloadavg(),
        }
        with Server(weights, *serve_args) as server:
            warm = run_wave(server.url, images[:1], expected, 1, 1, timeout)  # first request: lazy imports
            report["startup_peak_rss_mb"] = server.peak_rss_mb()
            report["warmup_latency_s"] = warm.latencies_s[0] if warm.latencies_s else None
            report["waves"] = []
            for _ in range(waves):
                wave = run_wave(server.url, images, expected, requests, concurrency, timeout)
                wave.peak_rss_mb = server.peak_rss_mb()
                report["waves"].append(wave.summary())
            report["rss_after_mb"] = server.rss_mb()
            report["server_alive_after"] = server.proc.poll() is None
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="checkpoint to serve (default: random --arch weights)")
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=224, help="network input size for random weights")
    parser.add_argument("--requests", type=int, default=50, help="uploads per wave")
    parser.add_argument("--concurrency", type=int, default=50, help="client threads")
    parser.add_argument(
        "--waves", type=int, default=2, help="rounds of --requests (memory growth between them)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds before a request counts as dropped"
    )
    parser.add_argument("--image-px", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args.weights, args.arch, args.size, args.requests, args.concurrency, args.waves, args.timeout,
                 args.image_px)  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = all(w["correct"] == w["requests"] for w in report["waves"]) and report["server_alive_after"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
