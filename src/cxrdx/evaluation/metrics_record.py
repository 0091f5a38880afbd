"""THE metrics record: what ``metrics.json`` holds, typed and versioned (``docs/metrics.md``).

``cxrdx evaluate`` builds a :class:`MetricsRecord` and writes it with :func:`write_metrics`;
every reader (the report, the summary printed by the CLI, ``cxrdx compare``, the plots)
reads attributes, never string keys, so a renamed field fails when the code is checked,
not at run time on one branch.

Versions (``"schema"`` in the file):

- **1**: the files cxrdx wrote before the key existed (no ``"schema"``). Same keys as 2;
  they load unchanged.
- **2** (``cxrdx.metrics/2``): version 1 plus the ``"schema"`` key. A minor version
  (``cxrdx.metrics/2.1``) may add keys: they are kept (``extra``) and written back.
- A newer major version is refused with a :class:`DataError` that says to upgrade cxrdx.

The JSON keys are the field names. A field marked ``absent`` is left out of the file when
it is ``None`` (the old writer left those keys out rather than writing ``null``); every
other field is always written (``null`` where undefined). Keys a record does not declare
are kept in its ``extra`` and written back, so reading and writing a file loses nothing.
Standard library only: the CLI's ``--help`` may import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cxrdx.data.origin import Origin
from cxrdx.errors import DataError

SCHEMA_NAME = "cxrdx.metrics"
SCHEMA_VERSION = 2  # the major version this cxrdx writes and the newest it reads
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"


def absent(default: Any = None) -> Any:
    """A field whose key is left out of the file when it is None (as the version 1 writer did)."""
    return field(default=default, metadata={"absent": True})


@dataclass(frozen=True)
class Record:
    """Base of every part of the record: ``to_json`` / ``from_json`` by the fields' names and types.

    ``REMEDY``: what a reading error tells the user to do (a subclass for another file sets its own;
    ``cxrdx.evaluation.comparison_record`` does)."""

    REMEDY = "re-run `cxrdx evaluate`"

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.metadata.get("absent")):
                continue
            out[f.name] = _dump(value)
        for k, v in self.extra.items():
            out.setdefault(k, _dump(v))
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.json") -> typing.Self:
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: expected an object, got {type(data).__name__}; {cls.REMEDY}")
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name != "extra" and f.name in data:
                kwargs[f.name] = _load(hints[f.name], data[f.name], f"{where}: {f.name}", cls.REMEDY)
        extra = {k: v for k, v in data.items() if k not in _declared(cls)}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:  # a required field missing
            raise DataError(f"{where}: {exc}; {cls.REMEDY}") from None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _declared(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _is_record(tp: Any) -> bool:
    """A part read and written by its own ``from_json`` / ``to_json``: a :class:`Record`, or a record type
    defined in a lower layer (``cxrdx.data.origin.Origin``)."""
    return isinstance(tp, type) and (
        issubclass(tp, Record)
        or (dataclasses.is_dataclass(tp) and hasattr(tp, "from_json") and hasattr(tp, "to_json"))
    )


def _dump(value: Any) -> Any:
    if _is_record(type(value)):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


def _load(tp: Any, value: Any, where: str, remedy: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``: records, ``dict[str, X]``, ``tuple[X, ...]``, unions, scalars."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # pick the member that fits the JSON shape
        options = [a for a in args if a is not type(None)]
        for a in options:
            base = typing.get_origin(a) or a
            fits = (
                (isinstance(value, Mapping) and (base is dict or _is_record(base)))
                or (isinstance(value, list) and base in (tuple, list))
                or (not isinstance(value, Mapping | list) and base not in (dict, tuple, list))
            )
            if fits:
                return _load(a, value, where, remedy)
        raise DataError(f"{where}: unexpected {type(value).__name__}; {remedy}")
    if _is_record(tp):
        return tp.from_json(value, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise DataError(f"{where}: expected an object; {remedy}")
        return {k: _load(args[1], v, f"{where}.{k}", remedy) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DataError(f"{where}: expected a list; {remedy}")
        return tuple(_load(args[0], v, where, remedy) for v in value)
    return value


# ---- the parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtThreshold(Record):
    """Calls at a threshold (``p >= threshold``) against the labels; ratios None where 0/0."""

    tp: int | None = None
    fp: int | None = None
    fn: int | None = None
    tn: int | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    ppv: float | None = None
    npv: float | None = None
    f1: float | None = None
    threshold: float | None = absent()  # present in the validation set's rows (``val_at_threshold``)


@dataclass(frozen=True)
class FindingMetrics(Record):
    """One finding on the test data, over its labelled images (None = undefined)."""

    n: int = 0  # labelled images
    n_pos: int = 0
    n_neg: int = 0
    prevalence: float | None = None
    auroc: float | None = None  # None: no positives or no negatives
    auroc_ci: tuple[float | None, ...] | None = None  # [low, high], patient bootstrap
    n_boot_valid: int = 0  # bootstrap resamples with both classes
    average_precision: float | None = None
    ece: float | None = None  # after calibration
    chexnet_auroc: float | None = None  # Rajpurkar 2017, a random-split reference
    threshold: float | None = None  # chosen on validation data
    at_threshold: AtThreshold | None = absent()  # the test calls at that threshold
    ece_uncalibrated: float | None = None  # raw scores
    mean_predicted: float | None = None
    mean_predicted_uncalibrated: float | None = None


@dataclass(frozen=True)
class ModelCard(Record):
    """What the model was trained on (``cxrdx.model.card.training_card``; images, split, epochs... in extra)."""

    dataset: str | None = absent()
    kind: str = "unknown"  # phantom | real | unknown


@dataclass(frozen=True)
class ModelInfo(Record):
    weights: str = ""
    architecture: str = ""
    ensemble: tuple[str, ...] = ()  # every checkpoint averaged, the first is ``weights``
    tta: bool = False
    uncertainty: str | None = None  # what the ``_spread`` columns of predictions.csv are
    card: ModelCard | None = absent()
    evaluated_before: bool | None = absent()  # the checkpoint already stored an evaluation


@dataclass(frozen=True)
class LabelPolicy(Record):
    """How the labels were read (the evaluate options of the same names)."""

    views: str | None = None
    uncertain: str | None = None
    blank: str | None = None
    dataset: str | None = None


@dataclass(frozen=True)
class DatasetInfo(Record):
    description: str = ""
    n_images: int = 0
    n_patients: int = 0
    n_unreadable: int = 0
    origin: Origin | None = None  # cxrdx.data.origin: THE type, shared with cache.json and training
    label_policy: LabelPolicy | None = absent()


@dataclass(frozen=True)
class Labelled(Record):
    """A finding's labels in the test data."""

    n_labelled: int = 0
    n_pos: int = 0
    prevalence: float | None = None


@dataclass(frozen=True)
class Thresholds(Record):
    """How the thresholds were chosen (on validation data only), or ``note``: why none were."""

    values: dict[str, float | None] | None = None  # None: not chosen
    method: str | None = None  # youden | sensitivity>=T
    method_text: str | None = absent()
    chosen_on: str | None = absent()
    n_val_images: int | None = absent()
    undefined: tuple[str, ...] | None = absent()  # no positives or no negatives in validation
    split: str | None = absent()
    tta: bool | None = absent()
    calibration: str | None = absent()  # the scale they are on
    positives: dict[str, int] | None = absent()
    negatives: dict[str, int] | None = absent()
    val_at_threshold: dict[str, AtThreshold] | None = absent()
    chosen_by: str | None = absent()
    note: str | None = absent()
    written_to: str | None = absent()  # the checkpoint they were stored in


@dataclass(frozen=True)
class Bootstrap(Record):
    unit: str = "patient"
    n_boot: int = 0
    level: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class CalibrationRow(Record):
    prevalence: float | None = None
    mean_predicted_before: float | None = None
    mean_predicted_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None


@dataclass(frozen=True)
class CalibrationSummary(Record):
    """Calibration-in-the-large and ECE per finding, before (raw scores) and after calibration."""

    bins: int = 10
    binning: str = ""
    method: str | tuple[str, ...] = "none"  # one per checkpoint of an ensemble
    fitted_here: bool = False
    per_finding_method: dict[str, str] = field(default_factory=dict)  # "none": a score, not fitted
    fitted_on: dict[str, Any] | None = None
    before: str = ""
    per_finding: dict[str, CalibrationRow] = field(default_factory=dict)
    mean_ece_before: float | None = None
    mean_ece_after: float | None = None
    mean_abs_gap_before: float | None = None
    mean_abs_gap_after: float | None = None

    @property
    def method_text(self) -> str:
        return self.method if isinstance(self.method, str) else ", ".join(self.method)


@dataclass(frozen=True)
class ChexnetReference(Record):
    label: str = ""
    auroc: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ShiftRow(Record):
    """A threshold moved between datasets: sensitivity and specificity on the source, the target, the change."""

    threshold: float | None = None
    sensitivity_source: float | None = None
    sensitivity_target: float | None = None
    sensitivity_shift: float | None = None
    specificity_source: float | None = None
    specificity_target: float | None = None
    specificity_shift: float | None = None


@dataclass(frozen=True)
class SourceThresholds(Record):
    """No validation data here: the checkpoint's own thresholds, applied to this dataset."""

    thresholds: dict[str, float | None] = field(default_factory=dict)
    method: str | None = None
    chosen_on: str | None = None
    shift: dict[str, ShiftRow] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsRecord(Record):
    """Everything one evaluation measured: ``metrics.json``."""

    model: ModelInfo | None = absent()
    dataset: DatasetInfo | None = absent()
    classes: dict[str, FindingMetrics] = field(
        default_factory=dict
    )  # the evaluated findings, in output order
    mean_auroc: float | None = None  # over the defined findings
    mean_auroc_ci: tuple[float | None, ...] | None = None
    mean_auroc_classes: tuple[str, ...] = ()
    undefined_classes: tuple[str, ...] = ()
    chexnet_mean_same_classes: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # outputs this dataset does not label -> why
    labelled: dict[str, Labelled] = field(default_factory=dict)
    thresholds: Thresholds | None = absent()
    bootstrap: Bootstrap | None = absent()
    calibration: CalibrationSummary | None = absent()
    chexnet_reference: ChexnetReference | None = absent()
    notes: tuple[str, ...] = ()
    threshold_shift: dict[str, ShiftRow] | None = absent()  # validation -> test, when chosen here
    source_thresholds: SourceThresholds | None = absent()
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # numbers that mean nothing, and why
    plots: tuple[str, ...] = ()

    @property
    def data_kind(self) -> str:
        """The test data's kind: phantom | real | unknown (not recorded)."""
        origin = self.dataset.origin if self.dataset else None
        return origin.kind if origin else "unknown"

    @property
    def model_kind(self) -> str:
        """What the model was trained on: phantom | real | unknown."""
        card = self.model.card if self.model else None
        return card.kind if card else "unknown"

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **super().to_json()}

    def __getitem__(self, key: str) -> Any:
        """``metrics["classes"]``: the file's dict, for code written when ``evaluate`` returned one (deprecated)."""
        warnings.warn(
            f'metrics["{key}"] is deprecated: evaluate returns a MetricsRecord; read its attributes '
            f"(metrics.{key}), or metrics.to_json() for the dict metrics.json holds",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.to_json()[key]

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.json") -> MetricsRecord:
        if isinstance(data, Mapping):
            schema_version(data.get("schema"), where)
            data = {k: v for k, v in data.items() if k != "schema"}
        return super().from_json(data, where)


def schema_version(schema: Any, where: str = "metrics.json") -> int:
    """The major version of a file's ``"schema"`` (None: version 1); a newer or foreign one is refused."""
    return check_schema(schema, where, SCHEMA_NAME, SCHEMA_VERSION, "metrics")


def check_schema(schema: Any, where: str, name: str, newest: int, what: str) -> int:
    """The major version of a ``"schema"`` value ``NAME/MAJOR[.MINOR]`` (None: version 1); one not named
    ``name``, or newer than ``newest``, is refused with a one-line :class:`DataError`."""
    if schema is None:
        return 1
    found, _, version = str(schema).partition("/")
    major = version.split(".")[0]
    if found != name or not major.isdigit():
        raise DataError(f"{where}: schema {schema!r} is not a cxrdx {what} file ({name}/{newest} expected)")
    if int(major) > newest:
        raise DataError(
            f"{where}: written by a newer cxrdx (schema {schema}); this cxrdx reads up to {name}/{newest}. "
            "Upgrade cxrdx (pip install -U cxrdx) to read it."
        )
    return int(major)


def read_metrics(path: str | os.PathLike) -> MetricsRecord:
    """An evaluation's ``metrics.json`` (or the folder holding it)."""
    p = Path(path)
    p = p / "metrics.json" if p.is_dir() else p
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{p}: cannot read an evaluation's metrics.json ({exc}); run `cxrdx evaluate`"
        ) from None
    return MetricsRecord.from_json(data, str(p))


def write_metrics(path: str | os.PathLike, record: MetricsRecord) -> Path:
    """``metrics.json`` (atomic; no NaN: undefined values are null)."""
    from cxrdx.files import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(record.to_json(), indent=2, allow_nan=False) + "\n")
    return path
