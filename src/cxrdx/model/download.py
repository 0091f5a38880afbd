"""Fetch one weights file over HTTP(S) into the cache: resumable, retried, bounded, hash-checked, atomic.

Standard library only (urllib). The file is streamed to ``NAME.part`` beside its final
place with a tqdm bar on stderr; an interrupted transfer resumes with an HTTP ``Range``
request; a network error is retried ``RETRIES`` times with backoff (a host name that does
not resolve is not: there is no network, or no DNS); the result is checked (a PyTorch
file, not an HTML error page; the pinned SHA-256 or prefix) before it is renamed into
place, so the cache never holds a half or wrong file under the final name.

Every transfer is bounded: a ``Content-Length`` or a body larger than the registry's size
(or, where the size is unknown, ``MAX_BYTES``) is refused and the part removed; fewer than
``STALL_BYTES`` in ``CXRDX_DOWNLOAD_TIMEOUT`` seconds is a stall (a server trickling a byte
every few seconds does not hold it open); ``CXRDX_DOWNLOAD_DEADLINE`` bounds the whole fetch.
A transfer that fails for a network reason keeps its part (the next pull resumes it) and
says so; one refused for its size removes it.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cxrdx.errors import CheckpointError
from cxrdx.files import cache_root, file_sha256, head_bytes, is_safetensors, is_torch_pickle

RETRIES = 3  # further tries after the first, on network errors and 5xx answers
BACKOFF_S = 1.0  # wait before try k: BACKOFF_S * 2 ** (k - 1)
TIMEOUT_S = 30.0  # per connect / per read, and the stall window; CXRDX_DOWNLOAD_TIMEOUT overrides
STALL_BYTES = 16 << 10  # at least this much per stall window, else the transfer has stalled
DEADLINE_S = 1800.0  # the whole fetch, all tries; CXRDX_DOWNLOAD_DEADLINE overrides
MAX_BYTES = 256 << 20  # the largest file accepted where the registry gives no size
CHUNK = 1 << 16
PAST_DEADLINE = "the download went past its deadline (CXRDX_DOWNLOAD_DEADLINE, default 1800 s)"
OFFLINE_HINT = "for a first look without any download, `make demo` trains a small model on synthetic phantoms"


class DownloadError(CheckpointError):
    """The file could not be fetched (network, HTTP status); ``hint`` says how to fetch it by hand."""


class Stalled(TimeoutError):
    """Too few bytes arrived within the stall window."""


class Refused(Exception):
    """The transfer must not go on and is not retried (too large, past the deadline)."""


def cache_dir() -> Path:
    """Where downloaded weights live: the cxrdx cache folder itself (``cxrdx.files.cache_root``)."""
    return cache_root()


def _seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable)
    try:
        seconds = float(value) if value else default
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise CheckpointError(f"{variable}={value!r} is not a positive number of seconds")
    return seconds


def default_timeout() -> float:
    return _seconds("CXRDX_DOWNLOAD_TIMEOUT", TIMEOUT_S)


def default_deadline() -> float:
    return _seconds("CXRDX_DOWNLOAD_DEADLINE", DEADLINE_S)


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "cxrdx"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from the registry


def _transfer(
    url: str, part: Path, timeout: float, progress: bool, size: int | None, deadline: float
) -> None:
    """One attempt: append to ``part`` from where it stops (Range), or restart when the server ignores it.

    ``size``: the file's exact size when the registry knows it, else None (then ``MAX_BYTES`` caps it).
    ``deadline``: a ``time.monotonic()`` instant the whole fetch must end by.
    """
    from tqdm import tqdm

    limit = size if size is not None else MAX_BYTES
    start = part.stat().st_size if part.exists() else 0
    if start > limit:
        part.unlink()
        start = 0
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
        total = start + expected if expected is not None else size
        if expected is not None and start + expected > limit:
            raise Refused(f"the server announces {start + expected} bytes, more than {_limit_words(size)}")
        if expected is not None and size is not None and start + expected != size:
            raise Refused(
                f"the server announces {start + expected} bytes, not the {size} of the published file"
            )
        got = 0
        window_start, window_got = time.monotonic(), 0
        with (
            open(part, "ab" if start else "wb") as fh,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=part.name.removesuffix(".part")[:40], file=sys.stderr, disable=not progress,
                 leave=False) as bar,
        ):  # fmt: skip
            while True:
                try:
                    chunk = response.read1(CHUNK)  # what has arrived: a trickle cannot hide in a long read
                except http.client.IncompleteRead as exc:
                    fh.write(exc.partial)
                    raise ConnectionError("connection closed mid-transfer") from None
                if not chunk:
                    break
                if start + got + len(chunk) > limit:
                    raise Refused(f"the body goes past {_limit_words(size)}")
                fh.write(chunk)
                got += len(chunk)
                window_got += len(chunk)
                bar.update(len(chunk))
                now = time.monotonic()
                if now > deadline:
                    raise Refused(PAST_DEADLINE)
                if now - window_start >= timeout:
                    if window_got < STALL_BYTES:
                        raise Stalled(
                            f"stalled: {window_got} bytes in {now - window_start:.1f} s "
                            f"(fewer than {STALL_BYTES} per {timeout:g} s, CXRDX_DOWNLOAD_TIMEOUT)"
                        )
                    window_start, window_got = now, 0
        if expected is not None and got < expected:
            raise ConnectionError(f"connection closed after {start + got} of {total} bytes")
        if size is not None and start + got < size:
            raise ConnectionError(f"connection closed after {start + got} of {size} bytes")


def _limit_words(size: int | None) -> str:
    if size is not None:
        return f"the published file's {size} bytes"
    return f"the {MAX_BYTES >> 20} MB cxrdx accepts for a weights file of unknown size"


def _unresolved(exc: BaseException) -> bool:
    """A host name that does not resolve: no network or no DNS; trying again will not help."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, socket.gaierror)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, Refused) or _unresolved(exc):
        return False
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, urllib.error.URLError | OSError | http.client.HTTPException)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Refused | Stalled):
        return str(exc)
    if _unresolved(exc):
        host = urllib.parse.urlsplit(getattr(exc, "url", "") or "").hostname
        return f"cannot resolve the host name{f' {host}' if host else ''} (no network, or no DNS)"
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


def _fetch_one(
    url: str, part: Path, timeout: float, progress: bool, size: int | None, deadline: float
) -> str | None:
    """None once ``part`` holds the whole file; else why not (after the retries)."""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
        try:
            if time.monotonic() > deadline:
                raise Refused(PAST_DEADLINE)
            _transfer(url, part, timeout, progress, size, deadline)
            return None
        except Exception as exc:  # noqa: BLE001 - sorted into retry / give up here
            if _unresolved(exc) and getattr(exc, "url", None) is None:
                exc.url = url
            if isinstance(exc, Refused):
                part.unlink(missing_ok=True)  # too large or too late: nothing in it is worth resuming
            if not _retryable(exc) or attempt == RETRIES:
                return f"{url}: {_reason(exc)}" + (f" after {attempt + 1} tries" if attempt else "")
    return None  # pragma: no cover


def fetch(
    urls: list[str],
    dest: Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size: int | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    progress: bool = True,
) -> str:
    """Download the first of ``urls`` that answers to ``dest``; returns the file's SHA-256.

    ``size``: the published file's size in bytes, when known (else at most ``MAX_BYTES``);
    ``deadline``: seconds for the whole fetch (default ``CXRDX_DOWNLOAD_DEADLINE``, 1800).
    The caller holds the cache lock. Nothing is left under ``dest`` unless it passed every check.
    """
    timeout = default_timeout() if timeout is None else timeout
    until = time.monotonic() + (default_deadline() if deadline is None else deadline)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for url in urls:
        failure = _fetch_one(url, part, timeout, progress, size, until)
        if failure is None:
            break
        failures.append(failure)
    else:
        kept = part.stat().st_size if part.exists() else 0
        partial = (
            f"; the partial file {part} ({kept} bytes) is kept and the next pull resumes it "
            "(`cxrdx weights rm NAME` deletes it)"
            if kept
            else ""
        )
        raise DownloadError(
            f"could not fetch {dest.name} ({'; '.join(failures)}){partial}; {manual_hint(urls[0], dest)}; "
            f"{OFFLINE_HINT}"
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
