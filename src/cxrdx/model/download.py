"""Fetch one weights file over HTTP(S) into the cache: resumable, retried, hash-checked, atomic.

Standard library only (urllib). The file is streamed to ``NAME.part`` beside its final
place with a tqdm bar on stderr; an interrupted transfer resumes with an HTTP ``Range``
request; a network error is retried ``RETRIES`` times with backoff; the result is
checked (a PyTorch file, not an HTML error page; the pinned SHA-256 or prefix) before it
is renamed into place, so the cache never holds a half or wrong file under the final name.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cxrdx.errors import CheckpointError
from cxrdx.files import cache_root, file_sha256, head_bytes, is_safetensors, is_torch_pickle

RETRIES = 3  # further tries after the first, on network errors and 5xx answers
BACKOFF_S = 1.0  # wait before try k: BACKOFF_S * 2 ** (k - 1)
TIMEOUT_S = 30.0  # per connect / per read; CXRDX_DOWNLOAD_TIMEOUT overrides
CHUNK = 1 << 16


class DownloadError(CheckpointError):
    """The file could not be fetched (network, HTTP status); ``hint`` says how to fetch it by hand."""


def cache_dir() -> Path:
    """Where downloaded weights live: the cxrdx cache folder itself (``cxrdx.files.cache_root``)."""
    return cache_root()


def default_timeout() -> float:
    value = os.environ.get("CXRDX_DOWNLOAD_TIMEOUT")
    try:
        return float(value) if value else TIMEOUT_S
    except ValueError:
        raise CheckpointError(f"CXRDX_DOWNLOAD_TIMEOUT={value!r} is not a number of seconds") from None


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "cxrdx"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from the registry


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: append to ``part`` from where it stops (Range), or restart when the server ignores it."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the part is already whole (or bigger than the file): start again
            part.unlink()
            response = _open(url, 0, timeout)
            start = 0
        else:
            raise
    with response:
        if start and response.status != 206:
            start = 0  # no range support: the body is the whole file
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = start + expected if expected is not None else None
        got = 0
        with (
            open(part, "ab" if start else "wb") as fh,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=part.name.removesuffix(".part")[:40], file=sys.stderr, disable=not progress,
                 leave=False) as bar,
        ):  # fmt: skip
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as exc:
                    fh.write(exc.partial)
                    raise ConnectionError("connection closed mid-transfer") from None
                if not chunk:
                    break
                fh.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if expected is not None and got < expected:
            raise ConnectionError(f"connection closed after {start + got} of {total} bytes")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, urllib.error.URLError | OSError | http.client.HTTPException)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, TimeoutError | socket.timeout) or "timed out" in str(exc):
        return "timed out"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def manual_hint(url: str, dest: Path) -> str:
    return f"download {url} by hand and put it at {dest} (or set CXRDX_WEIGHTS_MIRROR=URL of a server holding it)"


def check_weights_file(path: Path, url: str) -> None:
    """Refuse (and remove) a file that is not weights (PyTorch or safetensors), e.g. an HTML error page."""
    head = head_bytes(path, 64)
    if is_torch_pickle(head) or is_safetensors(head):
        return
    path.unlink(missing_ok=True)
    looks = head.lstrip()[:15].lower()
    what = "an HTML page" if looks.startswith((b"<!doctype", b"<html", b"<")) else f"bytes {head[:8]!r}"
    raise CheckpointError(
        f"{url} sent {what}, not a PyTorch weights file (a login, error or moved page?); it was removed. "
        "Check the URL or the mirror"
    )


def _fetch_one(url: str, part: Path, timeout: float, progress: bool) -> str | None:
    """None once ``part`` holds the whole file; else why not (after the retries)."""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            _transfer(url, part, timeout, progress)
            return None
        except Exception as exc:  # noqa: BLE001 - sorted into retry / give up here
            if not _retryable(exc) or attempt == RETRIES:
                return f"{url}: {_reason(exc)}" + (f" after {attempt + 1} tries" if attempt else "")
    return None  # pragma: no cover


def fetch(
    urls: list[str],
    dest: Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> str:
    """Download the first of ``urls`` that answers to ``dest``; returns the file's SHA-256.

    The caller holds the cache lock. Nothing is left under ``dest`` unless it passed every check.
    """
    timeout = default_timeout() if timeout is None else timeout
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for url in urls:
        failure = _fetch_one(url, part, timeout, progress)
        if failure is None:
            break
        failures.append(failure)
    else:
        raise DownloadError(
            f"could not fetch {dest.name} ({'; '.join(failures)}); {manual_hint(urls[0], dest)}"
        )
    check_weights_file(part, url)
    digest = file_sha256(part)
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"{url}: SHA-256 {digest} differs from the pinned {sha256}; the file was removed. It may be "
            "corrupt, or the publisher changed it: do not use it without checking"
        )
    if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"{url}: SHA-256 {digest} does not start with {sha256_prefix}, the digest its publisher embeds in "
            "the file name; the file was removed. It is corrupt or not the published file"
        )
    os.replace(part, dest)
    return digest
