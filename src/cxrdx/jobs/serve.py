"""``serve``'s set-up: the checks before a web app may start and the predictor it serves.

The server never starts without real weights (random weights give confident-looking
nonsense), and binding another address than loopback needs ``allow_remote``, because other
machines could then upload images. The page itself is ``cxrdx.app`` (a front end, above this layer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrdx.errors import ConfigError
from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import BACKENDS, LOOPBACK, MAX_UPLOAD_MB, PRECISION, PRECISIONS

NO_WEIGHTS_MESSAGE = (
    "no model given: serve needs `weights` (a cxrdx .safetensors checkpoint); it will not serve "
    "random weights. Get a model one of these ways: `make demo` trains a small demo model on synthetic "
    "phantoms into demo/ (for trying the app, not for real images); `cxrdx train ...` trains one on NIH "
    "ChestX-ray14; `cxrdx import --from chexnet|xrv|keras SOURCE --out model.safetensors` converts "
    "published weights. Then run `cxrdx serve --weights model.safetensors`"
)


@dataclass
class Config:
    weights: Path | None = option(None, metavar="CKPT", help="cxrdx .safetensors checkpoint (required)")
    host: str = option("127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    port: int = option(7860, help="TCP port")
    max_upload_mb: float = option(MAX_UPLOAD_MB, help="largest upload accepted")
    allow_remote: bool = option(
        False,
        help="allow binding a non-loopback --host: other machines can then upload images to this server",
    )
    share: bool = option(
        False,
        help="also open a public gradio.live tunnel (uploads pass through Gradio's servers; off by default)",
    )
    backend: str = option("auto", choices=BACKENDS, help="how the network runs")
    precision: str = option(
        PRECISION,
        choices=PRECISIONS,
        help="as for `cxrdx predict`: auto = the backend and precision predict chose and cached for this "
        "machine and model (fp32 when none is cached); fp32 = exact; bf16 / int8 = that one",
    )


@dataclass
class Result:
    """A predictor ready to serve, and what the page must say about it."""

    predictor: Any  # cxrdx.inference.predictor.Predictor
    max_file_size: int  # bytes
    warnings: list[str]  # the model card's banners (phantom-trained, no evaluation, ...)


def check(config: Config) -> None:
    """The settings that must hold before anything loads."""
    if not config.weights:
        raise ConfigError(NO_WEIGHTS_MESSAGE)
    if config.host not in LOOPBACK and not config.allow_remote:
        raise ConfigError(
            f"`host` {config.host} would let other machines upload images to this server; "
            "add `allow_remote` if that is intended (and put it behind authentication), "
            "or keep the default `host` 127.0.0.1"
        )
    if not 0 < config.port < 65536:
        raise ConfigError(f"`port` {config.port}: must be between 1 and 65535")
    if not config.max_upload_mb > 0:
        raise ConfigError(f"`max_upload_mb` must be positive, got {config.max_upload_mb}")


def run(config: Config, reporter: Reporter | None = None) -> Result:
    """Check the settings and load the predictor the app will serve."""
    reporter = reporter_or_default(reporter, "serve")
    check(config)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from cxrdx.device import available_threads
    from cxrdx.inference import choose
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.card import banners

    threads = available_threads()
    torch.set_num_threads(threads)
    backend, precision = choose.load_args(str(config.weights), config.backend, config.precision, threads)
    predictor = Predictor.load(config.weights, backend=backend, precision=precision, threads=threads)
    return Result(predictor, int(config.max_upload_mb * 1024 * 1024), list(banners(predictor.meta)))
