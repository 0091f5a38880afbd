"""`cxrdx listen` beside a real PACS: Debian's Orthanc, started here with a temporary config on loopback ports.

Round trip: images pushed to Orthanc are routed to the node by a Lua OnStoredInstance +
SendToModality; the node's SR and Grad-CAM secondary captures come back into the same
study, found through Orthanc's REST API. Load and faults: 200 instances over 4
concurrent associations; the node SIGKILLed mid-stream and restarted; a truncated data
set sent over the network. Skips (with the reason) where Orthanc is not installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from conftest import SHARED_DATA, free_port
from node_kit import (
    DCMTK_ECHOSCU,
    ORTHANC_BIN,
    TINY_POSITIVE,
    Listener,
    Orthanc,
    alive,
    phantom_dicom,
    store,
    tiny_checkpoint,
    wait_for,
    write_phantoms,
)
from results_kit import dciodvfy

pytestmark = pytest.mark.skipif(
    ORTHANC_BIN is None,
    reason="Orthanc is not installed (Debian `orthanc`; `make test` installs it with apt)",
)
SIIM = SHARED_DATA / "dicom" / "siim_pneumothorax_sample.dcm"
DCMTK_STORESCU = "/usr/bin/storescu" if Path("/usr/bin/storescu").exists() else None


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("node")


@pytest.fixture(scope="module")
def ckpt(work) -> Path:
    return tiny_checkpoint(work / "tiny.safetensors")


@pytest.fixture(scope="module")
def node_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(work, node_port):
    (work / "orthanc").mkdir()
    server = Orthanc(work / "orthanc", node_port=node_port, route=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def listener(work, ckpt, orthanc, node_port):
    node = Listener(ckpt, orthanc.destination, work / "spool", node_port)
    yield node
    node.stop()


def results_by_study(orthanc: Orthanc) -> dict[str, Counter]:
    """StudyInstanceUID -> Counter of result instances by modality (SR, SEG, OT) in it, from two REST calls."""
    all_series = orthanc.get("/series?expand")  # before the studies: a study arriving meanwhile is then known
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in orthanc.get("/studies?expand")}
    out: dict[str, Counter] = {}
    for series in all_series:
        modality = series["MainDicomTags"].get("Modality", "")
        if modality in ("SR", "SEG", "OT") and series["ParentStudy"] in studies:
            out.setdefault(studies[series["ParentStudy"]], Counter())[modality] += len(series["Instances"])
    return out


def push_to_orthanc(orthanc: Orthanc, files: list[Path]) -> None:
    """The modality: DCMTK's storescu where it is installed (else pynetdicom)."""
    if DCMTK_STORESCU:
        cmd = [DCMTK_STORESCU, "-aec", orthanc.aet, "-aet", "MODALITY", "127.0.0.1", str(orthanc.dicom_port)]
        # storescu proposes uncompressed syntaxes unless told; the SIIM file is JPEG Baseline
        for f in files:
            ts = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
            opt = ["-xy"] if ts == pydicom.uid.JPEGBaseline8Bit else []
            subprocess.run([*cmd[:1], *opt, *cmd[1:], str(f)], check=True, capture_output=True, timeout=60)
    else:
        assert store(orthanc.dicom_port, files, orthanc.aet) == [0] * len(files)


def _items(ds) -> list:
    out = []
    for item in ds.get("ContentSequence", []):
        out += [item, *_items(item)]
    return out


def content_of(sr) -> tuple[set[str], list[str]]:
    """Every code meaning and every text value anywhere in an SR's content tree."""
    meanings: set[str] = set()
    texts: list[str] = []

    def walk(items) -> None:
        for item in items:
            for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
                for code in item.get(key, []):
                    meanings.add(str(code.CodeMeaning))
            if "TextValue" in item:
                texts.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return meanings, texts


def test_round_trip_through_orthanc(orthanc, listener, work):
    assert listener.proc.poll() is None
    if DCMTK_ECHOSCU:  # DCMTK's echoscu against the node (and pynetdicom's in the listener fixture)
        subprocess.run(
            [DCMTK_ECHOSCU, "-aec", "CXRDX", "127.0.0.1", str(listener.port)], check=True, timeout=30
        )
    files = write_phantoms(work / "round", 2)
    lateral = work / "round" / "lateral.dcm"
    phantom_dicom(900, view="LL").save_as(lateral, enforce_file_format=True)
    sources = list(files)
    if SIIM.is_file():
        shutil.copy(SIIM, work / "round" / "siim.dcm")
        sources.append(work / "round" / "siim.dcm")
    push_to_orthanc(orthanc, [*sources, lateral])
    headers = {
        str(h.StudyInstanceUID): h for h in (pydicom.dcmread(f, stop_before_pixels=True) for f in sources)
    }

    def arrived():
        got = results_by_study(orthanc)
        return got if all(got.get(s, {}).get("SR") and got.get(s, {}).get("SEG") for s in headers) else None

    got = wait_for(arrived, 90, "the SR and SEG of each routed image in Orthanc")
    lateral_study = str(pydicom.dcmread(lateral, stop_before_pixels=True).StudyInstanceUID)
    wait_for(lambda: "lateral view (LL)" in listener.text(), 30, "the node to log the lateral")
    assert lateral_study not in results_by_study(orthanc), "a lateral view is not processed"
    for study, source in headers.items():
        assert got[study] == Counter({"SR": 1, "SEG": 1}), (
            "one SR and one heatmap SEG per image (no SC asked)"
        )
        instances = orthanc.post(
            "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}, "Expand": False}
        )
        objects = [pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in instances]
        sr = next(o for o in objects if o.Modality == "SR")
        seg = next(o for o in objects if o.Modality == "SEG")
        for obj in (sr, seg):
            assert obj.StudyInstanceUID == source.StudyInstanceUID
            assert obj.PatientID == source.PatientID
            assert obj.SeriesInstanceUID != source.SeriesInstanceUID
        assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
        meanings, texts = content_of(sr)
        assert {TINY_POSITIVE, "Present", "Absent", "Pneumothorax"} <= meanings
        assert any("RESEARCH USE ONLY" in t for t in texts)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert seg.SegmentationType == "FRACTIONAL" and seg.Manufacturer == "cxrdx"
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        assert TINY_POSITIVE in {
            str(s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) for s in seg.SegmentSequence
        }
        refs = [r.ReferencedSOPInstanceUID for i in _items(sr) for r in i.get("ReferencedSOPSequence", [])]
        assert seg.SOPInstanceUID in refs  # the SR points at the SEG's segments
        path = work / f"seg-{study}.dcm"
        path.write_bytes(
            orthanc.file(next(i for i, o in zip(instances, objects, strict=True) if o.Modality == "SEG"))
        )
        assert dciodvfy(path) == []
    if not SIIM.is_file():
        pytest.skip(f"phantoms done; the real SIIM DICOM {SIIM} is absent")


def test_truncated_data_set_over_the_network_is_refused(listener, orthanc, work, monkeypatch):
    from pynetdicom import AE, _config

    ds = phantom_dicom(950)
    full = io.BytesIO()
    ds.save_as(full, enforce_file_format=True)
    cut = work / "cut.dcm"
    cut.write_bytes(full.getvalue()[:-2000])
    garbage = work / "garbage.dcm"
    garbage.write_bytes(full.getvalue()[:400] + b"\xfe\xff\x00\xe0" * 300)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes go out as they are
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CXRDX")
    assert assoc.is_established
    statuses = [assoc.send_c_store(cut).get("Status"), assoc.send_c_store(garbage).get("Status")]
    if assoc.is_established:
        assoc.release()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    assert all(s is None or s >= 0xA000 for s in statuses), f"refused, not acknowledged: {statuses}"
    assert "refused (0xC000)" in listener.text()
    assert listener.proc.poll() is None, "the node keeps running"
    good = phantom_dicom(951)
    assert store(listener.port, [good], "CXRDX") == [0]
    wait_for(
        lambda: results_by_study(orthanc).get(str(good.StudyInstanceUID)), 60, "the next image's results"
    )
    assert str(ds.StudyInstanceUID) not in results_by_study(orthanc)


def test_200_instances_over_4_associations(listener, orthanc):
    batches = [[phantom_dicom(1000 + 50 * k + i) for i in range(50)] for k in range(4)]
    statuses: list[list] = [[] for _ in batches]
    threads = [
        threading.Thread(target=lambda k=k: statuses[k].extend(store(listener.port, batches[k], "CXRDX")))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s == [0] * 50 for s in statuses), "every instance acknowledged"
    studies = {str(ds.StudyInstanceUID) for b in batches for ds in b}

    def done():
        got = results_by_study(orthanc)
        return got if all(got.get(s, {}).get("SR") and got.get(s, {}).get("SEG") for s in studies) else None

    got = wait_for(done, 240, "results of all 200 instances in Orthanc", interval=1.0)
    assert all(got[s] == Counter({"SR": 1, "SEG": 1}) for s in studies), "none lost, none duplicated"


def test_sigkill_mid_stream_then_restart_delivers_everything_acknowledged(work, ckpt, orthanc):
    spool = work / "kill-spool"
    port = free_port()
    node = Listener(ckpt, orthanc.destination, spool, port)
    sources = [phantom_dicom(2000 + i) for i in range(40)]
    acked: list = []
    orphans: list[int] = []

    def on_ack(ds) -> None:
        acked.append(ds)
        if len(acked) == 12:
            orphans.extend(node.kill())  # mid-stream: results being made, others still arriving

    statuses = store(port, sources, "CXRDX", on_ack=on_ack)
    assert node.proc.poll() is not None and 12 <= len(acked) < len(sources)
    assert statuses[len(acked) :] == [None] * (len(sources) - len(acked)), (
        "nothing after the kill is acknowledged"
    )
    wanted = {str(ds.StudyInstanceUID) for ds in acked}
    assert len(wanted - set(results_by_study(orthanc))) > 0, "the kill came before everything was sent"
    assert orphans, "the listener had result workers"
    wait_for(lambda: not any(alive(pid) for pid in orphans), 15, "its workers to end")
    again = Listener(ckpt, orthanc.destination, spool, port)
    try:
        got = wait_for(
            lambda: (g := results_by_study(orthanc)) and all(s in g and g[s].get("SR") for s in wanted) and g,
            120,
            "every acknowledged instance's results after the restart",
        )
        assert all(got[s]["SR"] == 1 for s in wanted), "a resend replaces, it does not duplicate"
        assert "resuming the spool" in again.text()
    finally:
        again.stop()
