"""What opening a backend costs a job: counted in the choice, and cut by OpenVINO's compiled-model cache.

Also the checkpoint hash a job asks for several times: remembered, but never stale.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
import torch

from cxrdx.files import file_sha256
from cxrdx.inference import autotune
from cxrdx.inference.autotune import Tuned


def _tuned(**kw) -> Tuned:
    base = dict(batch_size=8, threads=2, workers=1, net_img_per_s=40.0, decode_ms=10.0, measured_s=1.0)
    return Tuned(**{**base, **kw})


def test_a_job_runs_the_candidate_that_finishes_first_counting_its_opening():
    # bf16: 40 img/s, opens in 0.5 s; ONNX: 20 img/s, opens in 0.05 s.
    t = _tuned(
        candidate="openvino bf16",
        rates={"onnx fp32": 20.0, "openvino bf16": 40.0, "openvino fp32": 25.0},
        open_s={"onnx fp32": 0.05, "openvino bf16": 0.5, "openvino fp32": 0.5},
        checks={"openvino bf16": {"passed": True}},
    )
    # break-even n: 0.05 + n/20 = 0.5 + n/40  ->  n = 18
    assert t.for_images(17).candidate == "onnx fp32"
    assert t.for_images(17).net_img_per_s == 20.0
    assert t.for_images(19) is t and t.for_images(1000).candidate == "openvino bf16"
    assert t.for_images(None) is t  # a server: the fastest
    assert t.for_images(1).workers == t.workers and t.candidate == "openvino bf16"  # a copy, t unchanged


def test_a_candidate_the_reference_check_rejected_is_never_picked_for_its_opening():
    t = _tuned(
        candidate="onnx fp32",
        net_img_per_s=20.0,
        rates={"onnx fp32": 20.0, "openvino bf16": 80.0},
        open_s={"onnx fp32": 0.3, "openvino bf16": 0.01},
        checks={"openvino bf16": {"passed": False}},
    )
    assert t.for_images(1) is t and t.for_images(10_000) is t


def test_a_choice_cached_without_opening_costs_keeps_the_fastest():
    t = _tuned(candidate="openvino bf16", rates={"onnx fp32": 20.0, "openvino bf16": 40.0})
    assert t.for_images(1) is t


def test_measure_times_the_opening_and_the_second_opening_of_a_cached_compile(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(autotune, "time", type("T", (), {"perf_counter": staticmethod(lambda: now[0])}))
    opens = {"onnx fp32": [0.1], "openvino fp32": [2.0, 0.3]}  # OpenVINO's first compile, then its cache

    def make(name: str) -> str:
        now[0] += opens[name].pop(0)
        return name

    def run(name: str, x: np.ndarray) -> np.ndarray:
        now[0] += 0.01 * len(x)
        return np.zeros((len(x), 2), np.float32)

    x = np.zeros((16, 1, 4, 4), np.float32)
    tuned, _ = autotune.measure(
        ["onnx fp32", "openvino fp32"],
        make,
        run,
        x,
        lambda n, o: None,
        cores=2,
        open_cost=lambda n: 0.4 if n.startswith("openvino") else 0.0,  # importing OpenVINO
        reopen=lambda n: n.startswith("openvino"),
    )
    assert tuned.open_s == pytest.approx({"onnx fp32": 0.1, "openvino fp32": 0.3 + 0.4})
    assert opens == {"onnx fp32": [], "openvino fp32": []}


def test_openvino_keeps_the_compiled_model_of_a_cached_export_beside_it(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.inference import compiled_cache, export
    from cxrdx.inference.backends import open_session
    from cxrdx.model.checkpoint import CheckpointMeta
    from cxrdx.model.networks import build_model

    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=32))
    export.export_to_cache("ab" * 32, build_model("densenet-tiny").eval(), meta)
    path = export.cached_export_path("ab" * 32)
    x = {"image": np.random.default_rng(0).random((2, meta.preprocessing.channels, 32, 32), dtype=np.float32)}
    first = open_session(path, 1, "openvino", meta.preprocessing).run(None, x)[0]
    folder = path.with_suffix(".openvino")
    blobs = list(folder.glob("*.blob"))
    assert len(blobs) == 1 and not list(folder.glob("*.tmp*"))  # written whole, nothing left over

    import openvino as ov

    compiles, real_compile = [], ov.Core.compile_model
    monkeypatch.setattr(ov.Core, "compile_model", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    again = open_session(path, 1, "openvino", meta.preprocessing).run(None, x)[0]
    assert compiles == []  # imported from the blob, not compiled
    np.testing.assert_array_equal(first, again)  # and it computes the same

    bf16 = open_session(path, 1, "openvino", meta.preprocessing, precision="bf16")  # other settings: own blob
    assert len(list(folder.glob("*.blob"))) == 2 and bf16 is not None and compiles == [1]
    compiles.clear()

    blobs[0].write_bytes(b"not a blob")  # damaged: compiled again and replaced
    fixed = open_session(path, 1, "openvino", meta.preprocessing).run(None, x)[0]
    np.testing.assert_array_equal(first, fixed)
    assert compiles == [1] and blobs[0].stat().st_size > 1000

    own = tmp_path / "mine.onnx"  # a user's file outside the cache: nothing written beside it
    own.write_bytes(path.read_bytes())
    assert compiled_cache.cache_folder(own) is None and compiled_cache.cache_folder(path.read_bytes()) is None
    open_session(own, 1, "openvino", meta.preprocessing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mine.onnx"]

    path.unlink()  # the export pruned: its compiled models go at the next prune
    export._prune(path.parent, keep=export.CACHE_KEEP)
    assert not folder.exists()


def test_a_checkpoint_hash_is_remembered_but_a_rewrite_is_hashed_again(tmp_path):
    f = tmp_path / "w.bin"

    def expect() -> str:
        return hashlib.sha256(f.read_bytes()).hexdigest()

    f.write_bytes(b"a" * 1000)
    old = time.time() - 60
    os.utime(f, (old, old))  # written a minute ago: remembered
    assert file_sha256(f) == expect()
    f.write_bytes(b"b" * 1000)  # same size, rewritten in place now
    assert file_sha256(f) == expect()
    tmp = tmp_path / "w.tmp"
    tmp.write_bytes(b"c" * 1000)
    os.replace(tmp, f)  # an atomic rewrite (a new inode), same size
    assert file_sha256(f) == expect()
    f.write_bytes(b"d" * 1000)  # written just now, then again at once: never remembered while fresh
    assert file_sha256(f) == expect()
    f.write_bytes(b"e" * 1000)
    assert file_sha256(f) == expect()


def test_a_narrower_request_reuses_the_wider_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    wide = ["onnx fp32", "openvino fp32", "openvino bf16"]
    t = _tuned(
        candidate="openvino bf16",
        net_img_per_s=80.0,
        rates={"onnx fp32": 30.0, "openvino fp32": 35.0, "openvino bf16": 80.0},
        checks={"openvino bf16": {"passed": True}},
    )
    autotune.save_cached(autotune.cache_key("m.onnx", wide, 2), t)
    fp32 = autotune.cached_choice("m.onnx", ["onnx fp32", "openvino fp32"], 2)  # --precision fp32
    assert fp32.candidate == "openvino fp32" and fp32.net_img_per_s == 35.0
    assert autotune.cached_choice("m.onnx", ["onnx fp32"], 2).candidate == "onnx fp32"  # --backend onnx
    assert autotune.cached_choice("m.onnx", wide, 2) == t
    assert autotune.cached_choice("m.onnx", ["onnx fp32", "onnx int8"], 2) is None  # int8 never measured
    assert autotune.cached_choice("other.onnx", ["onnx fp32"], 2) is None
    assert autotune.cached_choice("m.onnx", ["onnx fp32"], 4) is None  # other cores: other rates

    t.checks["openvino bf16"] = {"passed": False}
    t.candidate, t.net_img_per_s = "openvino fp32", 35.0
    autotune.save_cached(autotune.cache_key("m.onnx", wide, 2), t)
    asked = autotune.cached_choice("m.onnx", ["openvino bf16"], 2)  # --precision bf16: runs what it asks
    assert asked.candidate == "openvino bf16" and asked.net_img_per_s == 80.0
