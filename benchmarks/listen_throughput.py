"""``cxrdx listen`` throughput against ``cxrdx predict`` on the same DICOM files (issues 14 and 29: >= 85 %).

The listener runs as a user runs it (``cxrdx listen`` in its own process); this script is
the modality and the PACS: it sends N DICOM files to the node over one association and
a pynetdicom Storage SCP here receives the results. The listener's rate is N divided by
the time from the first C-STORE to the last SR received: receiving, spooling (fsync),
inference, building the result objects and sending them, everything the node does.
``cxrdx predict``'s rate is the loop that command runs (``Predictor.iter_predict`` on the
same files, same backend, batch size and decode threads, plus ``ResultFolder`` for
``--format dicom``), timed in this process: process start-up and output formatting are
excluded on both sides (the listener answers C-ECHO before the clock starts).

Three comparisons (``--compare``):

- ``seg`` (issue 29's target): the listener as started by default (the SR and the Grad-CAM heatmap
  SEG) against plain ``cxrdx predict`` (``--format csv``: the network's loop, no result objects);
- ``dicom``: the listener as started by default (SR + SEG) against
  ``cxrdx predict --format dicom --out DIR`` (the same objects, written to a folder);
- ``table``: ``cxrdx listen --no-heatmaps`` (SR only) against plain ``cxrdx predict``
  (a table: no result objects at all), i.e. what building and sending the SR costs.

Each side prints wall img/s and images per CPU-second (the listener's CPU includes its
result workers). On a shared machine wall rates move with other people's load; runs
alternate (predict, listen, predict, listen) and the best of each is compared.

``--nih N``: the files are N real NIH ChestX-ray14 PNGs (1024 px, ``../shared/data/nih/images``) wrapped
as DX DICOMs (uncompressed), instead of phantoms.

    python benchmarks/listen_throughput.py [--weights CKPT] [--n 32] [--size 512] [--repeats 2]
    python benchmarks/listen_throughput.py --net-size 320 --nih 16 --compare seg   # issue 29
"""

from __future__ import annotations

import cxrdx  # noqa: F401 - first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads

# isort: split

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cxrdx_cmd, machine_line  # noqa: E402

TARGET = 0.85


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_weights(path: Path, size: int) -> Path:
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    save_checkpoint(path, build_model("densenet121"), CheckpointMeta(preprocessing=Preprocessing(size=size)))
    return path


def write_dx(img, patient: str, path: Path) -> Path:
    """An 8-bit gray image as a DX-for-presentation file, its own study and series."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = patient, "DX", "CHEST", "PA"
    ds.set_pixel_data(img, "MONOCHROME2", 8)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicoms(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np

    from cxrdx.phantom.render import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_dx(make_phantom(np.random.default_rng(i), size, [])[0], f"B{i}", folder / f"bench_{i:04d}.dcm")
        for i in range(n)
    ]


def make_nih_dicoms(folder: Path, n: int) -> list[Path]:
    """N real NIH PNGs (gray, 1024 px) as DX DICOM files, each its own patient and study."""
    import numpy as np
    from PIL import Image

    images = sorted((REPO / ".." / "shared" / "data" / "nih" / "images").glob("*.png"))[:n]
    if len(images) < n:
        raise SystemExit(f"--nih {n}: only {len(images)} NIH PNGs under ../shared/data/nih/images")
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_dx(np.asarray(Image.open(png).convert("L")), f"N{i}", folder / f"{png.stem}.dcm")
        for i, png in enumerate(images)
    ]


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) of running processes, from /proc (Linux; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def family(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *map(int, kids)]


def run_predict(predictor, files: list[Path], args, dicom_out: Path | None) -> tuple[float, float]:
    """(wall s, CPU s) of the loop `cxrdx predict` runs; with ``dicom_out``, `--format dicom --out DIR`'s."""
    folder = None
    if dicom_out is not None:
        from cxrdx.interop.result_files import ResultFolder

        folder = ResultFolder(
            dicom_out, "dicom", predictor, str(args.weights), allow_demo=True
        )  # random weights
    t0, c0 = time.perf_counter(), cpu_self()
    for pred in predictor.iter_predict(files, batch_size=args.batch_size, workers=args.workers):
        if folder is not None:
            folder.add(pred)
        assert pred.ok, pred.error
    return time.perf_counter() - t0, cpu_self() - c0


class Pacs:
    """The destination: counts SRs and secondary captures as they arrive."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.sr = 0
        self.seg = 0
        self.sc = 0
        self.bytes = 0
        self.last = 0.0
        self.lock = threading.Lock()
        ae = AE(ae_title="BENCH")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)  # as a PACS: JPEG-LS SEG too
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        sop = str(event.request.AffectedSOPClassUID)
        with self.lock:
            self.bytes += len(event.request.DataSet.getvalue())
            if sop.startswith("1.2.840.10008.5.1.4.1.1.88"):
                self.sr += 1
            elif sop == "1.2.840.10008.5.1.4.1.1.66.4":
                self.seg += 1
            else:
                self.sc += 1
            self.last = time.perf_counter()
        return 0


def run_listen(
    node_port: int, node_pid: int, pacs: Pacs, files: list[Path], seg: bool = False
) -> tuple[float, float]:
    """(wall s, CPU s of the listener and its workers) for all files' SRs (and with ``seg`` SEGs) to arrive."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(datasets[0].SOPClassUID, [datasets[0].file_meta.TransferSyntaxUID])
    start_sr, start_seg = pacs.sr, pacs.seg
    c0 = cpu_of(family(node_pid))
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", node_port, ae_title="CXRDX")
    assert assoc.is_established, "the listener did not accept the association"
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status and status.Status == 0, status
    assoc.release()
    deadline = time.monotonic() + 1800
    while pacs.sr - start_sr < len(files) or (seg and pacs.seg - start_seg < len(files)):
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the listener's results")
        time.sleep(0.02)
    wall = pacs.last - t0
    return wall, cpu_of(family(node_pid)) - c0


def echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRDX")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def compare(mode: str, predictor, files: list[Path], work: Path, args) -> str:
    """Alternate predict and listen runs; returns the verdict line. mode: dicom or table (see the top)."""
    n = len(files)
    dicom = mode == "dicom"
    label = {"dicom": "cxrdx predict --format dicom", "seg": "cxrdx predict --format csv"}.get(
        mode, "cxrdx predict (table)"
    )
    node_label = (
        "cxrdx listen --no-heatmaps (SR only)" if mode == "table" else "cxrdx listen (SR + heatmap SEG)"
    )
    print(f"== {node_label} vs {label}", flush=True)
    run_predict(predictor, files[: args.batch_size], args, work / "warm" if dicom else None)  # warm-up
    pacs_port, node_port = free_port(), free_port()
    pacs = Pacs(pacs_port)
    cmd = cxrdx_cmd(
        "listen", "--weights", str(args.weights), "--port", str(node_port),
        "--send-to", f"BENCH@127.0.0.1:{pacs_port}", "--spool", str(work / f"spool-{mode}"),
        "--backend", args.backend, "--batch-size", str(args.batch_size),
        "--allow-demo-model",  # random or phantom weights: never evaluated
    )  # fmt: skip
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.result_workers is not None:
        cmd += ["--result-workers", str(args.result_workers)]
    if mode == "table":
        cmd.append("--no-heatmaps")
    log_path = work / f"listen-{mode}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    node = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    rows: dict[str, list[tuple[float, float]]] = {"predict": [], "listen": []}
    try:
        deadline = time.monotonic() + 300
        while not echo(node_port):
            if node.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cxrdx listen did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        seg = mode != "table"
        run_listen(node_port, node.pid, pacs, files[: args.batch_size], seg)  # warm-up (workers, sessions)
        for r in range(args.repeats):
            rows["predict"].append(run_predict(predictor, files, args, work / f"out-{r}" if dicom else None))
            rows["listen"].append(run_listen(node_port, node.pid, pacs, files, seg))
            p, q = rows["predict"][-1], rows["listen"][-1]
            print(
                f"run {r + 1}: predict {n / p[0]:6.2f} img/s ({n / p[1]:.2f} img/CPU-s)   "
                f"listen {n / q[0]:6.2f} img/s ({n / q[1]:.2f} img/CPU-s)",
                flush=True,
            )
    finally:
        node.terminate()
        node.wait(60)
        log.close()
        pacs.server.shutdown()
    best_p = max(n / w for w, _ in rows["predict"])
    best_q = max(n / w for w, _ in rows["listen"])
    cpu_p = max(n / c for _, c in rows["predict"])
    cpu_q = max(n / c for _, c in rows["listen"])
    ratio = best_q / best_p
    print(f"{label}: {best_p:.2f} img/s (best of {args.repeats}); {cpu_p:.2f} img per CPU-second")
    received = pacs.sr + pacs.seg + pacs.sc
    print(
        f"{node_label}: {best_q:.2f} img/s; {cpu_q:.2f} img per CPU-second; {pacs.sr} SR, {pacs.seg} SEG, "
        f"{pacs.sc} SC received, {pacs.bytes / max(1, received) / 1e3:.0f} KB per object"
    )
    return (
        f"{node_label} / {label}: {ratio:.0%} wall, {cpu_q / cpu_p:.0%} per CPU-second "
        f"(target >= {TARGET:.0%}: {'met' if ratio >= TARGET else 'NOT met'})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="checkpoint (default: random DenseNet121 at --net-size)")
    ap.add_argument("--net-size", type=int, default=224, help="input size of the default checkpoint")
    ap.add_argument("--n", type=int, default=32, help="DICOM files per run")
    ap.add_argument("--size", type=int, default=512, help="phantom DICOM size in pixels")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (both sides; default CPUs - 1)")
    ap.add_argument("--result-workers", type=int, default=None, help="`cxrdx listen --result-workers`")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--nih", type=int, default=0, help="use N real NIH PNGs wrapped as DICOM (not phantoms)")
    ap.add_argument(
        "--compare", nargs="+", choices=("seg", "dicom", "table"), default=["seg", "dicom", "table"]
    )
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from cxrdx.device import available_threads
    from cxrdx.inference import choose
    from cxrdx.inference.predictor import Predictor

    torch.set_num_threads(available_threads())
    work = Path(args.work or tempfile.mkdtemp(prefix="cxrdx-listen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.weights = (
        Path(args.weights) if args.weights else make_weights(work / "densenet121.safetensors", args.net_size)
    )
    if args.nih:
        args.n, args.size = args.nih, 1024
        files = make_nih_dicoms(work / "dicom", args.nih)
    else:
        files = make_dicoms(work / "dicom", args.n, args.size)
    # the backend and precision `cxrdx predict` chose and cached for this machine and model, as the node opens
    threads = available_threads()
    backend, precision = choose.load_args(str(args.weights), args.backend, "auto", threads)
    predictor = Predictor.load(args.weights, backend=backend, precision=precision, threads=threads)
    print(f"machine: {machine_line()}")
    print(
        f"{args.n} DX files {args.size} px ({'real NIH PNGs' if args.nih else 'phantoms'}), {predictor.meta.architecture} at {predictor.meta.preprocessing.size} px, "
        f"backend {predictor.backend} (both sides), batch {args.batch_size}",
        flush=True,
    )
    verdicts = [compare(mode, predictor, files, work, args) for mode in args.compare]
    print(f"machine after: load average {os.getloadavg()[0]:.2f}")
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
