"""comparison.json as a typed, versioned record (``cxrdx.comparison/1``): ``cxrdx compare`` writes the same bytes
as before the record existed plus the ``"schema"`` line, old files (no ``"schema"``) load and write back
unchanged, a newer major version is refused in one line, and docs/metrics.md names every field.

The fixtures ``data/comparison_main_{unnamed,named}.{json,md}`` were written by
``cxrdx.evaluation.external.compare`` at commit 31c910f (main, before this record existed), on copies of
``data/metrics_v1_internal.json`` and ``data/metrics_v1_external.json`` in folders ``internal`` and ``external``
(``CASES`` below: the reports and names passed).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from testkit import run_cli

from cxrdx.errors import DataError
from cxrdx.evaluation import comparison_record as cr
from cxrdx.evaluation.comparison_record import SCHEMA, Comparison, read_comparison
from cxrdx.evaluation.metrics_record import MetricsRecord
from cxrdx.jobs import compare as job

DATA = Path(__file__).parent / "data"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
CASES = {  # fixture -> (reports relative to the folder holding the copies, --names)
    "unnamed": (["internal", "external"], []),
    "named": (["internal", "external", "internal/metrics.json"], ["internal", "external", "again"]),
}
SCHEMA_LINE = '  "schema": "cxrdx.comparison/1",\n'


def _copies(root: Path) -> Path:
    for name in ("internal", "external"):
        (root / name).mkdir(parents=True)
        shutil.copy(DATA / f"metrics_v1_{name}.json", root / name / "metrics.json")
    return root


def _old(case: str) -> str:
    return (DATA / f"comparison_main_{case}.json").read_text()


@pytest.mark.parametrize("case", CASES)
def test_compare_writes_mains_bytes_plus_the_schema_line(tmp_path, capsys, case):
    reports, names = CASES[case]
    root = _copies(tmp_path / "in")
    argv = ["compare", "--reports", *[root / r for r in reports], "--out", tmp_path / "out"]
    rc, out, _ = run_cli(capsys, argv + (["--names", *names] if names else []))
    assert rc == 0
    text = (tmp_path / "out" / "comparison.json").read_text()
    assert text.startswith("{\n" + SCHEMA_LINE)  # the schema first
    assert text.replace(SCHEMA_LINE, "", 1) == _old(case)  # everything else byte for byte
    md = (DATA / f"comparison_main_{case}.md").read_text()
    assert (tmp_path / "out" / "comparison.md").read_text() == md
    assert out == md + "\n" + f"comparison written to {tmp_path / 'out'}\n"  # what the CLI printed before


def test_the_job_returns_the_record_it_wrote(tmp_path):
    root = _copies(tmp_path / "in")
    result = job.run(
        job.Config(reports=[str(root / "internal"), str(root / "external")], out=tmp_path / "out")
    )
    assert isinstance(result.comparison, Comparison)
    assert result.comparison.to_json() == json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert read_comparison(tmp_path / "out") == read_comparison(tmp_path / "out" / "comparison.json")
    assert read_comparison(tmp_path / "out") == result.comparison


def test_the_numbers_are_the_evaluations_own():
    """Drops and means recomputed here from the two metrics.json files with the statistics module."""
    internal = json.loads((DATA / "metrics_v1_internal.json").read_text())
    external = json.loads((DATA / "metrics_v1_external.json").read_text())
    record = Comparison.from_json(json.loads(_old("unnamed")))
    a, b = record.datasets
    assert (
        record.internal == a == internal["dataset"]["description"] and b == external["dataset"]["description"]
    )
    both = [
        f
        for f, c in external["classes"].items()
        if c["auroc"] is not None and internal["classes"][f]["auroc"]
    ]
    for f in both:
        cell = record.findings[f][b]
        assert cell.drop == pytest.approx(
            internal["classes"][f]["auroc"] - external["classes"][f]["auroc"], abs=1e-6
        )
        assert cell.n_labelled == external["classes"][f]["n"] and tuple(cell.auroc_ci) == tuple(
            external["classes"][f]["auroc_ci"]
        )
    summary = record.drop[b]
    assert summary.findings == len(both) == 2
    assert summary.mean_drop == pytest.approx(statistics.mean(record.findings[f][b].drop for f in both))
    assert summary.mean_internal == pytest.approx(
        statistics.mean(internal["classes"][f]["auroc"] for f in both)
    )
    mass = record.findings["Mass"][b]
    assert mass.auroc is None and mass.skipped == external["skipped"]["Mass"] and mass.n_labelled is None


@pytest.mark.parametrize("case", CASES)
def test_a_file_without_schema_loads_and_writes_back_unchanged(case):
    old = json.loads(_old(case))
    assert "schema" not in old and cr.schema_version(old.get("schema")) == 1
    record = Comparison.from_json(old)
    assert record.extra == {} and all(
        c.extra == {} for row in record.findings.values() for c in row.values()
    )  # every old key is a declared field
    again = record.to_json()
    assert again.pop("schema") == SCHEMA == "cxrdx.comparison/1"
    assert json.dumps(again, indent=2) == _old(case)  # same keys, values and order


def test_a_newer_major_version_is_refused_in_one_line_and_a_newer_minor_one_kept(tmp_path):
    newer = {"schema": "cxrdx.comparison/2", **json.loads(_old("unnamed"))}
    (tmp_path / "comparison.json").write_text(json.dumps(newer))
    with pytest.raises(DataError) as caught:
        read_comparison(tmp_path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert re.search(
        r"comparison.json: written by a newer cxrdx \(schema cxrdx.comparison/2\).*Upgrade", message
    )
    with pytest.raises(DataError, match="not a cxrdx comparison file"):
        Comparison.from_json({"schema": "cxrdx.metrics/2"})
    minor = json.loads(_old("unnamed"))
    minor["schema"] = "cxrdx.comparison/1.1"
    minor["new_part"] = {"a": 1}
    first = next(iter(minor["findings"].values()))
    next(iter(first.values()))["new_figure"] = 0.5
    record = Comparison.from_json(minor)
    again = record.to_json()
    assert again["new_part"] == {"a": 1} and next(iter(next(iter(again["findings"].values())).values()))[
        "new_figure"
    ] == pytest.approx(0.5)
    assert again["schema"] == SCHEMA


def test_a_wrong_shape_names_the_key_and_the_command_to_rerun():
    bad = json.loads(_old("unnamed"))
    bad["drop"] = ["x"]
    with pytest.raises(DataError, match=r"c.json: drop: expected an object; re-run `cxrdx compare`"):
        Comparison.from_json(bad, "c.json")
    bad = json.loads(_old("unnamed"))
    bad["findings"]["Mass"] = []
    with pytest.raises(DataError, match=r"c.json: findings.Mass: expected an object; re-run `cxrdx compare`"):
        Comparison.from_json(bad, "c.json")
    with pytest.raises(DataError, match=r"m.json: classes: expected an object; re-run `cxrdx evaluate`"):
        MetricsRecord.from_json({"classes": []}, "m.json")  # metrics.json's errors still name evaluate
