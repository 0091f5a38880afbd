"""Issue 26 §1 against a real PACS: `cxrdx listen --allow-demo-model` beside Orthanc, read back what arrives.

A phantom-trained, never-evaluated checkpoint with an out-of-distribution reference fitted on
phantoms. Two films are pushed to Orthanc and routed to the node: a phantom (in distribution)
and a real film (the SIIM DICOM where the shared data is present, else a noise image). What
Orthanc then holds must say everywhere that the model is a demo, and the real film's SR must
report no finding present or absent (not evaluated, with the OOD score and threshold) and
come without heatmaps.
"""

from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA, free_port
from node_kit import ORTHANC_BIN, TINY_POSITIVE, Listener, Orthanc, phantom_dicom, tiny_checkpoint, wait_for
from test_node_orthanc import content_of, push_to_orthanc, results_by_study

from cxrdx.interop import codes
from cxrdx.model.checkpoint import update_checkpoint_meta

pytestmark = pytest.mark.skipif(
    ORTHANC_BIN is None,
    reason="Orthanc is not installed (Debian `orthanc`; `make test` installs it with apt)",
)
SIIM = SHARED_DATA / "dicom" / "siim_pneumothorax_sample.dcm"


def _demo_checkpoint(path, inside, outside):
    """node_kit's tiny checkpoint made a phantom-trained, unevaluated one, with an OOD reference whose
    threshold lies between the two films' scores (so which one is out is known, not left to chance)."""
    from cxrdx.inference.predictor import Predictor
    from cxrdx.model.ood import fit_ood_into_checkpoint
    from cxrdx.phantom.render import make_phantom

    tiny_checkpoint(path)
    rng = np.random.default_rng(0)
    phantoms = [make_phantom(rng, 64, [])[0].astype(np.float32) / 255 for _ in range(30)]
    fit_ood_into_checkpoint(path, phantoms[:20], phantoms[20:])
    scores = [
        p.ood_score for p in Predictor.load(path, backend="torch").predict([inside, outside], workers=0)
    ]
    assert scores[1] > scores[0], f"the real/noise film must score above the phantom: {scores}"

    def change(meta):
        meta.model_card = {"dataset": "cxrdx synthetic phantoms", "kind": "phantom", "images": 20}
        meta.evaluation = None
        meta.ood = {**meta.ood, "threshold": (scores[0] + scores[1]) / 2}

    update_checkpoint_meta(path, change)
    return path


def test_demo_model_results_in_orthanc_are_stamped_and_ood_films_not_evaluated(tmp_path):
    films = tmp_path / "films"
    films.mkdir()
    inside = films / "phantom.dcm"
    phantom_dicom(41).save_as(inside, enforce_file_format=True)
    outside = films / "real.dcm"
    if SIIM.is_file():
        shutil.copy(SIIM, outside)
    else:
        noise = phantom_dicom(42)
        noise.set_pixel_data(
            np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8), "MONOCHROME2", 8
        )
        noise.save_as(outside, enforce_file_format=True)
    ckpt = _demo_checkpoint(tmp_path / "demo.safetensors", str(inside), str(outside))

    node_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port, route=True)
    node = Listener(ckpt, orthanc.destination, tmp_path / "spool", node_port, "--allow-demo-model")
    try:
        push_to_orthanc(orthanc, [inside, outside])
        study = {
            name: str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
            for name, f in (("in", inside), ("out", outside))
        }

        def arrived():
            got = results_by_study(orthanc)
            done = all(got.get(study[k], {}).get("SR") and got.get(study[k], {}).get("SEG") for k in study)
            return got if done else None

        wait_for(arrived, 120, "the results of both films in Orthanc")
        time.sleep(3)  # anything else the node sent for the OOD film would be here by now
        got = results_by_study(orthanc)

        def objects(uid):
            query = {"Level": "Instance", "Query": {"StudyInstanceUID": uid}, "Expand": False}
            return [pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in orthanc.post("/tools/find", query)]

        inside_objects, outside_objects = objects(study["in"]), objects(study["out"])
    finally:
        log = node.stop()
        orthanc.stop()

    assert got[study["out"]] == {"SR": 1, "SEG": 1}  # its SEG: empty maps saying not evaluated
    assert got[study["in"]] == {"SR": 1, "SEG": 1}
    assert "DEMO MODEL" in log and "OUT OF DISTRIBUTION" in log
    sr_in = next(o for o in inside_objects if o.Modality == "SR")
    seg_in = next(o for o in inside_objects if o.Modality == "SEG")
    seg_out = next(o for o in outside_objects if o.Modality == "SEG")
    assert seg_out.ContentDescription.startswith("NOT EVALUATED") and seg_out.pixel_array.max() == 0
    sr_out = next(o for o in outside_objects if o.Modality == "SR")

    for sr in (sr_in, sr_out):
        meanings, texts = content_of(sr)
        assert "DEMO" in sr.SeriesDescription
        assert any(t.startswith("DEMO MODEL (trained on synthetic phantoms, never evaluated)") for t in texts)
        assert any("Model card: trained on: cxrdx synthetic phantoms (phantom data)" in t for t in texts)
    assert "DEMO MODEL" in seg_in.ImageComments and "DEMO" in seg_in.SeriesDescription
    meanings, _ = content_of(sr_in)
    assert {"Present", "Absent", "Decision threshold (present at or above)"} <= meanings

    meanings, texts = content_of(sr_out)
    assert "Present" not in meanings and "Absent" not in meanings  # no finding called either way
    assert "Undetermined" in meanings and "Out-of-distribution threshold" in meanings
    assert any(t.startswith("NOT EVALUATED: the image is out of distribution (OOD score") for t in texts)
    assert codes.PROBABILITY.meaning not in meanings  # no number reported for any finding
    assert TINY_POSITIVE in meanings  # each finding is listed, as not determined
