"""Pretrained weights by name: pulled from a loopback server (the mirror setting), never the internet."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from test_importers import TINY, images, make_tv_state, to_module, write_chexnet
from torch import nn

from cxrdx.cli import main
from cxrdx.errors import CheckpointError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.inference.predictor import Predictor
from cxrdx.model import download, pretrained
from cxrdx.model.checkpoint import read_checkpoint_meta
from cxrdx.model.import_weights import import_weights

XRV_NIH = pretrained.registry()["xrv-nih"]["file"]


class Server:
    """Serves ``files`` (name -> bytes) with Range support; ``mode[name]`` makes it misbehave."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/")
                owner.requests.append((name, self.headers.get("Range")))
                mode = owner.mode.get(name, "")
                if mode == "404" or name not in owner.files:
                    self.send_error(404)
                    return
                if mode == "500":
                    self.send_error(500)
                    return
                if mode == "stall":
                    time.sleep(3)
                    return
                if mode == "slow":  # answers, but late: concurrent clients overlap
                    time.sleep(1.5)
                body = owner.files[name]
                if mode in ("endless", "huge", "trickle"):
                    self._misbehave(mode, body)
                    return
                rng = self.headers.get("Range")
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if mode == "cut":  # half the file, then the connection drops; the next request is whole
                    owner.mode.pop(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def _misbehave(self, mode: str, body: bytes) -> None:
                """endless: no length, 8 MB of file-like bytes (bounded, so old code ends too);
                huge: announces 10 GB, sends 64 KB and closes; trickle: a byte every 0.1 s, 60 in all."""
                self.send_response(200)
                if mode == "huge":
                    self.send_header("Content-Length", str(10 << 30))
                elif mode == "trickle":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.close_connection = True
                try:
                    if mode == "endless":
                        self.wfile.write(body)
                        for _ in range(128):
                            self.wfile.write(b"\0" * (64 << 10))
                    elif mode == "huge":
                        self.wfile.write(body[: 64 << 10])
                    else:
                        for i in range(60):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.1)
                except OSError:  # the client gave up: that is the point
                    pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CXRDX_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    srv = Server()
    monkeypatch.setenv("CXRDX_WEIGHTS_MIRROR", srv.url)
    monkeypatch.setenv("CXRDX_TRUST_UNVERIFIED_MIRROR", "1")  # the loopback stands in for the publisher
    yield srv
    srv.stop()


def xrv_file(tmp_path: Path) -> bytes:
    """A whole pickled model whose class lives in a module that is gone once the file is written."""
    module = types.ModuleType("not_installed_xrv")
    module.DenseNet = type("DenseNet", (nn.Module,), {"__module__": "not_installed_xrv"})
    sys.modules["not_installed_xrv"] = module
    try:
        path = tmp_path / "xrv_src.pt"
        torch.save(to_module(make_tv_state(TINY, 1, 18, seed=21), module.DenseNet()), path)
    finally:
        del sys.modules["not_installed_xrv"]
    return path.read_bytes()


def chexnet_file(tmp_path: Path, seed: int = 22) -> bytes:
    path = tmp_path / f"chexnet_src{seed}.pth.tar"
    write_chexnet(path, make_tv_state(TINY, 3, 14, seed=seed))
    return path.read_bytes()


def test_registry_is_complete():
    reg = pretrained.registry()
    names = {f"xrv-{v}" for v in ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch")}
    assert names | {"chexnet", "imagenet"} == set(reg)
    for name, e in reg.items():
        assert e["kind"] in ("xrv", "chexnet", "torchvision"), name
        assert e["urls"] and all(u.startswith("https://") and u.endswith(e["file"]) for u in e["urls"])
        assert e["licence"] and e["citation"] and e["preprocessing"]
    assert reg["imagenet"]["sha256_prefix"] == "a639ec97"


def test_pull_then_cached_with_the_server_stopped(server, tmp_path):
    server.files[XRV_NIH] = xrv_file(tmp_path)
    ckpt = pretrained.resolve_weights("xrv-nih")
    assert ckpt.is_file() and ckpt.suffix == ".safetensors"
    assert (ckpt.parent / XRV_NIH).is_file()
    recorded = json.loads((ckpt.parent / "hashes.json").read_text())[XRV_NIH]
    assert len(recorded["sha256"]) == 64 and recorded["size"] == len(server.files[XRV_NIH])
    server.stop()
    assert pretrained.resolve_weights("xrv-nih") == ckpt
    predictor = Predictor.load("xrv-nih", backend="torch")
    assert predictor.meta.source["kind"] == "xrv" and len(predictor.labels) == 14
    assert not any(m.startswith("not_installed_xrv") for m in sys.modules)


def test_an_import_cached_before_recipes_is_imported_again_offline(server, tmp_path):
    """A cached xrv import with the old letterbox record gets torchxrayvision's recipe, from the cached
    download (the server is stopped)."""
    from cxrdx.model.checkpoint import update_checkpoint_meta

    server.files[XRV_NIH] = xrv_file(tmp_path)
    ckpt = pretrained.resolve_weights("xrv-nih")
    server.stop()

    def make_old(meta) -> None:
        old = {k: v for k, v in meta.preprocessing.to_dict().items() if k in ("size", "channels", "pixel_range",
                                                                               "mean", "std")}  # fmt: skip
        meta.preprocessing = Preprocessing.from_dict(old)

    assert update_checkpoint_meta(ckpt, make_old).preprocessing.resize == "legacy"
    assert pretrained.resolve_weights("xrv-nih") == ckpt
    pre = read_checkpoint_meta(ckpt).preprocessing
    assert (pre.fit, pre.resize) == ("center_crop", "skimage")


def test_existing_path_is_returned_and_unknown_names_listed(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"x")
    assert pretrained.resolve_weights(str(f)) == f
    with pytest.raises(CheckpointError, match="xrv-nih.*chexnet"):
        pretrained.resolve_weights("no-such-model")


def test_cut_transfer_resumes_with_range(server, tmp_path):
    server.files["model.pth.tar"] = body = chexnet_file(tmp_path)
    server.mode["model.pth.tar"] = "cut"
    pretrained.pull("chexnet", progress=False)
    raw = pretrained.download_path("chexnet")
    assert raw.read_bytes() == body
    assert server.requests[0] == ("model.pth.tar", None)
    assert server.requests[1] == ("model.pth.tar", f"bytes={len(body) // 2}-")
    assert not raw.with_name(raw.name + ".part").exists()


def test_wrong_pinned_hash_is_refused_and_removed(server, tmp_path, monkeypatch):
    server.files["model.pth.tar"] = chexnet_file(tmp_path)
    entry = dict(pretrained.registry()["chexnet"], sha256="0" * 64)
    monkeypatch.setitem(pretrained.registry(), "chexnet", entry)
    with pytest.raises(CheckpointError, match="differs from the pinned"):
        pretrained.pull("chexnet", progress=False)
    cache = pretrained.download_path("chexnet").parent
    assert not any(p.name.startswith("model.pth.tar") for p in cache.iterdir())
    assert not pretrained.is_cached("chexnet")


def test_a_changed_unpinned_file_is_refused(server, tmp_path):
    server.files["model.pth.tar"] = chexnet_file(tmp_path, seed=1)
    pretrained.pull("chexnet", progress=False)
    pretrained.remove("chexnet")
    server.files["model.pth.tar"] = chexnet_file(tmp_path, seed=2)
    with pytest.raises(CheckpointError, match="different model.pth.tar than the first download"):
        pretrained.pull("chexnet", progress=False)
    assert not pretrained.download_path("chexnet").exists()
    pretrained.remove("chexnet", forget=True)
    pretrained.pull("chexnet", progress=False)  # forgotten: the new file is accepted


@pytest.mark.parametrize(("mode", "match", "tries"), [("404", "HTTP 404", 1), ("500", "HTTP 500", 4)])
def test_http_errors(server, tmp_path, mode, match, tries):
    server.files["model.pth.tar"] = chexnet_file(tmp_path)
    server.mode["model.pth.tar"] = mode
    with pytest.raises(CheckpointError, match=match) as info:
        pretrained.pull("chexnet", progress=False)
    assert "put it at" in str(info.value) and server.url in str(info.value)
    assert len(server.requests) == tries


def test_a_stalling_server_times_out(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_DOWNLOAD_TIMEOUT", "0.3")
    monkeypatch.setattr(download, "RETRIES", 1)
    server.files["model.pth.tar"] = chexnet_file(tmp_path)
    server.mode["model.pth.tar"] = "stall"
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="timed out"):
        pretrained.pull("chexnet", progress=False)
    assert time.monotonic() - start < 2.5


def test_an_html_page_under_the_right_name_is_refused(server):
    server.files["model.pth.tar"] = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
    with pytest.raises(CheckpointError, match="HTML page, not a PyTorch weights file"):
        pretrained.pull("chexnet", progress=False)
    cache = pretrained.download_path("chexnet").parent
    assert not any(p.name.startswith("model.pth.tar") for p in cache.iterdir())


def test_offline_names_the_file_the_url_and_the_place(server, monkeypatch, capsys):
    monkeypatch.setenv("CXRDX_OFFLINE", "1")
    monkeypatch.delenv("CXRDX_WEIGHTS_MIRROR")
    assert main(["weights", "pull", "chexnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "https://github.com/arnoweng/CheXNet/raw/master/model.pth.tar" in err
    assert str(pretrained.download_path("chexnet")) in err and "make demo" in err
    assert server.requests == []


def test_by_name_predicts_as_the_file_imported_by_hand(server, tmp_path):
    server.files["model.pth.tar"] = body = chexnet_file(tmp_path)
    by_name = Predictor.from_pretrained("chexnet", backend="torch")
    src = tmp_path / "model.pth.tar"
    src.write_bytes(body)
    by_hand = Predictor.load(
        import_weights("chexnet", src, tmp_path / "hand.safetensors").out, backend="torch"
    )
    batch = np.stack([by_name.prepare(s)[0] for s in images(2, size=224)])
    p_name, _ = by_name.probabilities(batch)
    p_hand, _ = by_hand.probabilities(batch)
    np.testing.assert_array_equal(p_name, p_hand)
    assert by_name.labels == by_hand.labels


def test_weights_cli_list_verify_rm(server, tmp_path, capsys):
    server.files["model.pth.tar"] = chexnet_file(tmp_path)
    assert main(["weights", "pull", "chexnet"]) == 0
    assert capsys.readouterr().out.strip().endswith("chexnet.safetensors")
    assert main(["weights", "list"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("chexnet "))
    assert line.split() == ["chexnet", "chexnet", "14", "yes"]
    assert main(["weights", "verify", "chexnet"]) == 0
    raw = pretrained.download_path("chexnet")
    raw.write_bytes(raw.read_bytes() + b"x")
    assert main(["weights", "verify", "chexnet"]) == 1
    assert "DIFFERS" in capsys.readouterr().err
    assert main(["weights", "rm", "chexnet"]) == 0
    assert not raw.exists() and not pretrained.is_cached("chexnet")


def test_two_processes_pulling_at_once_download_once(server, tmp_path):
    """The cache lock: two processes asking for the same name at once share one download."""
    import os
    import subprocess

    server.files["model.pth.tar"] = chexnet_file(tmp_path)
    server.mode["model.pth.tar"] = "slow"
    code = "from cxrdx.model import pretrained; print(pretrained.resolve_weights('chexnet'))"
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert paths == {str(pretrained.checkpoint_path("chexnet"))}
    assert [name for name, _ in server.requests] == ["model.pth.tar"]  # one transfer, not two
    assert Predictor.load("chexnet", backend="torch").meta.source["kind"] == "chexnet"
