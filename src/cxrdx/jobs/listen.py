"""``listen``: a DICOM node. Receives chest radiographs by C-STORE, sends back an SR and a heatmap SEG.

A PACS or modality sends CR/DX images to this node's AE title; each one is spooled durably
before it is acknowledged, read by the model, and the results (a TID 1500 Structured Report, the
Grad-CAM heatmaps as one Segmentation and, on request, secondary captures, in the image's study)
are sent to ``send_to`` by C-STORE, with retries, or to a DICOMweb service by STOW-RS. A restart
resumes the spool. Local only (127.0.0.1) unless ``allow_remote``; DICOM TLS with
``tls_cert``/``tls_key``/``tls_ca`` (peers verified by the CA), else no authentication beyond AE
titles: use it on a trusted network.

``start`` wires the node (predictor, result processing, Storage SCP) and returns it listening;
``run`` also waits until it is stopped (Ctrl-C, SIGTERM) and returns what it did.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrdx.errors import ConfigError
from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.settings import BACKENDS, BATCH_SIZE, LOOPBACK, PRECISION, PRECISIONS


@dataclass
class Config:
    weights: str = option(metavar="CKPT", help="cxrdx .safetensors checkpoint")
    send_to: str = option(
        metavar="AET@HOST:PORT|URL",
        help="where the results go: a DICOM peer by C-STORE, e.g. ORTHANC@127.0.0.1:4242, or a DICOMweb "
        "base URL by STOW-RS, e.g. https://pacs.example.org/dicom-web (no credentials in it)",
    )
    send_credentials: Path | None = option(
        None,
        metavar="FILE",
        help="DICOMweb credentials: KEY=VALUE lines, CXRDX_DICOMWEB_TOKEN (bearer) or CXRDX_DICOMWEB_USER "
        "and CXRDX_DICOMWEB_PASSWORD (basic); default: those environment variables",
    )
    tls_cert: Path | None = option(
        None,
        metavar="PEM",
        help="DICOM TLS: this node's certificate; with --tls-key and --tls-ca the node takes TLS connections "
        "only, from peers with a certificate the CA signed, and sends over TLS (https: its client certificate)",
    )
    tls_key: Path | None = option(None, metavar="PEM", help="DICOM TLS: the private key of --tls-cert")
    tls_ca: Path | None = option(
        None,
        metavar="PEM",
        help="DICOM TLS: the CA certificate(s) that peers' certificates must be signed by (https: the CA "
        "that checks the DICOMweb server)",
    )
    ae_title: str = option("CXRDX", help="this node's AE title")
    port: int = option(11112, help="DICOM port to listen on")
    host: str = option("127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    allow_remote: bool = option(
        False, help="allow a non-loopback --host: other machines can then send images to this node"
    )
    spool: Path = option(
        Path("cxrdx-spool"),
        metavar="DIR",
        help="folder for received images and unsent results; a restart resumes it",
    )
    allow_calling: str | None = option(
        None, metavar="AET,...", help="accept associations only from these calling AE titles (default: any)"
    )
    allow_lateral: bool = option(False, help="also read lateral views (LL/RL)")
    backend: str = option("auto", choices=BACKENDS, help="as for `cxrdx predict`")
    precision: str = option(
        PRECISION,
        choices=PRECISIONS,
        help="as for `cxrdx predict`: auto = the backend and precision predict measured and cached for this "
        "machine and model (fp32 when none is cached); the heatmaps come from the same network pass",
    )
    device: str = option("cpu", help="cpu or cuda[:N] (torch backend only)")
    batch_size: int = option(BATCH_SIZE, help="images per network call")
    workers: int | None = option(None, help="image decoding threads (default: CPUs - 1, at least 1)")
    result_workers: int | None = option(
        None,
        help="processes building the result objects (SR, SEG, pictures) while the network runs "
        "(default: half the CPUs, 1 to 4; 0: in the main process)",
    )
    heatmaps: bool = option(
        True, flag="--no-heatmaps", help="send the SR only: no Grad-CAM heatmap SEG (faster)"
    )
    secondary_capture: bool = option(
        False,
        help="also send one JPEG secondary capture per finding: the Grad-CAM overlay for the positive ones, "
        "a card saying why there is none for the others (for viewers that cannot show the SEG)",
    )
    max_per_peer: int = option(
        8, metavar="N", help="connections one peer address may hold at once; more are closed as they arrive"
    )
    max_instance_mb: float = option(
        128.0, metavar="MB", help="the largest object accepted; a larger one ends its association"
    )
    allow_demo_model: bool = option(
        False,
        help="serve a checkpoint trained on synthetic phantoms or never evaluated (refused otherwise); "
        "every object sent is then stamped DEMO MODEL",
    )
    send_ood_findings: bool = option(
        False,
        help="for an out-of-distribution image, send its findings and heatmaps anyway, marked OUT OF "
        "DISTRIBUTION (default: the SR says the image was not evaluated, and no heatmaps are sent)",
    )


@dataclass
class Listener:
    """A started node: stop it with ``stop()`` (or set ``node.stopping``)."""

    node: Any  # cxrdx.interop.node.Node
    processing: Any  # cxrdx.interop.processing.Processing
    backend: str
    destination: Any

    def stop(self) -> None:
        self.node.stop()
        self.processing.close()


@dataclass
class Result:
    counts: dict[str, int]  # processed, ignored (not for us), refused, failed
    spool: dict[str, int]  # inbox (waiting), outbox (unsent)


def check(config: Config) -> None:
    """The settings that must hold before anything loads."""
    if config.host not in LOOPBACK and not config.allow_remote:
        raise ConfigError(
            f"`host` {config.host} would let other machines send images to this node; add `allow_remote` "
            "if that is intended (on a trusted network, or with DICOM TLS: `tls_cert`, `tls_key`, `tls_ca`; "
            "without TLS there is no authentication beyond AE titles), "
            "or keep the default `host` 127.0.0.1"
        )
    if not 0 < config.port < 65536:
        raise ConfigError(f"`port` {config.port}: must be between 1 and 65535")
    if not 0 < len(config.ae_title.strip()) <= 16:
        raise ConfigError(f"`ae_title` {config.ae_title!r}: must be 1 to 16 characters")
    if config.batch_size < 1:
        raise ConfigError(f"`batch_size` must be at least 1, got {config.batch_size}")
    if config.workers is not None and config.workers < 0:
        raise ConfigError(f"`workers` must be 0 or more, got {config.workers}")
    if config.result_workers is not None and config.result_workers < 0:
        raise ConfigError(f"`result_workers` must be 0 or more, got {config.result_workers}")
    if config.max_per_peer < 1:
        raise ConfigError(f"`max_per_peer` must be at least 1, got {config.max_per_peer}")
    if not config.max_instance_mb > 0:
        raise ConfigError(f"`max_instance_mb` must be more than 0, got {config.max_instance_mb}")


def start(config: Config, reporter: Reporter | None = None) -> Listener:
    """Load the model, start the result processing and the Storage SCP; returns once it listens."""
    reporter = reporter_or_default(reporter, "listen")
    check(config)
    from cxrdx.interop.node import Node, NodeConfig, parse_ae_titles
    from cxrdx.interop.send import parse_destination, transport_for
    from cxrdx.interop.tls import TlsFiles

    destination = parse_destination(config.send_to)
    allow = parse_ae_titles(config.allow_calling)
    tls = TlsFiles.from_options(config.tls_cert, config.tls_key, config.tls_ca)
    transport_for(destination, tls=tls, credentials_file=config.send_credentials).close()  # bad ones: now

    import torch

    from cxrdx.device import available_threads, choose_device
    from cxrdx.interop.processing import Processing
    from cxrdx.interop.sr import algorithm_for, results_for
    from cxrdx.model.pretrained import resolve_weights

    device = choose_device(config.device)
    threads = available_threads()
    torch.set_num_threads(threads)
    weights = resolve_weights(config.weights)  # a path, or a pretrained model's name
    predictor = load_predictor(weights, config.backend, config.precision, device, threads)
    from cxrdx.model.card import demo_stamp, require_not_demo

    require_not_demo(predictor.meta, config.allow_demo_model, "sending its results to a PACS")
    algorithm = algorithm_for(
        weights,
        predictor.meta,
        getattr(predictor, "calibrated", None),
        thresholds=predictor.thresholds,
        send_ood_findings=config.send_ood_findings,
    )
    if algorithm["demo"]:
        reporter.warn(f"{demo_stamp(predictor.meta)}; every object sent is stamped so")
    if config.send_ood_findings:
        reporter.warn("`send_ood_findings`: out-of-distribution images get findings and heatmaps, marked")
    processing = Processing(
        predictor,
        results_for,
        algorithm,
        batch_size=config.batch_size,
        workers=config.workers,
        heatmaps=config.heatmaps,
        secondary_capture=config.secondary_capture,
        result_workers=(
            min(4, max(1, available_threads() // 2))
            if config.result_workers is None
            else config.result_workers
        ),
    )
    node_config = NodeConfig(
        ae_title=config.ae_title.strip(),
        host=config.host,
        port=config.port,
        destination=destination,
        spool=Path(config.spool),
        allow_calling=allow,
        allow_lateral=config.allow_lateral,
        batch_size=config.batch_size,
        max_per_peer=config.max_per_peer,
        max_instance_mb=config.max_instance_mb,
        tls=tls,
        credentials_file=config.send_credentials,
    )
    node = Node(node_config, processing)
    processing.warm()
    node.start()
    host, port = node.address
    reporter.note(
        f"{node_config.ae_title} listening on {host}:{port}{' (DICOM TLS)' if tls else ''}, results to "
        f"{destination}{' by STOW-RS' if hasattr(destination, 'url') else ''}, "
        f"spool {node_config.spool} (backend {predictor.backend}; Ctrl-C to stop)"
    )
    return Listener(node, processing, predictor.backend, destination)


def run(config: Config, reporter: Reporter | None = None) -> Result:
    """Start the node and serve until Ctrl-C or SIGTERM (from the main thread), then stop it cleanly."""
    import signal

    listener = start(config, reporter)
    node = listener.node
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: node.stopping.set())
    try:
        node.wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
    return Result(dict(node.counts), dict(node.spool.counts()))


def load_predictor(weights: Any, backend: str, precision: str, device: Any, threads: int) -> Any:
    """The node's Predictor: the backend and precision ``cxrdx predict`` chose and cached for this machine
    and model, its predictions keeping their class activation maps, so the SEG's heatmaps cost no pass."""
    from cxrdx.inference import choose
    from cxrdx.inference.heatmaps import capture_maps
    from cxrdx.inference.predictor import Predictor

    if str(device) == "cpu":
        backend, precision = choose.load_args(str(weights), backend, precision, threads)
    predictor = Predictor.load(weights, device=device, backend=backend, precision=precision, threads=threads)
    capture_maps(predictor)
    return predictor
