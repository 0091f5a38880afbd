"""The DICOM node's spool: a folder that holds every piece of work until it is done.

Nothing the node has acknowledged lives only in memory. The layout under the spool root:

- ``inbox/<SOPInstanceUID>.dcm``: an instance received and acknowledged, waiting for inference.
  :meth:`Spool.receive` writes it durably (temporary file, fsync, rename, fsync of the
  folder) *before* the C-STORE is answered, so an acknowledged image survives a crash.
- ``outbox/<time>-<SOPInstanceUID>/NNN.dcm``: the results (SR, secondary captures) of one source,
  waiting to be sent; removed once delivered (:meth:`Spool.sent` checks that it is gone).
  The folder is built under a temporary name and renamed into place
  whole, *then* the inbox file is removed: a crash in between leaves both, and
  :meth:`Spool.recover` drops the inbox copy (the results are already there).
- ``failed/``: sources that could not be processed (unreadable pixels), with a ``.txt`` reason.
- ``undeliverable/``: results the destination refused again and again, kept for a person to look at.
- ``tmp/``: half-written files; emptied on start.

The spool holds only what the node wrote, under names it chose (:func:`spool_key`, never a
path a peer sent); symbolic links found in it are ignored, so a link placed there cannot make
the node read, or send to the PACS, a file from elsewhere.

Work is taken from the spool in arrival order (oldest first). A restart after any crash
calls :meth:`recover` and picks up where the last run stopped. Because the results'
UIDs derive from the source instance, doing a piece of work twice produces the same
objects: the destination replaces rather than duplicates them (delivery is at least once).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from cxrdx.errors import ConfigError

_SAFE_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def spool_key(sop_instance_uid: str) -> str:
    """A file name for an instance: its UID when that is a plain UID, else a hash of it."""
    uid = str(sop_instance_uid).strip().rstrip("\x00")
    if _SAFE_UID.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _by_age(paths: list[Path]) -> list[Path]:
    def age(p: Path) -> tuple[int, str]:
        try:
            return p.stat().st_mtime_ns, p.name
        except OSError:  # removed meanwhile
            return 0, p.name

    return sorted(paths, key=age)


class Spool:
    """The folders above; safe for one process (several receiving threads, one worker, one sender)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.inbox = self.root / "inbox"
        self.outbox = self.root / "outbox"
        self.failed = self.root / "failed"
        self.undeliverable = self.root / "undeliverable"
        self.tmp = self.root / "tmp"
        try:
            for folder in (self.inbox, self.outbox, self.failed, self.undeliverable, self.tmp):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--spool {self.root}: cannot create the spool folders ({exc.strerror or exc}); "
                "choose a folder you can write"
            ) from None
        probe = self.tmp / ".probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"--spool {self.root}: the folder cannot be written ({exc.strerror or exc})"
            ) from None

    # ------------------------------------------------------------------ writing

    def _durable_file(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def receive(self, sop_instance_uid: str, data: bytes) -> Path:
        """Store one received instance (DICOM Part 10 bytes) durably in the inbox; its path.

        Raises OSError when it cannot be stored (disk full): the caller must then refuse the C-STORE.
        """
        path = self.inbox / f"{spool_key(sop_instance_uid)}.dcm"
        self._durable_file(path, data)
        return path

    def put_results(self, source: Path, results: list[bytes]) -> Path:
        """Results of the inbox file ``source`` into the outbox (durably, whole), then drop the source."""
        key = source.stem
        # A time-ordered unique name: the same source received twice gives two folders, both sent;
        # their objects have the same UIDs, so the destination keeps one copy.
        final = self.outbox / f"{time.time_ns():020d}-{key}"
        work = Path(tempfile.mkdtemp(prefix=key + ".", dir=self.tmp))
        try:
            for i, data in enumerate(results):
                with open(work / f"{i:03d}.dcm", "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            fsync_dir(work)
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        fsync_dir(self.outbox)
        source.unlink(missing_ok=True)
        fsync_dir(self.inbox)
        return final

    def fail(self, source: Path, reason: str) -> Path:
        """Move an inbox file that cannot be processed to ``failed/`` with its reason beside it."""
        dest = self.failed / source.name
        os.replace(source, dest)
        self._durable_file(dest.with_suffix(".txt"), (reason.rstrip() + "\n").encode("utf-8"))
        fsync_dir(self.inbox)
        return dest

    def sent(self, results: Path) -> None:
        """Every file of an outbox folder was delivered: forget it.

        Raises OSError when the folder is still there afterwards (a read-only spool): the caller
        must not send it again and should retry the removal later.
        """
        error: OSError | None = None
        try:
            shutil.rmtree(results)
        except OSError as exc:  # FileNotFoundError included: then it is gone, as wanted
            error = exc
        if results.exists():
            if error is not None and error.strerror:
                raise OSError(error.errno, error.strerror, str(results))
            raise OSError(f"{results.name} is still in the spool after its removal")
        fsync_dir(self.outbox)

    def give_up(self, results: Path, reason: str) -> Path:
        """The destination keeps refusing these results: park them in ``undeliverable/``."""
        dest = self.undeliverable / results.name
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        os.replace(results, dest)
        self._durable_file(dest / "reason.txt", (reason.rstrip() + "\n").encode("utf-8"))
        fsync_dir(self.outbox)
        return dest

    # ------------------------------------------------------------------ reading

    def pending(self) -> list[Path]:
        """Inbox files waiting for inference, oldest first."""
        return _by_age([p for p in self.inbox.iterdir() if p.suffix == ".dcm" and not p.is_symlink()])

    def outgoing(self) -> list[Path]:
        """Outbox folders waiting to be sent, oldest first (their names start with the time)."""
        return sorted(p for p in self.outbox.iterdir() if p.is_dir() and not p.is_symlink())

    @staticmethod
    def result_files(results: Path) -> list[Path]:
        return sorted(p for p in results.iterdir() if p.suffix == ".dcm" and not p.is_symlink())

    def counts(self) -> dict[str, int]:
        return {
            "inbox": len(self.pending()),
            "outbox": len(self.outgoing()),
            "failed": sum(1 for p in self.failed.iterdir() if p.suffix == ".dcm"),
            "undeliverable": sum(1 for p in self.undeliverable.iterdir() if p.is_dir()),
        }

    def recover(self) -> dict[str, int]:
        """Start of a run: clear half-written files; inbox files whose results are already out are done.

        Returns what is left to do (the counts).
        """
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        done = {p.name.split("-", 1)[-1] for p in self.outgoing()}
        for source in self.pending():
            if source.stem in done:
                source.unlink(missing_ok=True)
        fsync_dir(self.inbox)
        return self.counts()
