"""``predict``: the 14 findings for chest X-ray images (PNG, JPEG, DICOM; files or folders).

Streamed (csv/jsonl rows per batch), sharded (``shard`` I/N or torchrun's ranks), resumable, the
batch size and threads measured once per machine and model; dicom/fhir results go to a folder
(cxrdx.interop). The work is ``cxrdx.jobs.predict_batch``; ``Result`` (its ``PredictSummary``) is what it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from cxrdx.options import option
from cxrdx.reporter import Reporter
from cxrdx.settings import BACKENDS, BATCH_SIZE, FHIR_PATIENT_SYSTEM, PRECISION, PRECISIONS, TOP_K

if TYPE_CHECKING:
    from cxrdx.jobs.predict_batch import PredictSummary as Result
FORMATS = ("table", "json", "csv", "jsonl", "dicom", "fhir", "parquet")
ENGINES = ("local", "ray")  # ray: cxrdx.jobs.predict_ray


@dataclass
class Config:
    """What ``cxrdx predict`` was asked for (its options, one field each)."""

    GROUPS: ClassVar[dict[str, str]] = {
        "archives": "csv and jsonl stream to --out as they are made (one fsync per batch: a crash loses at most "
        "that batch). Many processes: each takes a slice of the sorted file list and writes "
        "OUT.part-I-of-N; the last one to finish merges the parts into OUT.",
    }

    weights: str = option(metavar="CKPT", help="cxrdx .safetensors checkpoint")
    paths: list[str] = option(positional=True, metavar="PATH", help="image files and/or folders")
    recursive: bool = option(False, short="-r", help="also search subfolders of folders")
    format: str = option(
        "table",
        choices=FORMATS,
        help="output format; jsonl = JSON Lines, one image per line; dicom = a TID 1500 SR and "
        "the Grad-CAM heatmaps as a DICOM Segmentation in each DICOM input's study; fhir = an R4 DiagnosticReport bundle "
        "per image (PNG/JPEG too). dicom and fhir need --out DIR; parquet: --engine ray only",
    )
    out: str | None = option(
        None, metavar="FILE", help="write the output here instead of stdout (a folder for dicom/fhir)"
    )
    allow_demo_model: bool = option(
        False,
        help="dicom/fhir: write the results of a checkpoint trained on synthetic phantoms or never "
        "evaluated (refused otherwise), stamped DEMO MODEL in every object",
    )
    send_ood_findings: bool = option(
        False,
        help="dicom/fhir: report an out-of-distribution image's findings and heatmaps anyway, marked "
        "(default: its SR/FHIR say it was not evaluated, and no heatmaps are written)",
    )
    fhir_patient_system: str = option(
        FHIR_PATIENT_SYSTEM,
        metavar="URI",
        help="fhir: the system (namespace URI) of the Patient identifier when the DICOM names no issuer of its "
        "Patient ID (0010,0021 / 0010,0024, used when it is an OID); set your hospital's, e.g. urn:oid:1.2.3",
    )
    secondary_capture: bool = option(
        False,
        help="dicom: also write one JPEG secondary capture per finding (the Grad-CAM overlay for the "
        "positive ones, a card saying why there is none for the others)",
    )
    heatmaps: str | None = option(
        None, metavar="DIR", help=f"write Grad-CAM overlays of the top {TOP_K} findings"
    )
    backend: str = option(
        "auto",
        choices=BACKENDS,
        help="auto = the fastest of onnx and openvino measured on this machine (see --precision); "
        "onnx / openvino: that runtime only",
    )
    precision: str = option(
        PRECISION,
        choices=PRECISIONS,
        help="auto = the fastest that keeps the numbers: fp32, OpenVINO bf16 (CPUs with AMX/AVX512-BF16) or "
        "the int8 model of `cxrdx quantize`, a reduced one only when it matches the fp32 outputs stored "
        "with the export (max |dp|, calls flipped, AUROC); fp32 = exact; bf16 / int8 = that one "
        "(heatmaps stay fp32; docs/performance.md)",
    )
    device: str = option("cpu", help="cpu or cuda[:N] (torch backend only)")
    batch_size: int | None = option(
        None,
        help=f"images per network call (default: measured on this machine, see --no-autotune; else {BATCH_SIZE})",
    )
    autotune: bool = option(
        True,
        flag="--no-autotune",
        help="do not measure backend, precision and batch size (done when the export is written, or at "
        "the first large predict, then cached per machine and model); use onnx fp32 and the defaults",
    )
    workers: int | None = option(None, help="image decoding threads (default: CPUs - 1, at least 1)")
    tta: bool = option(False, help="average over the image and its mirror; report the spread")
    resume: bool = option(
        False, group="archives", help="skip the images already in --out (csv/jsonl), append the rest"
    )
    shard: str | None = option(
        None,
        group="archives",
        metavar="I/N",
        help="be shard I (0 to N-1) of N, e.g. $SLURM_ARRAY_TASK_ID/N; torchrun's RANK/WORLD_SIZE "
        "are used when this is not given",
    )
    engine: str = option(
        "local",
        choices=ENGINES,
        group="archives",
        help="local: this process; ray: Ray Data on a Ray cluster (pip install 'cxrdx[ray]'): decoding "
        "as tasks, the network in one actor per node (per GPU with --device cuda), a dead worker's batch "
        "retried; needs --out and csv, jsonl or parquet; PATHs may also be CSV/Parquet manifests of "
        "paths and s3:// gs:// URIs",
    )
    address: str | None = option(
        None,
        group="archives",
        metavar="ADDR",
        help="with --engine ray: the cluster to join (auto, or ray://HEAD:10001); default: a local Ray",
    )


def run(config: Config, reporter: Reporter | None = None) -> Result:
    # torch and MONAI are not imported here: with an exported checkpoint the ONNX path needs neither
    from cxrdx.jobs.predict_batch import FOLDER_FORMATS, predict_job
    from cxrdx.reporter import reporter_or_default

    if config.engine == "ray" or config.format == "parquet" or config.address:
        from cxrdx.jobs.predict_ray import predict_on_ray  # refuses parquet/`address` without ray

        reporter = reporter_or_default(reporter, "predict")
        return predict_on_ray(config, engine=config.engine, address=config.address, log=reporter.note)
    result_folder = check_inputs = None
    if config.format in FOLDER_FORMATS:
        import functools

        from cxrdx.interop.result_files import ResultFolder, check_dicom_inputs

        result_folder = functools.partial(
            ResultFolder,
            allow_demo=config.allow_demo_model,
            send_ood_findings=config.send_ood_findings,
            fhir_patient_system=config.fhir_patient_system,
            secondary_capture=config.secondary_capture,
        )
        check_inputs = check_dicom_inputs
    return predict_job(config, reporter, result_folder=result_folder, check_inputs=check_inputs)
