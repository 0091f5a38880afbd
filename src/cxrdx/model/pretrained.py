"""Public pretrained weights by name: the registry (``pretrained.json``), the cache, `resolve_weights`.

``resolve_weights("xrv-nih")`` downloads torchxrayvision's NIH DenseNet121 once
(``cxrdx.model.download``), imports it into a cxrdx ``.safetensors`` beside the
download and returns that path; an existing file path is returned as it is. Files
are fetched from their publishers' URLs, or from ``CXRDX_WEIGHTS_MIRROR`` (same file
names under that URL); ``CXRDX_OFFLINE=1`` never touches the network. Where the
registry pins no SHA-256, the first download's is recorded in ``hashes.json`` in the
cache (only once the file imported) and a later file under the same name must match it.

Trust on first use is only as good as the first source: an unpinned file is fetched
through a mirror (anything but the publisher's own HTTPS address) only with an explicit
opt-in, ``CXRDX_TRUST_UNVERIFIED_MIRROR=1`` or ``cxrdx weights pull --trust-unverified-mirror``,
because whatever that mirror serves would be trusted from then on. Once a hash is
recorded (or where the registry pins one) a mirror is checked against it and needs no opt-in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path

from cxrdx.errors import CheckpointError, CxrdxError
from cxrdx.files import atomic_write_json, file_sha256
from cxrdx.model import download

HASHES = "hashes.json"


@cache
def registry() -> dict[str, dict]:
    """name -> entry, as in ``pretrained.json``."""
    text = resources.files("cxrdx.model").joinpath("pretrained.json").read_text(encoding="utf-8")
    return json.loads(text)["models"]


def entry(name: str) -> dict:
    models = registry()
    if name not in models:
        raise CheckpointError(f"{name!r} is not a pretrained model name; known: {', '.join(models)}")
    return models[name]


def _flag(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    return _flag("CXRDX_OFFLINE")


TRUST_MIRROR = "CXRDX_TRUST_UNVERIFIED_MIRROR"


def source_urls(name: str, mirror: str | None = None) -> list[str]:
    """Where the file is fetched from: ``mirror``/CXRDX_WEIGHTS_MIRROR + file name, else the publisher's."""
    e = entry(name)
    mirror = mirror if mirror is not None else os.environ.get("CXRDX_WEIGHTS_MIRROR") or None
    if mirror:
        return [mirror.rstrip("/") + "/" + e["file"]]
    return list(e["urls"])


def download_path(name: str) -> Path:
    return download.cache_dir() / entry(name)["file"]


def checkpoint_path(name: str) -> Path:
    return download.cache_dir() / f"{name}.safetensors"


def is_cached(name: str) -> bool:
    return checkpoint_path(name).is_file()


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock per name, so two processes pulling the same weights at once do it once."""
    folder = download.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def recorded_hashes() -> dict[str, dict]:
    path = download.cache_dir() / HASHES
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); remove it to record hashes afresh") from None


def _record(file: str, value: dict | None) -> None:
    hashes = recorded_hashes()
    if value is None:
        hashes.pop(file, None)
    else:
        hashes[file] = value
    atomic_write_json(download.cache_dir() / HASHES, hashes)


def unverified_mirror(name: str, urls: list[str]) -> str | None:
    """Why fetching ``name`` from ``urls`` needs the opt-in, or None when it does not.

    It does when the registry pins no hash (full or publisher's prefix), none was recorded
    yet, and a URL is not one of the publisher's own HTTPS addresses.
    """
    e = entry(name)
    if e.get("sha256") or e.get("sha256_prefix") or e["file"] in recorded_hashes():
        return None
    foreign = [u for u in urls if u not in e["urls"] or not u.startswith("https://")]
    if not foreign:
        return None
    return (
        f"{name}: the registry pins no SHA-256 for {e['file']} and it would come from {foreign[0]}, not from its "
        f"publisher ({e['urls'][0]}): whatever that server sends would be imported and trusted from then on. "
        f"Pull it once from the publisher (without CXRDX_WEIGHTS_MIRROR / --mirror), put a copy you checked at "
        f"{download_path(name)}, or accept the risk with {TRUST_MIRROR}=1 "
        f"(`cxrdx weights pull {name} --trust-unverified-mirror`)"
    )


def check_hash(name: str, digest: str, url: str, path: Path) -> dict | None:
    """Pinned hashes are checked by the download; unpinned ones must match the first download's.

    Returns the record to keep (:func:`record_first_use`) when this is an unpinned file's first
    download: the caller records it only once the file imported.
    """
    e = entry(name)
    if e.get("sha256"):
        return None
    first = recorded_hashes().get(e["file"])
    if first is None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        return {"sha256": digest, "url": url, "size": path.stat().st_size, "first_seen": stamp}
    if first["sha256"] != digest:
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"{name}: {url} now serves a different {e['file']} than the first download "
            f"({first.get('url')}, {first.get('first_seen')}): SHA-256 {digest} ({size} bytes) instead of {first['sha256']} ({first.get('size')} bytes); the new file was removed. If the "
            f"publisher really replaced it, run `cxrdx weights rm {name} --forget` and pull again"
        )
    return None


def record_first_use(name: str, record: dict) -> None:
    _record(entry(name)["file"], record)


def pull(
    name: str,
    *,
    mirror: str | None = None,
    offline: bool | None = None,
    progress: bool = True,
    trust_mirror: bool | None = None,
) -> Path:
    """The imported checkpoint for ``name``, downloading and importing it first if needed.

    ``trust_mirror``: accept an unpinned file from a mirror (default: ``CXRDX_TRUST_UNVERIFIED_MIRROR``).
    """
    e = entry(name)
    out = checkpoint_path(name)
    raw = download_path(name)
    offline = _offline() if offline is None else offline
    trust_mirror = _flag(TRUST_MIRROR) if trust_mirror is None else trust_mirror
    first_use = None
    with cache_lock(name):
        if out.is_file() and not (raw.is_file() and _imported_before_recipes(out)):
            return out
        if not raw.is_file():
            urls = source_urls(name, mirror)
            if offline:
                raise CheckpointError(
                    f"{name} is not in the cache and CXRDX_OFFLINE is set: {download.manual_hint(urls[0], raw)}; "
                    f"{download.OFFLINE_HINT}"
                )
            risk = unverified_mirror(name, urls)
            if risk and not trust_mirror:
                raise CheckpointError(risk)
            digest = download.fetch(
                urls,
                raw,
                sha256=e.get("sha256"),
                sha256_prefix=e.get("sha256_prefix"),
                size=e.get("size"),
                progress=progress,
            )
            first_use = check_hash(name, digest, urls[0], raw)
            if first_use is not None and risk:
                first_use["trusted"] = f"unverified mirror, accepted with {TRUST_MIRROR}"
        else:
            download.check_weights_file(raw, str(raw))
        from cxrdx.model.import_weights import import_weights  # torch: only once there is a file to import

        try:
            import_weights(e["kind"], raw, out, xrv_weights=e.get("xrv_weights"), inert_pickle=True)
        except BaseException:
            if first_use is not None:  # never trusted: the next pull fetches it afresh
                raw.unlink(missing_ok=True)
            raise
        if first_use is not None:
            record_first_use(name, first_use)
    return out


def _imported_before_recipes(out: Path) -> bool:
    """An import cached before checkpoints recorded their publisher's preprocessing recipe: it is imported
    again from the cached download (no network), so the model gets its publisher's input."""
    from cxrdx.imaging.preprocessing import LEGACY
    from cxrdx.model.checkpoint import read_checkpoint_meta

    try:
        return read_checkpoint_meta(out).preprocessing.resize == LEGACY
    except CxrdxError:
        return False


def verify(name: str) -> tuple[bool, str]:
    """Re-hash the cached download: (ok, what was found)."""
    e = entry(name)
    raw = download_path(name)
    if not raw.is_file():
        return False, f"{name}: not downloaded ({raw} is absent)"
    digest = file_sha256(raw)
    pinned, prefix = e.get("sha256"), e.get("sha256_prefix")
    recorded = recorded_hashes().get(e["file"], {}).get("sha256")
    if pinned:
        ok, against = digest == pinned, f"the pinned {pinned}"
    elif recorded:
        ok, against = digest == recorded, f"the first download's {recorded}"
    else:
        ok, against = True, "nothing (no pinned or recorded hash)"
    if prefix and not digest.startswith(prefix):
        ok, against = False, f"the publisher's prefix {prefix}"
    return ok, f"{name}: {raw} SHA-256 {digest} {'matches' if ok else 'DIFFERS from'} {against}"


def remove(name: str, forget: bool = False) -> list[Path]:
    """Delete the cached download and checkpoint (and, with ``forget``, the recorded hash)."""
    e = entry(name)
    raw = download_path(name)
    removed = []
    with cache_lock(name):
        for path in (raw, raw.with_name(raw.name + ".part"), checkpoint_path(name)):
            if path.exists():
                path.unlink()
                removed.append(path)
        if forget:
            _record(e["file"], None)
    return removed


def resolve_weights(
    name_or_path: str | os.PathLike,
    *,
    mirror: str | None = None,
    offline: bool | None = None,
    trust_mirror: bool | None = None,
) -> Path:
    """An existing file as it is; a registry name pulled (once) and imported; else an error naming both."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in registry():
        return pull(name, mirror=mirror, offline=offline, trust_mirror=trust_mirror)
    raise CheckpointError(
        f"{name}: no such checkpoint file, and not a pretrained model name (known: {', '.join(registry())})"
    )
