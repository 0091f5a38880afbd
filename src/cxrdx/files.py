"""Files: atomic writes, content hashes, and telling a pickle from a safetensors file by its first bytes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrdx.errors import CxrdxError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write via ``write(tmp_path)`` then rename, so a crash never leaves a half file at ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # a full disk or read-only folder: OSError, or RuntimeError from torch.save's writer
        if isinstance(exc, OSError | RuntimeError):
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise CxrdxError(
                f"cannot write {path} ({detail}): is the disk full or the folder read-only? "
                "Free some space or choose another folder; the previous file (if any) was left as it was"
            ) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


_SHA256_SEEN: dict[tuple, str] = {}  # (path, inode, size, mtime_ns) -> digest, this process only


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256, hashed once per process while its inode, size and mtime stay the same (a
    predict job asks for its 30 MB checkpoint's several times). Only a file last modified over a second
    ago is remembered: any later write then gets a newer mtime, even on a file system whose clock
    ticks coarsely and reuses the inode."""
    import time

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _SHA256_SEEN:
        return _SHA256_SEEN[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if time.time() - st.st_mtime > 1.0:
        if len(_SHA256_SEEN) > 256:
            _SHA256_SEEN.clear()
        _SHA256_SEEN[key] = digest.hexdigest()
    return digest.hexdigest()


def head_bytes(path: str | os.PathLike, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def is_torch_pickle(head: bytes) -> bool:
    """First bytes of a PyTorch ``torch.save`` file (zip or legacy pickle), not a safetensors file.

    safetensors starts with an 8-byte little-endian header length followed by ``{``.
    """
    return (head[:2] == b"PK" or head[:1] == b"\x80") and head[8:9] != b"{"


def is_safetensors(head: bytes) -> bool:
    """First bytes of a safetensors file: an 8-byte little-endian header length, then ``{``."""
    return len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def cache_root() -> Path:
    """cxrdx's cache folder (weights, ONNX exports, autotune results):
    $CXRDX_CACHE, else $XDG_CACHE_HOME/cxrdx, else ~/.cache/cxrdx."""
    if os.environ.get("CXRDX_CACHE"):
        return Path(os.environ["CXRDX_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cxrdx"
    return Path.home() / ".cache" / "cxrdx"
