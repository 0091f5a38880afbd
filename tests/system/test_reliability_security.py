"""Untrusted model files: a pickle that runs code never runs without --trust-pickle; a broken
safetensors file is refused with a clear message by every command that takes weights.

The payload of each malicious file creates a marker file (``os.system("touch ...")``).
The positive control (``--trust-pickle``) shows the marker does appear when the file
*is* unpickled, so the absence of the marker elsewhere means something.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from corpus.bad_inputs import make_tables

from cxrdx.cli import main
from cxrdx.errors import CheckpointError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.labels import FINDINGS
from cxrdx.model.checkpoint import CheckpointMeta, load_checkpoint
from cxrdx.model.networks import build_model

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs a shell command (what a hostile model file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("densenet-tiny").state_dict()


def write_evil(kind: str, path: Path, marker: Path) -> Path:
    """A hostile file in one of the pickle layouts a PyTorch checkpoint can have."""
    payload = {"state_dict": _tiny_state(), "hook": _Payload(marker)}
    if kind == "torch_zip":
        torch.save(payload, path)
    elif kind == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif kind == "pickle_p2":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "pickle_p0":  # text protocol: does not start with the 0x80 magic
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    return path


EVIL_KINDS = ["torch_zip", "torch_legacy", "pickle_p2", "pickle_p0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A small label CSV + images so that `evaluate` reaches its weights (it checks those first anyway)."""
    tables = make_tables(tmp_path_factory.mktemp("tables"))
    good = next(t for t in tables if t.name == "good")
    return {"csv": good.path, "images": good.images, "image": good.images / "img0.png"}


def commands(weights: Path, data: dict[str, Path], tmp: Path) -> dict[str, list[str]]:
    """Every CLI that reads a weights file, as argv lists (serve is run separately, as a server)."""
    return {
        "predict": ["predict", "--weights", str(weights), str(data["image"]), "--backend", "torch"],
        "evaluate": ["evaluate", "--weights", str(weights), "--data", str(data["csv"]), "--images",
                     str(data["images"]), "--out", str(tmp / "eval"), "--n-boot", "10", "--no-progress"],
        "explain": ["explain", "--weights", str(weights), str(data["image"]), "--out", str(tmp / "cams")],
        "export": ["export", "--weights", str(weights), "--onnx", str(tmp / "m.onnx")],
        "import-cxrdx": ["import", "--from", "cxrdx", str(weights), "--out", str(tmp / "i.safetensors")],
        "import-chexnet": ["import", "--from", "chexnet", str(weights), "--out", str(tmp / "c.safetensors")],
        "import-torchvision": ["import", "--from", "torchvision", str(weights), "--out", str(tmp / "t.safetensors")],
        "import-xrv": ["import", "--from", "xrv", str(weights), "--out", str(tmp / "x.safetensors")],
    }  # fmt: skip


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_hostile_pickle_never_runs_without_trust(kind, data, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    for suffix in (".pth", ".safetensors"):  # also disguised under the expected name
        evil = write_evil(kind, tmp_path / f"evil{suffix}", marker)
        for name, argv in commands(evil, data, tmp_path).items():
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2, (kind, name, err)
            lines = [line for line in err.strip().splitlines() if "error:" in line]
            assert len(lines) == 1 and str(evil) in lines[0], (kind, name, err)
            assert not marker.exists(), f"{kind} payload ran through `cxrdx {name}`"
        # training from it as ImageNet-style initial weights
        from cxrdx.model.init_weights import load_init_features

        with pytest.raises(CheckpointError):
            load_init_features(evil, build_model("densenet-tiny"))
        assert not marker.exists(), f"{kind} payload ran through train --init"


def test_serve_refuses_a_hostile_pickle_before_listening(data, tmp_path):
    marker = tmp_path / "PWNED"
    evil = write_evil("torch_zip", tmp_path / "evil.pth", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "cxrdx", "serve", "--weights", str(evil), "--port", "7399", "--backend", "torch"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "PyTorch pickle" in proc.stderr and str(evil) in proc.stderr
    assert not marker.exists()


def test_positive_control_trust_pickle_does_run_it(tmp_path, capsys):
    """With --trust-pickle the same file is unpickled, and the payload runs: the marker is a real probe."""
    marker = tmp_path / "PWNED"
    evil = write_evil("torch_zip", tmp_path / "evil.pth", marker)
    main(
        ["import", "--from", "chexnet", str(evil), "--out", str(tmp_path / "o.safetensors"), "--trust-pickle"]
    )
    capsys.readouterr()
    assert marker.exists()


# --------------------------------------------------------------------------- broken safetensors


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta_json: str | None) -> Path:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(path),
        metadata=None if meta_json is None else {"cxrdx": meta_json},
    )
    return path


def _meta(**kw) -> CheckpointMeta:
    return CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=64), **kw)


def broken_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the refusal must contain)."""
    state = _tiny_state()
    good = _write_safetensors(d / "good.safetensors", state, _meta().to_json())
    raw = good.read_bytes()
    out: dict[str, tuple[Path, str]] = {}

    wrong_shape = dict(state)
    wrong_shape["class_layers.out.weight"] = torch.zeros(13, state["class_layers.out.weight"].shape[1])
    out["wrong_shape"] = (_write_safetensors(d / "wrong_shape.safetensors", wrong_shape, _meta().to_json()),
                          "wrong shape")  # fmt: skip
    missing = {k: v for k, v in state.items() if "denseblock4" not in k}
    out["missing_tensors"] = (
        _write_safetensors(d / "missing.safetensors", missing, _meta().to_json()),
        "missing",
    )
    meta121 = json.loads(_meta().to_json())
    meta121["architecture"] = "densenet121"  # claims another network than its tensors
    out["wrong_architecture"] = (_write_safetensors(d / "arch.safetensors", state, json.dumps(meta121)),
                                 "do not match")  # fmt: skip
    meta13 = json.loads(_meta().to_json())
    meta13["labels"] = FINDINGS[:13]  # 13 names for 14 outputs
    out["labels_13_for_14_outputs"] = (_write_safetensors(d / "l13.safetensors", state, json.dumps(meta13)),
                                       "wrong shape")  # fmt: skip
    unknown = json.loads(_meta().to_json())
    unknown["labels"] = [*FINDINGS[:13], "Covid-19"]
    out["unknown_label"] = (
        _write_safetensors(d / "lunk.safetensors", state, json.dumps(unknown)),
        "Covid-19",
    )
    dup = json.loads(_meta().to_json())
    dup["labels"] = [*FINDINGS[:13], FINDINGS[0]]
    out["duplicate_label"] = (_write_safetensors(d / "ldup.safetensors", state, json.dumps(dup)), "duplicate")
    bad_thr = json.loads(_meta().to_json())
    bad_thr["thresholds"] = {"Covid-19": 0.5}
    out["threshold_unknown_finding"] = (_write_safetensors(d / "thr.safetensors", state, json.dumps(bad_thr)),
                                        "Covid-19")  # fmt: skip
    out["no_metadata"] = (_write_safetensors(d / "nometa.safetensors", state, None), "without cxrdx metadata")
    out["malformed_metadata"] = (
        _write_safetensors(d / "badjson.safetensors", state, "{not json"),
        "malformed",
    )
    future = json.loads(_meta().to_json())
    future["format_version"] = 99
    out["future_version"] = (_write_safetensors(d / "v99.safetensors", state, json.dumps(future)), "version")
    for name, cut in (
        ("truncated_half", len(raw) // 2),
        ("truncated_last_byte", len(raw) - 1),
        ("truncated_header", 20),
    ):
        (d / f"{name}.safetensors").write_bytes(raw[:cut])
        out[name] = (d / f"{name}.safetensors", "truncated")
    (d / "empty.safetensors").write_bytes(b"")
    out["empty"] = (d / "empty.safetensors", "truncated")
    huge = struct.pack("<Q", 1 << 62) + raw[8:]  # a header length of 4 EiB
    (d / "huge_header.safetensors").write_bytes(huge)
    out["huge_header_length"] = (d / "huge_header.safetensors", "safetensors")
    lying = bytearray(raw)  # the header says a tensor ends beyond the data
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"][1] += 1 << 30
    text = json.dumps(header).encode()
    lying = struct.pack("<Q", len(text)) + text + raw[8 + n :]
    (d / "offsets_beyond_end.safetensors").write_bytes(lying)
    out["offsets_beyond_end"] = (d / "offsets_beyond_end.safetensors", "safetensors")
    return out


def test_broken_safetensors_are_refused_clearly(tmp_path):
    files = broken_files(tmp_path)
    assert len(files) >= 15
    for name, (path, message) in files.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert str(path) in text and message.lower() in text.lower(), (name, text)
        assert "\n" not in text, (name, text)
    good = tmp_path / "good.safetensors"
    load_checkpoint(good)  # and the untouched original still loads


@pytest.mark.parametrize("name", ["wrong_shape", "unknown_label", "truncated_half", "offsets_beyond_end"])
def test_broken_safetensors_through_predict_and_import(tmp_path, name, data, capsys):
    path, message = broken_files(tmp_path)[name]
    for argv in (
        ["predict", "--weights", str(path), str(data["image"]), "--backend", "torch"],
        ["import", "--from", "cxrdx", str(path), "--out", str(tmp_path / "re.safetensors")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and message.lower() in err[0].lower(), (name, err)
    assert not (tmp_path / "re.safetensors").exists()


def test_non_finite_weights_are_refused(tmp_path, capsys):
    """NaN weights are well-formed safetensors, but would give NaN probabilities without a word."""
    state = _tiny_state()
    state["class_layers.out.bias"] = torch.full_like(state["class_layers.out.bias"], float("nan"))
    path = _write_safetensors(tmp_path / "nan.safetensors", state, _meta().to_json())
    with pytest.raises(CheckpointError, match="NaN") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
