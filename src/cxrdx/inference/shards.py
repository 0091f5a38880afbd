"""One ``cxrdx predict`` split over many processes or machines: the shares, the parts, the merge.

Shard ``i`` of ``N`` (``--shard i/N``, or torchrun's ``RANK``/``WORLD_SIZE``) takes the
``i``-th contiguous slice of the *sorted* file list, so the shares are deterministic,
disjoint and cover every file, whatever order the paths were given in. Each shard streams
its rows to its own part, ``OUT`` with ``.part-I-of-N`` before the suffix, and when the part
is complete writes ``PART.done``. **The last shard to finish merges**: after writing its
marker, a shard takes a lock (``flock``, released by the kernel if the process dies), and if
all N markers are there it writes ``OUT`` atomically (the parts concatenated in shard order,
that is the sorted order) and removes the parts. No process waits for another, so this works
for torchrun and for Slurm arrays alike. If a merge was interrupted, rerunning any shard
with ``--resume`` finds its part complete, predicts nothing and merges.

With ``--resume`` a shard also skips the images already in ``OUT`` (a finished earlier
merge); the merge then keeps those rows, so a rerun adds only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

from cxrdx.errors import ConfigError
from cxrdx.files import atomic_write, atomic_write_json

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N), with 0 <= i < N (Slurm: ``--shard $SLURM_ARRAY_TASK_ID/N`` for --array=0-N-1)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: give I/N, e.g. 0/4 for the first of 4 shards") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: I must be 0 to N-1 and N at least 1 (got I={i}, N={n})")
    return i, n


def shard_from_env() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) when launched by torchrun, else (0, 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be whole numbers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world}: RANK must be 0 to WORLD_SIZE-1")
    return rank, world


def share(items: Sequence[T], i: int, n: int, key=str) -> list[T]:
    """Shard ``i`` of ``n``: the i-th contiguous slice of ``items`` sorted by ``key``."""
    ordered = sorted(items, key=key)
    total = len(ordered)
    return ordered[i * total // n : (i + 1) * total // n]


def part_path(out: str | os.PathLike, i: int, n: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.part-{i:05d}-of-{n:05d}{out.suffix}")


def done_path(part: Path) -> Path:
    return part.with_name(part.name + ".done")


def mark_done(part: Path, rows: int, resumed_from_out: bool) -> None:
    """The part is complete (every file of the share has its row)."""
    atomic_write_json(done_path(part), {"rows": rows, "resume": resumed_from_out})


def clear_done(part: Path) -> None:
    done_path(part).unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``, held until the block ends (or the process dies)."""
    with open(path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: the merge still writes atomically, two may race harmlessly
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def merge_if_complete(out: str | os.PathLike, n: int, fmt: str) -> bool:
    """Merge the N parts into ``out`` when all are complete; True when this call merged."""
    out = Path(out)
    parts = [part_path(out, i, n) for i in range(n)]
    with _lock(out.with_name(f".{out.name}.merge-lock")):
        markers = [done_path(p) for p in parts]
        if not all(m.is_file() and p.is_file() for m, p in zip(markers, parts, strict=True)):
            return False  # a shard is still running (or this merge was done by another)
        keep_out = all(json.loads(m.read_text(encoding="utf-8")).get("resume") for m in markers)
        keep_out = keep_out and out.is_file()

        limit = None
        if keep_out:  # only its complete rows: an earlier single-process run may have been cut short
            from cxrdx.inference.stream import read_done

            limit = read_done(out, fmt, _csv_header(parts[0]) if fmt == "csv" else None)[1]

        def write(tmp: str) -> None:
            with open(tmp, "wb") as dst:
                header = None
                if keep_out:
                    header = _copy(out, dst, fmt, header=None, limit=limit)
                for part in parts:
                    header = _copy(part, dst, fmt, header=header)

        atomic_write(out, write)
        for p, m in zip(parts, markers, strict=True):
            p.unlink(missing_ok=True)
            m.unlink(missing_ok=True)
    return True


def _csv_header(path: Path) -> list[str]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh), [])


def _copy(
    src: Path, dst: IO[bytes], fmt: str, header: bytes | None, limit: int | None = None
) -> bytes | None:
    """Append ``src``'s rows (its first ``limit`` bytes) to ``dst``; a CSV header is written once."""
    with open(src, "rb") as fh:
        remaining = os.path.getsize(src) if limit is None else limit
        if fmt == "csv" and remaining:
            first = fh.readline()
            remaining -= len(first)
            if header is None:
                dst.write(first)
                header = first
            elif first != header:
                raise ConfigError(
                    f"{src}: its columns differ from the other parts'; were the shards run with "
                    "different options? Rerun them alike"
                )
        while remaining > 0:
            chunk = fh.read(min(1 << 20, remaining))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
    return header
