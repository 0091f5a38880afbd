"""Where results go: a DICOM peer (``AET@HOST:PORT``, C-STORE) or a DICOMweb service (its base URL, STOW-RS).

:func:`parse_destination` reads ``--send-to``. A URL that holds credentials
(``https://user:password@pacs/...``) is refused: a command line shows in the process list,
the shell history and the logs. Credentials come from a file or the environment instead
(cxrdx.interop.dicomweb). :class:`DestinationUnavailable` is what every transport raises when
the destination cannot be reached: the results then wait in the spool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cxrdx.errors import ConfigError

_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")
SCHEMES = ("http", "https")
CREDENTIALS_HELP = (
    "give them in a file (--send-credentials FILE) or the environment (CXRDX_DICOMWEB_TOKEN for a bearer "
    "token, or CXRDX_DICOMWEB_USER and CXRDX_DICOMWEB_PASSWORD)"
)


class DestinationUnavailable(Exception):
    """No connection, or it was lost, or the destination is not ready: wait and try again."""


class CredentialsRefused(DestinationUnavailable):
    """The service refused the credentials (HTTP 401/403): the node waits for new ones; a one-off send stops."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer, sent to by C-STORE."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb service's base URL (the one ``/studies`` is under), sent to by STOW-RS."""

    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def https(self) -> bool:
        return self.url.lower().startswith("https:")

    def __str__(self) -> str:
        return self.url


def is_web(text: str) -> bool:
    return text.strip().lower().startswith(tuple(f"{s}://" for s in SCHEMES))


def parse_destination(text: str) -> Destination | WebDestination:
    """``AET@HOST:PORT`` or ``http(s)://HOST[:PORT]/PATH`` (ConfigError with an example otherwise)."""
    if is_web(text):
        return parse_web_destination(text)
    m = _DEST.match(text.strip())
    if not m or not (0 < int(m["port"]) < 65536) or not m["aet"].strip():
        raise ConfigError(
            f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242 "
            "(the destination's AE title, at most 16 characters, its host and DICOM port), or a DICOMweb "
            "base URL, e.g. https://pacs.example.org/dicom-web"
        )
    return Destination(m["aet"].strip(), m["host"].strip("[]"), int(m["port"]))


def parse_web_destination(text: str) -> WebDestination:
    url = text.strip()
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError(
            f"--send-to: the URL holds credentials (USER[:PASSWORD]@{parts.hostname or 'HOST'}); a command "
            f"line shows in the process list and the logs: remove them from the URL and {CREDENTIALS_HELP}"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme.lower() not in SCHEMES or not parts.hostname or port == -1:
        raise ConfigError(
            f"--send-to {url!r}: expected a DICOMweb base URL, e.g. https://pacs.example.org/dicom-web "
            "(http or https, a host, an optional port and path)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"--send-to {parts._replace(query='', fragment='').geturl()}?...: a DICOMweb base URL has no query "
            "or fragment (?... #...; not shown here, it may hold a secret); tokens do not "
            f"belong in it: {CREDENTIALS_HELP}"
        )
    return WebDestination(url.rstrip("/"))
