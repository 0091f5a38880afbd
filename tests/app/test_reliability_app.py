"""The web app under load and attack, against a real `cxrdx serve` process on loopback.

One server per module (densenet-tiny, started the way a user starts it, from the
folder that holds its checkpoint and a secret file): concurrent uploads are all
answered correctly; uploads over the limit are refused by the server itself (raw
HTTP, not only by gradio_client's own check); no route serves /etc/passwd, the
checkpoint, a file of the working folder or anything reached by ``..``; and the
server listens on 127.0.0.1 only. The full-size load figures come from
benchmarks/load_app.py (same code, 50 concurrent uploads of DenseNet121).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

import pytest

from cxrdx.cli import main

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import load_app  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
LIMIT_MB = 1


def _trained_weights(path: Path, data: Path) -> Path:
    """densenet-tiny at 64 px whose model card is what `cxrdx train` writes for unnamed data (with its path)."""
    import torch

    from cxrdx.imaging.preprocessing import Preprocessing
    from cxrdx.model.checkpoint import CheckpointMeta, save_checkpoint
    from cxrdx.model.networks import build_model

    torch.manual_seed(0)
    card = {"dataset": str(data), "kind": "unknown", "images": 90, "patients": 30,
            "split": {"train": 80, "val": 10}, "epochs": 1, "path": str(data)}  # fmt: skip
    meta = CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=64), model_card=card)
    save_checkpoint(path, build_model("densenet-tiny"), meta)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A folder like a user's: the checkpoint, a secret file, and some uploads (phantom PNGs)."""
    home = tmp_path_factory.mktemp("site")
    weights = _trained_weights(home / "model.safetensors", home / "data" / "cache")
    token = secrets.token_hex(16)
    (home / "secret.txt").write_text(f"SECRET {token}\n")
    images = load_app.make_images(home / "uploads", 4, 256)
    return {"home": home, "weights": weights, "token": token, "images": images}


@pytest.fixture(scope="module")
def server(site):
    with load_app.Server(
        "model.safetensors", "--max-upload-mb", str(LIMIT_MB), cwd=site["home"]
    ) as srv:  # relative --weights, run from its folder: the riskiest way to serve files
        yield srv


def test_concurrent_uploads_are_all_answered_correctly(server, site):
    expected = load_app.expected_probabilities(site["weights"], site["images"])
    wave = load_app.run_wave(server.url, site["images"], expected, requests=10, concurrency=10, timeout=180)
    assert wave.errors == []
    assert (wave.answered, wave.correct, wave.failed, wave.dropped) == (10, 10, 0, 0)
    assert server.proc.poll() is None
    summary = wave.summary()
    print(f"10 concurrent uploads: p50 {summary['p50_s']:.2f} s, p95 {summary['p95_s']:.2f} s, "
          f"server peak RSS {server.peak_rss_mb():.0f} MB")  # fmt: skip


def test_the_api_works_through_gradio_client_as_users_call_it(server, site):
    """Issue 28 item 8: a model card with a `path` key made gradio_client fetch it as a file (HTTP 403)."""
    import json

    from gradio_client import Client, handle_file

    from cxrdx.labels import FINDINGS

    client = Client(server.url, verbose=False)
    for image in site["images"][:2]:
        answer = client.predict(handle_file(str(image)), api_name="/predict")
        assert answer["image"] == image.name and set(answer["probabilities"]) == set(FINDINGS)
        assert answer["model_card"]["dataset"] == "cache" and answer["model_card"]["images"] == 90
        text = json.dumps(answer)
        assert '"path"' not in text and str(site["home"]) not in text, text
    status, page_config = _raw_get(server.port, "config")  # the page's model card: no server folder either
    assert status == 200 and b"data/cache" not in page_config and b"Model card" in page_config


def _upload(url: str, name: str, data: bytes):
    import httpx

    return httpx.post(url + "gradio_api/upload", files={"files": (name, data, "image/png")}, timeout=60)


def test_upload_limit_is_enforced_by_the_server(server, site):
    too_big = os.urandom(LIMIT_MB * 1024 * 1024 + 100_000)
    response = _upload(server.url, "big.png", too_big)
    assert response.status_code == 413, response.text[:300]
    assert "maximum allowed size" in response.text
    ok = _upload(server.url, "small.png", site["images"][0].read_bytes())
    assert ok.status_code == 200 and ok.json()[0].endswith("small.png")
    # the server still answers predictions afterwards
    expected = load_app.expected_probabilities(site["weights"], site["images"][:1])
    wave = load_app.run_wave(server.url, site["images"][:1], expected, 1, 1, 120)
    assert wave.correct == 1, wave.errors


def test_default_upload_limit_is_50_mb():
    from cxrdx.app.ui import DEFAULT_MAX_UPLOAD_MB
    from cxrdx.cli import build_parser

    args = build_parser("serve").parse_args(["serve", "--weights", "x.safetensors"])
    assert args.max_upload_mb == DEFAULT_MAX_UPLOAD_MB == 50


def _probes(site: dict) -> list[str]:
    ckpt = str(site["weights"])
    secret = str(site["home"] / "secret.txt")
    up = "../" * 12
    enc = "..%2f" * 12
    return [
        "gradio_api/file=/etc/passwd",
        "file=/etc/passwd",
        "gradio_api/file=" + ckpt,
        "file=" + ckpt,
        "gradio_api/file=model.safetensors",  # relative to the server's working folder
        "gradio_api/file=secret.txt",
        "gradio_api/file=" + secret,
        "gradio_api/file=./secret.txt",
        "gradio_api/file=" + up + "etc/passwd",
        "gradio_api/file=" + enc + "etc%2fpasswd",
        "gradio_api/file=%2fetc%2fpasswd",
        "gradio_api/file=/tmp/gradio/" + up + "etc/passwd",  # out of the upload folder
        "gradio_api/file=/tmp/gradio/" + enc + "etc/passwd",
        "gradio_api/file=/proc/self/environ",
        "gradio_api/file=/proc/self/cmdline",
        "gradio_api/file=%00/etc/passwd",
        "static/" + up + "etc/passwd",
        "static/" + enc + "etc%2fpasswd",
        "assets/" + enc + "etc%2fpasswd",
        "gradio_api/static/" + enc + "etc%2fpasswd",
        "custom_component/" + up + "etc/passwd",
        up + "etc/passwd",
        enc + "etc%2fpasswd",
        "secret.txt",
        "model.safetensors",
        "gradio_api/proxy=file:///etc/passwd",
        "gradio_api/file=file:///etc/passwd",
    ]


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET with the path exactly as written (no client-side normalisation of .. or %2f)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_no_file_outside_what_the_app_must_serve(server, site):
    passwd = Path("/etc/passwd").read_bytes()[:24]
    ckpt_head = site["weights"].read_bytes()[8:64]  # start of the safetensors JSON header
    token = site["token"].encode()
    served = []
    for path in _probes(site):
        status, body = _raw_get(server.port, path)
        leaked = [name for name, secret in (("passwd", passwd), ("checkpoint", ckpt_head), ("secret", token))
                  if secret in body]  # fmt: skip
        assert not leaked, f"/{path} -> {status} leaked {leaked}"
        if not 400 <= status < 500:
            served.append(f"/{path} -> {status}")
    assert not served, served
    # positive control: the probe does fetch what the app must serve (a file uploaded to it)
    token2 = secrets.token_hex(16).encode()
    uploaded = _upload(server.url, "note.png", b"UPLOADED " + token2).json()[0]
    status, body = _raw_get(server.port, "gradio_api/file=" + uploaded)
    assert status == 200 and token2 in body
    # the page itself, the API description and the config are served, and none names the checkpoint path
    for path in ("", "config", "gradio_api/info"):
        status, body = _raw_get(server.port, path)
        assert status == 200 and str(site["weights"]).encode() not in body and token not in body, path


def test_the_server_listens_on_loopback_only(server):
    """/proc/net/tcp{,6}: the port is bound to 127.0.0.1 and to no other address."""
    port_hex = f"{server.port:04X}"
    bound = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and local.endswith(":" + port_hex):  # 0A = LISTEN
                    bound.append(local.split(":")[0])
    assert bound == ["0100007F"], bound  # 127.0.0.1, little-endian hex; nothing on 0.0.0.0 or ::


def test_other_interfaces_need_an_explicit_flag(site, capsys):
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        assert main(["serve", "--weights", str(site["weights"]), "--host", host]) == 2
        err = capsys.readouterr().err
        assert "--allow-remote" in err and host in err
