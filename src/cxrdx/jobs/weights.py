"""``weights``: public pretrained DenseNet121 chest X-ray weights by name: list, pull, verify, rm.

``pull NAME`` downloads the publisher's file into the cache ($CXRDX_CACHE, else
$XDG_CACHE_HOME/cxrdx, else ~/.cache/cxrdx) and imports it; every command that takes a
checkpoint also takes the name. CXRDX_WEIGHTS_MIRROR=URL fetches the same file names from your
own server; CXRDX_OFFLINE=1 never touches the network. The work is ``cxrdx.model.pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.options import option
from cxrdx.reporter import Reporter, reporter_or_default

ACTIONS = ("list", "pull", "verify", "rm")


@dataclass
class Config:
    action: str = option(
        positional=True,
        metavar="ACTION",
        choices=ACTIONS,
        help="list: the known names, their importer kind, findings, and whether cached; pull NAME: download "
        "and import it (once), print the checkpoint path; verify NAME: re-hash its cached download (exit 1 "
        "when it differs); rm NAME: delete its cached download and checkpoint",
    )
    name: str | None = option(None, positional=True, metavar="NAME", help="a name from `cxrdx weights list`")
    mirror: str | None = option(None, metavar="URL", help="pull: fetch FILE from URL/FILE instead")
    trust_unverified_mirror: bool = option(
        False,
        help="pull: accept a file the registry pins no hash for from a mirror (CXRDX_TRUST_UNVERIFIED_MIRROR=1): "
        "whatever the mirror serves is then trusted",
    )
    forget: bool = option(False, help="rm: also forget the recorded SHA-256 of its first download")


@dataclass
class Entry:
    name: str
    kind: str  # the importer (cxrdx import --from)
    findings: str  # how many, or "init only"
    cached: bool


@dataclass
class Result:
    action: str
    name: str | None = None
    entries: list[Entry] = field(default_factory=list)  # list
    path: Path | None = None  # pull: the imported checkpoint
    ok: bool = True  # verify: the download still hashes as recorded
    message: str = ""  # verify: what was found
    removed: list[Path] = field(default_factory=list)  # rm


def run(config: Config, reporter: Reporter | None = None) -> Result:
    from cxrdx.model import pretrained

    reporter = reporter_or_default(reporter, "weights")
    if config.action == "list":
        entries = [
            Entry(
                name,
                e["kind"],
                "init only" if e.get("init_only") else str(len(e["findings"])),
                pretrained.is_cached(name),
            )
            for name, e in pretrained.registry().items()
        ]
        return Result("list", entries=entries)
    if not config.name:
        raise ConfigError(f"{config.action} needs a NAME (one of `cxrdx weights list`)")
    if config.action == "pull":
        return Result(
            "pull",
            config.name,
            path=pretrained.pull(
                config.name,
                mirror=config.mirror,
                progress=reporter.bars,
                trust_mirror=config.trust_unverified_mirror or None,
            ),
        )
    if config.action == "verify":
        ok, message = pretrained.verify(config.name)
        return Result("verify", config.name, ok=ok, message=message)
    return Result("rm", config.name, removed=pretrained.remove(config.name, forget=config.forget))
