"""metrics.json as a typed, versioned record: the files main wrote before the version key (schema 1) load and
write back unchanged, today's writer keeps every key and value of the old one (plus "schema"), a newer major
version is refused with a clear error, and docs/metrics.md names every field.

The two fixtures in ``data/`` were written by ``cxrdx.evaluation.evaluate.evaluate`` at commit e461b9f (before
this record existed), from ``_writer_inputs`` below with the root folder ``/tmp/ms/v1``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from pathlib import Path

import pytest
from testkit import run_cli

from cxrdx.errors import CxrdxError, DataError
from cxrdx.evaluation import metrics_record as mr
from cxrdx.evaluation.metrics_record import SCHEMA, MetricsRecord, read_metrics, schema_version

DATA = Path(__file__).parent / "data"
FIXTURES = ("internal", "external")
FIXTURE_ROOT = "/tmp/ms/v1"  # where the fixtures were written
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _v1(name: str) -> dict:
    return json.loads((DATA / f"metrics_v1_{name}.json").read_text())


@pytest.mark.parametrize("name", FIXTURES)
def test_a_version_1_file_loads_and_writes_back_unchanged(name):
    old = _v1(name)
    assert "schema" not in old and schema_version(old.get("schema")) == 1
    record = MetricsRecord.from_json(old)
    assert record.extra == {}  # every key of the old file is a declared field
    again = record.to_json()
    assert again.pop("schema") == SCHEMA == "cxrdx.metrics/2"
    assert again == old and list(again) == list(old)  # same keys, values and order
    json.dumps(again, allow_nan=False)


def test_a_version_1_file_reads_as_attributes():
    record = MetricsRecord.from_json(_v1("internal"))
    c = record.classes["Atelectasis"]
    raw = _v1("internal")["classes"]["Atelectasis"]
    assert isinstance(c, mr.FindingMetrics) and isinstance(c.at_threshold, mr.AtThreshold)
    assert c.auroc == raw["auroc"] and list(c.auroc_ci) == raw["auroc_ci"]
    assert c.at_threshold.tp == raw["at_threshold"]["tp"] and c.at_threshold.threshold is None
    assert record.thresholds.val_at_threshold["Atelectasis"].threshold == pytest.approx(raw["threshold"])
    assert record.calibration.per_finding["Atelectasis"].ece_after == pytest.approx(raw["ece"], abs=1e-6)
    assert record.dataset.label_policy.views == "frontal" and record.data_kind == "unknown"
    assert record.flags["Fibrosis"][0].startswith("AUROC CI")
    external = MetricsRecord.from_json(_v1("external"))
    assert external.threshold_shift is None and isinstance(external.source_thresholds, mr.SourceThresholds)
    assert external.source_thresholds.shift["Effusion"].sensitivity_shift == pytest.approx(0.2)
    assert set(external.classes) == {"Cardiomegaly", "Effusion"} and "Mass" in external.skipped


def _same(new, old, where="") -> None:
    """Equal keys everywhere; numbers equal to 1e-6; everything else exactly."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), f"{where}: keys {set(new) ^ set(old)}"
        for k in old:
            _same(new[k], old[k], f"{where}/{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(old, bool):
        assert isinstance(new, int | float) and math.isclose(new, old, rel_tol=1e-6, abs_tol=1e-6), where
    else:
        assert new == old, where


def _writer_inputs(root: Path) -> None:
    """The two evaluations the fixtures hold: thresholds, --tta and --calibrate into a new checkpoint, then
    that checkpoint on a dataset that labels two findings, with its source thresholds moved there."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from test_evaluate_end_to_end import _tiny_cache, _tiny_checkpoint
    from test_partial_labels import _partial_cache

    from cxrdx.evaluation.evaluate import EvaluateConfig, evaluate

    src = _tiny_checkpoint(root / "tiny.safetensors")
    cache = _tiny_cache(root / "cache")
    common = {"n_boot": 20, "progress": False, "device": "cpu"}
    internal = evaluate(
        EvaluateConfig(
            weights=str(src),
            data=str(cache),
            out=str(root / "internal"),
            tta=True,
            calibrate=True,
            out_weights=str(root / "with.safetensors"),
            **common,
        )
    )
    b = _partial_cache(root / "b", ["Cardiomegaly", "Effusion"], seed=5, uncertain_every=4)
    evaluate(
        EvaluateConfig(
            weights=str(root / "with.safetensors"),
            data=str(b),
            split="val",
            val_split="none",
            out=str(root / "external"),
            **common,
        )
    )
    assert isinstance(internal, MetricsRecord)


def test_the_writer_keeps_every_key_and_value_of_the_version_1_writer(tmp_path):
    _writer_inputs(tmp_path)
    for name in FIXTURES:
        text = (tmp_path / name / "metrics.json").read_text()
        new = json.loads(text.replace(str(tmp_path), FIXTURE_ROOT))
        assert new.pop("schema") == SCHEMA
        _same(new, _v1(name), name)
        assert list(new) == list(_v1(name))  # and in the same order
        assert read_metrics(tmp_path / name).to_json() == json.loads(text)  # the folder or the file


def test_a_newer_major_version_is_refused_and_a_newer_minor_one_kept():
    newer = {**_v1("external"), "schema": "cxrdx.metrics/3"}
    with pytest.raises(
        DataError, match=r"x\.json: written by a newer cxrdx \(schema cxrdx.metrics/3\).*Upgrade"
    ):
        MetricsRecord.from_json(newer, "x.json")
    with pytest.raises(DataError, match="not a cxrdx metrics file"):
        MetricsRecord.from_json({"schema": "other/1"})
    minor = json.loads(json.dumps(_v1("external")))
    minor["schema"] = "cxrdx.metrics/2.1"
    minor["new_part"] = {"a": 1}
    minor["classes"]["Effusion"]["new_figure"] = 0.5
    record = MetricsRecord.from_json(minor)
    assert record.extra == {"new_part": {"a": 1}} and record.classes["Effusion"].extra == {"new_figure": 0.5}
    again = record.to_json()
    assert again["new_part"] == {"a": 1} and again["classes"]["Effusion"]["new_figure"] == 0.5
    assert again["schema"] == SCHEMA


def test_a_wrong_shape_is_a_data_error_naming_the_key():
    bad = _v1("external")
    bad["classes"] = ["Effusion"]
    with pytest.raises(CxrdxError, match="m.json: classes: expected an object"):
        MetricsRecord.from_json(bad, "m.json")
    bad = _v1("external")
    bad["thresholds"] = ["youden"]
    with pytest.raises(DataError, match="m.json: thresholds: unexpected list"):
        MetricsRecord.from_json(bad, "m.json")
    bad = _v1("external")
    bad["classes"]["Effusion"]["auroc_ci"] = 0.5
    with pytest.raises(DataError, match=r"m.json: classes.Effusion: auroc_ci: unexpected float"):
        MetricsRecord.from_json(bad, "m.json")


def test_compare_refuses_a_newer_file_in_one_line(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(_v1("internal")))
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({**_v1("external"), "schema": "cxrdx.metrics/9"}))
    rc, _, err = run_cli(
        capsys, ["compare", "--reports", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "c"]
    )
    assert rc == 2 and "newer cxrdx (schema cxrdx.metrics/9)" in err and len(err.strip().splitlines()) == 1


def test_compare_reads_version_1_files(tmp_path, capsys):
    for name in FIXTURES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_v1(name)))
    rc, out, _ = run_cli(
        capsys,
        ["compare", "--reports", tmp_path / "internal", tmp_path / "external", "--out", tmp_path / "c"],
    )
    assert rc == 0
    result = json.loads((tmp_path / "c" / "comparison.json").read_text())
    internal, external = _v1("internal")["classes"], _v1("external")["classes"]
    row = result["findings"]["Effusion"][result["datasets"][1]]
    assert row["drop"] == pytest.approx(
        internal["Effusion"]["auroc"] - external["Effusion"]["auroc"], abs=1e-6
    )


def _records() -> list[type]:
    """Every part: the Records, and the record types of lower layers the file nests (Origin, cxrdx.data.origin)."""
    return [v for v in vars(mr).values() if mr._is_record(v) and v is not mr.Record]


def test_docs_describe_every_field_of_every_part():
    """metrics.json's parts and comparison.json's (cxrdx.evaluation.comparison_record), both in docs/metrics.md."""
    from cxrdx.evaluation import comparison_record as cr

    text = DOCS.read_text()
    for cls in [*_records(), cr.Comparison, cr.DatasetAuroc, cr.DropSummary]:
        header = f"\n### `{cls.__name__}`"
        assert header in text, f"docs/metrics.md has no section for {cls.__name__}"
        section = text.split(header, 1)[1].split("\n### ", 1)[0]
        for f in dataclasses.fields(cls):
            if f.name != "extra":
                assert re.search(rf"\| `{f.name}` \|", section), f"docs/metrics.md: {cls.__name__}.{f.name}"
    assert SCHEMA in text and cr.SCHEMA in text


def test_every_field_type_is_one_the_reader_understands():
    """The reader knows records, dict[str, X], tuple[X, ...], unions with None and scalars; nothing else."""
    for cls in _records():
        for name, tp in typing.get_type_hints(cls).items():
            for part in [tp, *typing.get_args(tp)]:
                origin = typing.get_origin(part)
                if origin is tuple:
                    assert typing.get_args(part)[1:] == (...,), f"{cls.__name__}.{name}"
                assert origin is not list, (
                    f"{cls.__name__}.{name}: a list field (use tuple: records are frozen)"
                )


def test_old_dict_lookups_still_work_with_a_deprecation_warning():
    record = MetricsRecord.from_json(_v1("external"))
    with pytest.warns(DeprecationWarning, match=r'metrics\["classes"\] is deprecated.*metrics.classes'):
        assert record["classes"]["Effusion"]["auroc"] == _v1("external")["classes"]["Effusion"]["auroc"]


def test_no_cxrdx_code_reads_the_metrics_by_string_key():
    """Readers use attributes, so a renamed field is an AttributeError everywhere, not a KeyError on one branch."""
    root = Path(__file__).resolve().parents[2]
    lookup = re.compile(r"""\bmetrics(\.get\(|\[["'])""")
    found = [
        f"{p.relative_to(root)}:{i}"
        for folder in ("src", "benchmarks", "scripts")
        for p in sorted((root / folder).rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if lookup.search(line) and p.name != "metrics_record.py"  # its deprecated __getitem__ names them
    ]
    assert found == []
