"""``cxrdx serve``: the web app for one checkpoint, local only unless ``--allow-remote``.

The server never starts without real weights: random weights would produce
confident-looking nonsense. Binding another address than loopback needs
``--allow-remote``, because other machines could then upload images to it.
"""

from __future__ import annotations

import argparse
import os
import sys

from cxrdx.errors import ConfigError

NO_WEIGHTS_MESSAGE = (
    "no model given: serve needs --weights CKPT (a cxrdx .safetensors checkpoint); it will not serve "
    "random weights. Get a model one of these ways: `make demo` trains a small demo model on synthetic "
    "phantoms into demo/ (for trying the app, not for real images); `cxrdx train ...` trains one on NIH "
    "ChestX-ray14; `cxrdx import --from chexnet|xrv|keras SOURCE --out model.safetensors` converts "
    "published weights. Then run `cxrdx serve --weights model.safetensors`"
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cxrdx.app.ui import DEFAULT_MAX_UPLOAD_MB  # the one default, shared with launch(); loads no gradio

    parser.description = (
        "Serve a Gradio page (and a /predict API for gradio_client) for one checkpoint. "
        "Local only unless --allow-remote."
    )
    parser.add_argument("--weights", metavar="CKPT", help="cxrdx .safetensors checkpoint (required)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload accepted"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback --host: other machines can then upload images to this server",
    )
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public gradio.live tunnel (uploads pass through Gradio's servers; off by default)",
    )
    parser.add_argument("--backend", choices=("auto", "torch", "onnx", "openvino"), default="auto")
    parser.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8: the model `cxrdx quantize` made for this checkpoint (heatmaps stay fp32)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.weights:
        raise ConfigError(NO_WEIGHTS_MESSAGE)
    if args.host not in LOOPBACK and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host} would let other machines upload images to this server; "
            "add --allow-remote if that is intended (and put it behind authentication), "
            "or keep the default --host 127.0.0.1"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535")
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from cxrdx.app.ui import build_app, launch
    from cxrdx.device import available_threads
    from cxrdx.inference.predictor import Predictor

    torch.set_num_threads(available_threads())
    predictor = Predictor.load(args.weights, backend=args.backend, precision=args.precision)
    demo = build_app(predictor)
    size = int(args.max_upload_mb * 1024 * 1024)
    print(
        f"cxrdx serve: {args.weights} ({predictor.meta.architecture}, backend {predictor.backend}) "
        f"on http://{args.host}:{args.port}  (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    from cxrdx.model.card import banners

    for warning in banners(predictor.meta):  # the page shows them too, as banners
        print(f"cxrdx serve: WARNING: {warning}", file=sys.stderr, flush=True)
    try:
        launch(demo, args.host, args.port, max_file_size=size, share=args.share, block=True)
    except OSError as exc:
        raise ConfigError(
            f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc}); choose another --port"
        ) from None
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
