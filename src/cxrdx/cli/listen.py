"""``cxrdx listen``: a DICOM node. Receives chest radiographs by C-STORE, sends back SR + secondary captures.

A PACS or modality sends CR/DX images to this node's AE title; each one is spooled
durably before it is acknowledged, read by the model, and the results (a TID 1500
Structured Report and Grad-CAM secondary captures, in the image's study) are sent to
``--send-to`` by C-STORE, with retries. A restart resumes the spool. Local only
(127.0.0.1) unless ``--allow-remote``; no authentication beyond AE titles: use it on a
trusted network.
"""

from __future__ import annotations

import argparse
import signal
import sys

from cxrdx.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
BACKENDS = (
    "auto",
    "torch",
    "onnx",
    "openvino",
)  # = cxrdx.inference.predictor.BACKENDS, spelled here so --help loads no torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run a DICOM Storage SCP: C-ECHO, and C-STORE of CR / DX / DX-for-presentation images, which are "
        "read by the model; the results (SR + secondary captures, same study) go to --send-to by C-STORE. "
        "Other objects (other modalities, SR, laterals unless --allow-lateral) are acknowledged and logged, "
        "not processed. No worklist, no authentication beyond AE titles: use it on a trusted network."
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="cxrdx .safetensors checkpoint")
    p.add_argument("--ae-title", default="CXRDX", help="this node's AE title (default CXRDX)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port to listen on (default 11112)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host: other machines can then send images to this node",
    )
    p.add_argument(
        "--send-to",
        required=True,
        metavar="AET@HOST:PORT",
        help="where the results go by C-STORE, e.g. ORTHANC@127.0.0.1:4242",
    )
    p.add_argument(
        "--spool",
        default="cxrdx-spool",
        metavar="DIR",
        help="folder for received images and unsent results; a restart resumes it (default ./cxrdx-spool)",
    )
    p.add_argument(
        "--allow-calling",
        metavar="AET,...",
        help="accept associations only from these calling AE titles (default: any)",
    )
    p.add_argument("--allow-lateral", action="store_true", help="also read lateral views (LL/RL)")
    p.add_argument(
        "--max-per-peer",
        type=int,
        default=8,
        metavar="N",
        help="connections one peer address may hold at once; more are closed as they arrive (default 8)",
    )
    p.add_argument(
        "--max-instance-mb",
        type=float,
        default=128.0,
        metavar="MB",
        help="the largest object accepted; a larger one ends its association (default 128)",
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="as for `cxrdx predict`")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch backend only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--workers", type=int, default=None, help="image decoding threads (default: CPUs - 1, at least 1)"
    )
    p.add_argument(
        "--result-workers",
        type=int,
        default=None,
        help="processes building the SR and secondary captures while the network runs "
        "(default: half the CPUs, 1 to 4; 0: in the main process)",
    )
    p.add_argument(
        "--no-heatmaps",
        action="store_true",
        help="send the SR only: no Grad-CAM secondary captures (faster)",
    )
    p.add_argument(
        "--allow-demo-model",
        action="store_true",
        help="serve a checkpoint trained on synthetic phantoms or never evaluated (refused otherwise); "
        "every object sent is then stamped DEMO MODEL",
    )
    p.add_argument(
        "--send-ood-findings",
        action="store_true",
        help="for an out-of-distribution image, send its findings and heatmaps anyway, marked OUT OF "
        "DISTRIBUTION (default: the SR says the image was not evaluated, and no heatmaps are sent)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="log every received instance")


def _check(args: argparse.Namespace) -> None:
    if args.host not in LOOPBACK and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host} would let other machines send images to this node; add --allow-remote "
            "if that is intended (on a trusted network: there is no authentication beyond AE titles), "
            "or keep the default --host 127.0.0.1"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535")
    if not 0 < len(args.ae_title.strip()) <= 16:
        raise ConfigError(f"--ae-title {args.ae_title!r}: must be 1 to 16 characters")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    if args.result_workers is not None and args.result_workers < 0:
        raise ConfigError(f"--result-workers must be 0 or more, got {args.result_workers}")
    if args.max_per_peer < 1:
        raise ConfigError(f"--max-per-peer must be at least 1, got {args.max_per_peer}")
    if not args.max_instance_mb > 0:
        raise ConfigError(f"--max-instance-mb must be more than 0, got {args.max_instance_mb}")


def _logging(verbose: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s cxrdx listen: %(levelname)s %(message)s"))
    node_log = logging.getLogger("cxrdx.node")
    node_log.addHandler(handler)
    node_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    node_log.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if verbose else logging.ERROR)


def run(args: argparse.Namespace) -> int:
    _check(args)
    from pathlib import Path

    from cxrdx.interop.node import Node, NodeConfig, parse_ae_titles
    from cxrdx.interop.send import parse_destination

    destination = parse_destination(args.send_to)
    allow = parse_ae_titles(args.allow_calling)
    _logging(args.verbose)

    import torch

    from cxrdx.device import available_threads, choose_device
    from cxrdx.inference.predictor import Predictor
    from cxrdx.interop.processing import Processing
    from cxrdx.interop.sr import algorithm_for, results_for
    from cxrdx.model.pretrained import resolve_weights

    device = choose_device(args.device)
    torch.set_num_threads(available_threads())
    weights = resolve_weights(args.weights)  # a path, or a pretrained model's name
    predictor = Predictor.load(weights, device=device, backend=args.backend)
    from cxrdx.model.card import demo_stamp, require_not_demo

    require_not_demo(predictor.meta, args.allow_demo_model, "sending its results to a PACS")
    algorithm = algorithm_for(
        weights,
        predictor.meta,
        getattr(predictor, "calibrated", None),
        thresholds=predictor.thresholds,
        send_ood_findings=args.send_ood_findings,
    )
    for line in (
        [f"warning: {demo_stamp(predictor.meta)}; every object sent is stamped so"]
        if algorithm["demo"]
        else []
    ) + (
        ["warning: --send-ood-findings: out-of-distribution images get findings and heatmaps, marked"]
        if args.send_ood_findings
        else []
    ):
        print(f"cxrdx listen: {line}", file=sys.stderr, flush=True)
    processing = Processing(
        predictor,
        results_for,
        algorithm,
        batch_size=args.batch_size,
        workers=args.workers,
        heatmaps=not args.no_heatmaps,
        result_workers=(
            min(4, max(1, available_threads() // 2)) if args.result_workers is None else args.result_workers
        ),
    )
    config = NodeConfig(
        ae_title=args.ae_title.strip(),
        host=args.host,
        port=args.port,
        destination=destination,
        spool=Path(args.spool),
        allow_calling=allow,
        allow_lateral=args.allow_lateral,
        batch_size=args.batch_size,
        max_per_peer=args.max_per_peer,
        max_instance_mb=args.max_instance_mb,
    )
    node = Node(config, processing)
    processing.warm()
    node.start()
    host, port = node.address
    print(
        f"cxrdx listen: {config.ae_title} listening on {host}:{port}, results to {destination}, "
        f"spool {config.spool} (backend {predictor.backend}; Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: node.stopping.set())
    try:
        node.wait()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
        processing.close()
    c = node.counts
    left = node.spool.counts()
    print(
        f"cxrdx listen: stopped; {c['processed']} processed, {c['ignored']} not for us, {c['refused']} refused, "
        f"{c['failed']} failed; {left['inbox']} waiting and {left['outbox']} unsent in the spool",
        file=sys.stderr,
    )
    return 0
