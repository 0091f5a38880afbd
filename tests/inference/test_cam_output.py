"""The exported graph's third output ``cams`` and heatmaps from the fast backend.

Expected values come from elsewhere: the graph without ``cams`` (the predictions must not move),
the graph's own probabilities (logit = sum of the cells + bias, the definition of average pool +
linear), and the backward pass's Grad-CAM on the PyTorch network (``GradCam``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrdx.explain.gradcam import GradCam, to_source
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference import export
from cxrdx.inference.backends import FEATURES_NAME, GRAY_NAME, OUTPUT_NAME, make_session, open_session
from cxrdx.inference.heatmaps import CamCapture, capture_maps, heatmaps, output_names
from cxrdx.inference.predictor import Predictor
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from cxrdx.model.networks import build_model

SIZE = 64


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))


def _imported_like(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(0.3 + torch.rand(m.num_features, generator=g) * 2)
        model.class_layers.out.bias.copy_(-1 - 3 * torch.rand(len(FINDINGS), generator=g))
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    meta = CheckpointMeta(
        architecture="densenet-tiny", preprocessing=Preprocessing(size=SIZE, mean=(0.45,), std=(0.3,))
    )
    save_checkpoint(path, _imported_like(build_model("densenet-tiny").eval()), meta)
    return path


def _gray(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, SIZE, SIZE)).astype(np.float32)


def _image(seed: int = 0) -> np.ndarray:
    """A non-square film (letterboxed), smooth enough to give the maps some structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:56]
    blob = np.exp(-((yy - 30) ** 2 + (xx - 20) ** 2) / 150.0)
    return np.clip(0.3 + 0.6 * blob + 0.05 * rng.random((80, 56)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("fold", [True, False])
def test_the_cams_output_leaves_the_predictions_unchanged(ckpt, fold):
    model, meta = load_checkpoint(ckpt)
    new = make_session(export.onnx_bytes(model, meta, "x", fold=fold))
    old = make_session(export.onnx_bytes(model, meta, "x", fold=fold, cams=False))
    assert [o.name for o in old.get_outputs()] == [OUTPUT_NAME, FEATURES_NAME]
    assert [o.name for o in new.get_outputs()] == [OUTPUT_NAME, FEATURES_NAME, export.CAMS_NAME]
    x = _gray(3) if fold else meta.preprocessing.to_input(_gray(3))
    name = GRAY_NAME if fold else "image"
    got = new.run([OUTPUT_NAME, FEATURES_NAME], {name: x})
    want = old.run([OUTPUT_NAME, FEATURES_NAME], {name: x})
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    both = new.run([OUTPUT_NAME, FEATURES_NAME, export.CAMS_NAME], {name: x})  # one pass, all three
    np.testing.assert_allclose(both[0], want[0], rtol=0, atol=1e-7)
    assert both[2].shape == (3, len(FINDINGS), SIZE // 32, SIZE // 32)


def test_the_cells_rebuild_the_graphs_own_logits(ckpt):
    model, meta = load_checkpoint(ckpt)
    session = make_session(export.onnx_bytes(model, meta, "x", fold=True))
    probs, cams = session.run([OUTPUT_NAME, export.CAMS_NAME], {GRAY_NAME: _gray(4, seed=2)})
    logits = np.log(probs / (1 - probs))
    bias = model.class_layers.out.bias.detach().numpy()
    np.testing.assert_allclose(cams.sum((2, 3)) + bias, logits, atol=2e-4)
    assert export.CAMS_NAME in session.get_modelmeta().custom_metadata_map  # described for users


def test_onnx_heatmaps_equal_backward_gradcam_without_loading_torch_network(ckpt):
    Predictor.load(ckpt, backend="onnx")  # exports into the cache
    predictor = Predictor.load(ckpt, backend="onnx")  # from the cache: no PyTorch network
    assert predictor._model is None
    assert predictor.session is not None and export.CAMS_NAME in output_names(predictor.session)
    image = _image()
    got = {f: predictor.explain(image, f) for f in FINDINGS}
    assert predictor._model is None  # the maps came from the graph: no PyTorch network was loaded
    model, _ = load_checkpoint(ckpt)
    x, box = predictor.prepare(image)
    cam = GradCam(model)
    nonzero = 0
    for i, f in enumerate(FINDINGS):
        want = to_source(cam(torch.from_numpy(x[None]), i)[0], box)
        assert got[f].shape == image.shape
        np.testing.assert_allclose(got[f], want, atol=2e-5)
        nonzero += int(want.max() == 1.0)
    assert nonzero >= 7


def test_openvino_reads_the_same_cams(ckpt):
    pytest.importorskip("openvino")
    model, meta = load_checkpoint(ckpt)
    data = export.onnx_bytes(model, meta, "x", fold=True)
    ort = open_session(data, runtime="onnx", prep=meta.preprocessing)
    ov = open_session(data, runtime="openvino", prep=meta.preprocessing)
    assert export.CAMS_NAME in output_names(ov)
    x = _gray(2, seed=5)
    a = ort.run([export.CAMS_NAME], {GRAY_NAME: x})[0]
    b = ov.run([export.CAMS_NAME], {GRAY_NAME: x})[0]
    np.testing.assert_allclose(b, a, atol=2e-2 * np.abs(a).max())  # bf16 where the CPU has it


def test_a_prediction_captures_the_maps_so_explain_runs_no_network(ckpt):
    predictor = Predictor.load(ckpt, backend="onnx")
    capture_maps(predictor)
    assert isinstance(predictor.session, CamCapture)
    image = _image(seed=3)
    reference = Predictor.load(ckpt, backend="onnx")  # no capture: its own pass
    pred = predictor.predict([image], batch_size=1, workers=0)[0]
    assert pred.probabilities == reference.predict([image], batch_size=1, workers=0)[0].probabilities

    class NoPass:
        def run(self, *_a, **_k):
            raise AssertionError("explain ran the network again")

        def __getattr__(self, name):
            return getattr(inner, name)

    inner = predictor.session.session
    predictor.session.session = NoPass()
    for f in ("Mass", "Effusion", "Nodule"):
        np.testing.assert_array_equal(predictor.explain(image, f), reference.explain(image, f))


def test_a_head_that_is_not_pool_plus_linear_keeps_the_backward_pass(tmp_path):
    torch.manual_seed(0)
    model = build_model("densenet-tiny").eval()
    width = model.class_layers.out.in_features
    model.class_layers.out = nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, len(FINDINGS)))
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=SIZE))
    data = export.onnx_bytes(model, meta, "x", fold=True)
    session = open_session(data, prep=meta.preprocessing)
    assert export.CAMS_NAME not in output_names(session)  # decided by the head's structure
    predictor = Predictor(model, meta, session=session)
    maker = heatmaps(predictor)
    assert not maker.uses_session()
    image = _image(seed=4)
    got = predictor.explain(image, "Mass")
    x, box = predictor.prepare(image)
    want = to_source(GradCam(model)(torch.from_numpy(x[None]), FINDINGS.index("Mass"))[0], box)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert isinstance(maker._maker, GradCam)


def test_the_explain_job_runs_the_network_once_per_film(ckpt, tmp_path, monkeypatch):
    """`cxrdx explain`'s heatmaps come with the prediction's own pass: one session run per film."""
    from PIL import Image

    import cxrdx.inference.heatmaps as hm
    from cxrdx.jobs.explain import Config
    from cxrdx.jobs.explain_maps import explain

    films = []
    for seed in range(2):
        path = tmp_path / f"film{seed}.png"
        Image.fromarray((_image(seed) * 255).astype(np.uint8)).save(path)
        films.append(str(path))
    runs = []
    original = hm.CamCapture.run

    def counted(self, names, feeds):
        runs.append(list(names))
        return original(self, names, feeds)

    monkeypatch.setattr(hm.CamCapture, "run", counted)
    results = explain(Config(weights=str(ckpt), images=films, out=str(tmp_path / "out"), top_k=3))
    assert [len(entry["findings"]) for entry in results["images"]] == [3, 3]
    assert len(runs) == len(films)  # the predictions' passes; the six heatmaps needed none
    assert all(hm.CAMS_NAME not in names for names in runs)
    maps = sorted((tmp_path / "out").glob("*.npy"))
    assert len(maps) == 6 and all(np.load(m).shape == (80, 56) for m in maps)


def _counting_runs(monkeypatch) -> list[list[str]]:
    import cxrdx.inference.heatmaps as hm

    runs: list[list[str]] = []
    original = hm.CamCapture.run

    def counted(self, names, feeds):
        runs.append(list(names))
        return original(self, names, feeds)

    monkeypatch.setattr(hm.CamCapture, "run", counted)
    return runs


def test_predict_heatmaps_run_the_network_once_per_film(ckpt, tmp_path, monkeypatch):
    """`cxrdx predict --heatmaps`: the overlays' maps come from the predictions' own passes (after autotune)."""
    from PIL import Image

    from cxrdx.jobs.predict import Config, run

    films = []
    for seed in range(2):
        path = tmp_path / f"film{seed}.png"
        Image.fromarray((_image(seed) * 255).astype(np.uint8)).save(path)
        films.append(str(path))
    runs = _counting_runs(monkeypatch)
    heat = tmp_path / "heat"
    run(Config(weights=str(ckpt), paths=films, heatmaps=str(heat), backend="onnx", batch_size=1, workers=0))
    assert len(runs) == len(films)  # one batch of one film each; the overlays needed no pass
    assert all(export.CAMS_NAME not in names for names in runs)
    assert len(sorted(heat.glob("*.png"))) == 2 * 3


def test_the_node_makes_its_heatmaps_from_the_predictions_pass(ckpt, tmp_path, monkeypatch):
    """The DICOM node's SEG maps: no network pass beyond the prediction's (the film read as predict reads it)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from cxrdx.interop.processing import Processing
    from cxrdx.interop.sr import algorithm_for, results_for
    from cxrdx.jobs.listen import load_predictor

    paths = []
    for seed in range(2):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = (
            pydicom.uid.DigitalXRayImageStorageForPresentation
        )
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.Modality, ds.ViewPosition = f"P{seed}", "DX", "PA"
        ds.set_pixel_data((_image(seed) * 255).astype(np.uint8), "MONOCHROME2", 8)
        paths.append(tmp_path / f"film{seed}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    predictor = load_predictor(ckpt, "onnx", "auto", "cpu", 1)  # as `cxrdx listen` loads it
    reference = Predictor.load(ckpt, backend="onnx")  # no capture: its own passes
    algorithm = algorithm_for(ckpt, predictor.meta, predictor.calibrated, thresholds=predictor.thresholds)
    runs = _counting_runs(monkeypatch)
    processing = Processing(predictor, results_for, algorithm, batch_size=1, workers=0)
    out = list(processing(paths))
    assert len(runs) == len(paths) and all(export.CAMS_NAME not in names for names in runs)
    for path, results in out:
        seg = pydicom.dcmread(io.BytesIO(results[1]))
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        names = [str(s.SegmentLabel).removesuffix(" Grad-CAM") for s in seg.SegmentSequence]
        want = np.stack([reference.explain(str(path), n) for n in names])
        np.testing.assert_array_equal(
            seg.pixel_array.reshape(want.shape), np.around(want * 255).astype(np.uint8)
        )
    # what goes to the result worker: the maps on the model input, not on the 80 x 56 film
    from cxrdx.explain.maps import GridMaps

    grid, _ = processing.overlays(paths[0], reference.predict([str(paths[0])])[0])
    assert isinstance(grid, GridMaps) and grid.squares
    assert {m.shape for m in grid.squares.values()} == {(predictor.meta.preprocessing.size,) * 2}
