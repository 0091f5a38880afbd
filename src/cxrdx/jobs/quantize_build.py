"""``cxrdx quantize``'s work: a checkpoint's folded ONNX export quantized by ONNX Runtime, kept only if it scores as fp32 does.

Static QDQ quantization: uint8 activations, int8 weights with one scale per output channel,
activation ranges from MinMax calibration on the *training* split of a prepared cache.
The result is then *checked* on that cache's *validation* split: fp32 and int8 score the
same images, and the int8 model is written to the export cache only when its mean AUROC
(over the findings with positives and negatives there) is within ``MAX_AUROC_DROP`` of
fp32's. Otherwise nothing is written and the figures say why. The test split is never
used (it stays for the report); ``benchmarks/int8.py`` measures the agreement on test.

On x86 CPUs without VNNI (AVX2, plain AVX-512) the weights are quantized to 7 bits
(``reduce_range``, ONNX Runtime's advice; ``cxrdx.inference.int8.int8_variant``).

The out-of-distribution gate reads the features int8 computes (median score +6.6 % on a tiny
model against the fp32 reference). The check measures it on the validation split (the scores of
both, and how many verdicts differ) and refits the threshold on int8's own validation scores:
fp32's threshold scaled by the median int8 / fp32 score ratio; ``Predictor`` applies that
threshold with the int8 file (``cxrdx.inference.int8.int8_meta``). The
reference itself (mean, precision) stays the fp32 one: the int8 file is refused when the
threshold refit cannot bring the verdicts within ``MAX_OOD_VERDICTS_CHANGED`` of fp32's.

The runtime half (the variant, the session, the record in the file) is ``cxrdx.inference.int8``;
``cxrdx quantize --weights CKPT --data CACHE`` (``cxrdx.jobs.quantize``) runs this,
``cxrdx predict --precision int8`` uses its file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxrdx.device import available_threads, isa_line
from cxrdx.errors import CheckpointError, ConfigError, CxrdxError
from cxrdx.files import atomic_write, file_sha256
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.backends import FEATURES_NAME, GRAY_NAME, OUTPUT_NAME, make_session
from cxrdx.inference.int8 import MAX_AUROC_DROP, PRECISION_KEY, RECORD_KEY, int8_variant
from cxrdx.metrics.auroc import per_finding_auroc
from cxrdx.metrics.calibration import apply_calibration, resolve_calibration
from cxrdx.settings import INT8_CALIBRATION_IMAGES

DEFAULT_CALIB = INT8_CALIBRATION_IMAGES  # training images for the activation ranges
BATCH = 16
MAX_OOD_VERDICTS_CHANGED = 0.05  # validation images whose OOD verdict int8 (own threshold) may flip vs fp32


class QuantizationRefused(CxrdxError):
    """The int8 model scored worse than allowed on the validation split (nothing was written)."""


@dataclass
class QuantizeConfig:
    weights: str
    data: str  # a prepared cache (cxrdx prepare) with the calibration and check splits
    calib_split: str = "train"
    check_split: str = "val"
    n_calib: int = DEFAULT_CALIB
    max_auroc_drop: float = MAX_AUROC_DROP
    max_ood_verdicts_changed: float = MAX_OOD_VERDICTS_CHANGED  # share; one image is always allowed


@dataclass
class QuantizeReport:
    path: Path  # the int8 file in the export cache
    variant: str  # int8 / int8r7
    n_calib: int
    n_check: int
    auroc_fp32: dict[str, float]  # per finding checked (validation split)
    auroc_int8: dict[str, float]
    max_abs_diff: float  # largest |p_int8 - p_fp32| (calibrated, as predicted) over images and findings
    mean_abs_diff: float
    calls_changed: float | None  # share of (image, finding) calls that differ at the stored thresholds
    seconds: float
    # the OOD score on int8 features vs fp32 features (validation split), None without a reference:
    # median and largest relative difference, median ratio - 1, the int8 threshold refitted on int8's
    # scores, and the share of verdicts that differ from fp32's with it (and with the fp32 threshold)
    ood: dict | None = None
    cpu: str = field(default_factory=isa_line)

    @property
    def mean_fp32(self) -> float:
        return float(np.mean(list(self.auroc_fp32.values())))

    @property
    def mean_int8(self) -> float:
        return float(np.mean(list(self.auroc_int8.values())))

    @property
    def drop(self) -> float:
        return self.mean_fp32 - self.mean_int8

    def summary(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out.update(mean_fp32=self.mean_fp32, mean_int8=self.mean_int8, drop=self.drop)
        return out


def quantize(config: QuantizeConfig, log: Callable[[str], None] | None = None) -> QuantizeReport:
    """Quantize, check on validation, and write the int8 export to the cache (or raise QuantizationRefused)."""
    from cxrdx.data.cache import open_cache
    from cxrdx.inference import export
    from cxrdx.model.checkpoint import load_checkpoint, read_checkpoint_meta
    from cxrdx.model.pretrained import resolve_weights

    log = log or (lambda _line: None)
    start = time.perf_counter()
    for split in (config.calib_split, config.check_split):
        if split == "test":
            raise ConfigError(
                "the test split is refused for calibration and for the check "
                "(it is what the report measures); use train and val"
            )
    if config.n_calib < 1:
        raise ConfigError(f"--calib must be at least 1, got {config.n_calib}")
    ckpt = resolve_weights(config.weights)
    meta = read_checkpoint_meta(ckpt)
    cache = open_cache(config.data)
    calib, check = cache.subset(config.calib_split), cache.subset(config.check_split)
    names = [n for n in meta.labels if n in cache.findings]
    if not names:
        raise ConfigError(
            f"{config.data}: the cache labels none of the checkpoint's findings ({', '.join(meta.labels)}); "
            "check the int8 model on a cache of the same findings"
        )
    size = meta.preprocessing.size
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(len(calib.index), min(config.n_calib, len(calib.index)), replace=False))

    sha = file_sha256(ckpt)
    fp32_path = export.cached_export_path(sha)
    if fp32_path.is_file():
        fp32 = fp32_path.read_bytes()
    else:
        log("exporting the checkpoint to ONNX ...")
        model, meta = load_checkpoint(ckpt)
        fp32 = export.export_to_cache(sha, model, meta)
    variant = int8_variant()
    log(
        f"quantizing ({variant}, per-channel QDQ) with {len(picked)} {config.calib_split}-split images of "
        f"{config.data} at {size} px ..."
    )
    prep = meta.preprocessing
    int8 = _quantize_bytes(fp32, _gray_batches(calib, picked, prep), reduce_range=variant == "int8r7")

    log(f"checking int8 against fp32 on the {len(check.index)} {config.check_split}-split images ...")
    y = check.labels_for(names)
    cols = [meta.labels.index(n) for n in names]
    everything = np.arange(len(check.index))
    calibration = resolve_calibration(meta.calibration, meta.provenance, meta.labels)
    with_features = meta.ood is not None
    (r32, f32), (r8, f8) = (
        _scores(
            make_session(data, available_threads()), _gray_batches(check, everything, prep), with_features
        )
        for data in (fp32, int8)
    )
    q32, q8 = (apply_calibration(r, calibration, meta.labels) for r in (r32, r8))
    p32, p8 = q32[:, cols], q8[:, cols]
    a32, a8 = per_finding_auroc(y, p32, names), per_finding_auroc(y, p8, names)
    checked = [n for n in names if a32[n] is not None and a8[n] is not None]
    if not checked:
        raise ConfigError(
            f"{config.data}: no finding has both positives and negatives in the {config.check_split} split, "
            "so int8 cannot be checked against fp32; use a larger validation split"
        )
    diff = np.abs(q8 - q32)
    calls = None
    if meta.thresholds:
        t = np.array([meta.thresholds.get(n, np.inf) for n in meta.labels])
        calls = float(((q8 >= t) != (q32 >= t))[:, np.isfinite(t)].mean())
    report = QuantizeReport(
        path=export.cached_export_path(sha, variant),
        variant=variant,
        n_calib=len(picked),
        n_check=len(check.index),
        auroc_fp32={n: float(a32[n]) for n in checked},
        auroc_int8={n: float(a8[n]) for n in checked},
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        calls_changed=calls,
        seconds=0.0,
        ood=None if not with_features else ood_agreement(meta.ood, f32, f8),
    )
    changed = 0.0 if report.ood is None else report.ood["verdicts_changed"]
    if changed > config.max_ood_verdicts_changed and changed * report.n_check > 1:
        raise QuantizationRefused(
            f"{ckpt}: with int8 features the out-of-distribution verdicts of {report.ood['verdicts_changed']:.1%} "
            f"of the {report.n_check} {config.check_split}-split images differ from fp32's (allowed "
            f"{config.max_ood_verdicts_changed:.0%}, with the threshold refitted on int8's scores); nothing was written: "
            "keep fp32 (the default)"
        )
    if report.drop > config.max_auroc_drop:
        raise QuantizationRefused(
            f"{ckpt}: int8 loses {report.drop:.4f} mean validation AUROC against fp32 "
            f"({report.mean_int8:.4f} vs {report.mean_fp32:.4f} over {len(checked)} findings, "
            f"{report.n_check} {config.check_split}-split images; allowed {config.max_auroc_drop}); "
            "nothing was written: keep fp32 (the default), or calibrate on more training images (--calib)"
        )
    report.seconds = time.perf_counter() - start
    atomic_write(report.path, lambda tmp: Path(tmp).write_bytes(_with_record(int8, fp32, report)))
    return report


def _gray_batches(cache, positions: np.ndarray, prep: Preprocessing) -> Iterator[np.ndarray]:
    """(B, 1, S, S) float32 gray in [0, 1]: the folded graph's input, made from the cache's squares by the
    checkpoint's recipe (for our own models at the cache's size: the squares themselves)."""
    for i in range(0, len(positions), BATCH):
        squares = cache.squares(positions[i : i + BATCH])
        yield np.stack([prep.gray_square(sq)[0] for sq in squares])


def _scores(
    session, batches: Iterator[np.ndarray], features: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(raw scores, the OOD features or None) of every batch."""
    names = [OUTPUT_NAME, FEATURES_NAME] if features else [OUTPUT_NAME]
    out = [session.run(names, {GRAY_NAME: g}) for g in batches]
    scores = np.concatenate([o[0] for o in out])
    return scores, np.concatenate([o[1] for o in out]) if features else None


def ood_agreement(ood: dict, f32: np.ndarray, f8: np.ndarray) -> dict:
    """The OOD score on int8 vs fp32 features of the same images, and the int8 threshold: fp32's, scaled by
    the median ratio of int8's scores to fp32's (a systematic shift of the scores is undone)."""
    from cxrdx.model.ood import reference

    stats = reference(ood)
    if stats is None:
        raise CheckpointError(
            "the checkpoint's out-of-distribution reference is incomplete; run `cxrdx calibrate`"
        )
    s32, s8 = stats.score(f32), stats.score(f8)
    rel = np.abs(s8 - s32) / np.maximum(np.abs(s32), 1e-12)
    out = {
        "median_rel_diff": float(np.median(rel)),
        "max_rel_diff": float(rel.max()),
        "median_ratio_minus_1": float(np.median(s8 / np.maximum(s32, 1e-12)) - 1),
        "threshold_fp32": stats.threshold,
        "threshold_int8": None,
        "verdicts_changed": 0.0,
        "verdicts_changed_fp32_threshold": 0.0,
        "n": int(len(s32)),
    }
    if stats.threshold is None or not len(s32):
        return out
    t8 = float(stats.threshold * (1 + out["median_ratio_minus_1"]))
    out["threshold_int8"] = t8
    out["verdicts_changed"] = float(np.mean((s8 <= t8) != (s32 <= stats.threshold)))
    out["verdicts_changed_fp32_threshold"] = float(
        np.mean((s8 <= stats.threshold) != (s32 <= stats.threshold))
    )
    return out


def _quantize_bytes(fp32: bytes, calib: Iterator[np.ndarray], reduce_range: bool) -> bytes:
    """ONNX Runtime static QDQ quantization of a folded graph, calibrated on ``calib`` batches."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            g = next(calib, None)
            return None if g is None else {GRAY_NAME: g}

    with tempfile.TemporaryDirectory(prefix="cxrdx-quantize-") as tmp:
        src, pre, out = (os.path.join(tmp, f"{n}.onnx") for n in ("fp32", "pre", "int8"))
        Path(src).write_bytes(norms_as_affine(fp32))
        # the tools' notes (per-weight axis notes, unused initializers) are not for the user
        logging.disable(logging.WARNING)
        ort.set_default_logger_severity(3)
        try:
            quant_pre_process(src, pre)
            quantize_static(
                pre,
                out,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's tools raise anything
            raise CxrdxError(f"ONNX Runtime could not quantize the exported model ({exc})") from exc
        finally:
            logging.disable(logging.NOTSET)
            ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
        return Path(out).read_bytes()


def norms_as_affine(model: bytes) -> bytes:
    """The graph with each BatchNormalization that does not follow a convolution written as Mul + Add.

    DenseNet's pre-activation norms (BN -> ReLU -> conv on the concatenated features) cannot be
    fused into a convolution, and ONNX Runtime has no int8 BatchNormalization: each would stay
    float between a DequantizeLinear and a QuantizeLinear, with layout transposes around it
    (63 % of the int8 network's time at 320 px). As a per-channel Mul and Add (the same
    function, to ~4e-7) they are quantized too (QLinearMul, QLinearAdd): 1.6x the int8
    network's speed on 2 cores (docs/performance.md). A norm after a convolution is left to
    ONNX Runtime, which folds it into the convolution.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    consts = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}

    def const(name: str) -> np.ndarray | None:
        """An initializer, or one the exporter shared through Identity / Constant nodes."""
        if name in consts:
            return numpy_helper.to_array(consts[name]).astype(np.float64)
        node = producer.get(name)
        if node is not None and node.op_type == "Identity":
            return const(node.input[0])
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
        return None

    def affine(n) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, shift) of a norm that can be rewritten; None to keep the node as it is."""
        if n.op_type != "BatchNormalization" or len(n.output) != 1:
            return None
        source = producer.get(n.input[0])
        if source is not None and source.op_type == "Conv":
            return None
        params = [const(k) for k in n.input[1:5]]
        if any(p is None for p in params):
            return None
        g, b, m, v = params
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        scale = g / np.sqrt(v + eps)
        return scale, b - m * scale

    nodes = []
    for i, n in enumerate(graph.node):
        ab = affine(n)
        if ab is None:
            nodes.append(n)
            continue
        name = f"{n.name or f'norm{i}'}/affine"
        for suffix, value in zip(("scale", "shift"), ab, strict=True):
            graph.initializer.append(
                numpy_helper.from_array(value.astype(np.float32).reshape(-1, 1, 1), f"{name}/{suffix}")
            )
        nodes.append(
            helper.make_node("Mul", [n.input[0], f"{name}/scale"], [f"{name}/scaled"], name=f"{name}/Mul")
        )
        nodes.append(
            helper.make_node("Add", [f"{name}/scaled", f"{name}/shift"], n.output, name=f"{name}/Add")
        )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]  # the norms' own parameters go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto.SerializeToString()


def _with_record(int8: bytes, fp32: bytes, report: QuantizeReport) -> bytes:
    """The int8 file with the fp32 export's metadata (labels, preprocessing, ...) and how it was checked."""
    import onnx

    proto = onnx.load_from_string(int8)
    record = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    record[PRECISION_KEY] = report.variant
    record[RECORD_KEY] = json.dumps(report.summary())
    del proto.metadata_props[:]
    for key, value in record.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()
