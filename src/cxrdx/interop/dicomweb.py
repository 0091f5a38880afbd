"""STOW-RS of result files to a DICOMweb service (``dicomweb-client``), with credentials never on the command line.

**Credentials**, when the service asks for them: a bearer token (``Authorization: Bearer``) or
a user and password (HTTP basic), read from

- a file (``--send-credentials FILE``): ``KEY=VALUE`` lines, ``#`` comments, with the keys
  ``CXRDX_DICOMWEB_TOKEN``, or ``CXRDX_DICOMWEB_USER`` and ``CXRDX_DICOMWEB_PASSWORD`` (the same
  file can be a systemd ``EnvironmentFile``); a file others may read is logged as a warning;
- else the environment, the same names.

The file is read again after the service refused the credentials (HTTP 401/403), so a
rotated token is picked up without a restart. Values never reach a log line.

**Outcomes** (PS3.18 10.5.3): every instance in the response's Referenced SOP Sequence (a
warning included) is stored; a Failed SOP Sequence item, an instance the response does not
list, or HTTP 400/409/413/415 is a refusal (the sender counts it and, repeated, parks the
results); no connection, a TLS failure, HTTP 401/403 (credentials), 408, 429 and 5xx mean
"not now": DestinationUnavailable, and the results wait in the spool. dicomweb-client's own
retries are off: the sender's backoff does that.

With https, ``--tls-ca`` (when given) replaces the system's CAs for checking the server,
and ``--tls-cert``/``--tls-key`` are shown to a server that asks for a client certificate.
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxrdx.errors import ConfigError
from cxrdx.interop.destination import (
    CREDENTIALS_HELP,
    CredentialsRefused,
    DestinationUnavailable,
    WebDestination,
)
from cxrdx.interop.tls import TlsFiles

log = logging.getLogger("cxrdx.node")

TOKEN_ENV = "CXRDX_DICOMWEB_TOKEN"
USER_ENV = "CXRDX_DICOMWEB_USER"
PASSWORD_ENV = "CXRDX_DICOMWEB_PASSWORD"
KEYS = (TOKEN_ENV, USER_ENV, PASSWORD_ENV)
UNAVAILABLE_HTTP = {401, 403, 407, 408, 425, 429}  # and every 5xx
NO_CHUNKS = 1 << 62  # one request with a Content-Length: not every server takes chunked uploads


@dataclass(frozen=True)
class Credentials:
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = ""  # where they came from (for messages; never the values)

    @property
    def kind(self) -> str:
        return "a bearer token" if self.token else f"user {self.user!r} and a password"


def _parse_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--send-credentials {path}: cannot read it ({exc})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--send-credentials %s: others may read it; `chmod 600 %s`", path, path)
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if not sep or key not in KEYS:
            raise ConfigError(
                f"--send-credentials {path}, line {number}: expected KEY=VALUE with KEY one of "
                f"{', '.join(KEYS)}"
            )
        values[key] = value
    return values


def read_credentials(
    path: str | os.PathLike | None, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """The credentials from ``path`` (when given) or the environment; None when there are none."""
    if path is not None:
        values, source = _parse_file(Path(path)), f"--send-credentials {path}"
    else:
        env = os.environ if environ is None else environ
        values, source = {k: env[k] for k in KEYS if env.get(k)}, "the environment"
    token, user, password = (values.get(k) or None for k in KEYS)
    if not (token or user or password):
        if path is not None:
            raise ConfigError(f"{source}: no {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}, in it")
        return None
    if token and (user or password):
        raise ConfigError(f"{source}: give {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}, not both")
    if not token and not (user and password):
        raise ConfigError(f"{source}: {USER_ENV} and {PASSWORD_ENV} go together; one of them is missing")
    if token and any(c.isspace() for c in token):
        raise ConfigError(f"{source}: {TOKEN_ENV} holds white space; give the token alone, without 'Bearer'")
    return Credentials(token, user, password, source)


class StowRs:
    """The transport for a :class:`WebDestination` (see cxrdx.interop.send.Sender)."""

    def __init__(
        self,
        destination: WebDestination,
        *,
        credentials_file: str | os.PathLike | None = None,
        timeout: float = 30.0,
        tls: TlsFiles | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.destination = destination
        self.credentials_file = credentials_file
        self.environ = environ
        self.timeout = timeout
        self.tls = tls
        self.credentials = read_credentials(credentials_file, environ)  # wrong ones: say so at start
        if self.credentials and not destination.https:
            log.warning(
                "%s: credentials (%s) go to a plain http:// URL, readable on the network; use https",
                destination,
                self.credentials.source,
            )
        self._client = None
        self._session = None

    def _new_client(self):
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        creds = self.credentials
        if creds is not None and creds.token:
            session.headers["Authorization"] = f"Bearer {creds.token}"
        elif creds is not None:
            session.auth = (creds.user or "", creds.password or "")
        if self.tls is not None and self.destination.https:
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA: not --tls-ca
            session.trust_env = False
            session.proxies.update(
                {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https")}
            )
            session.verify = str(self.tls.ca)
            session.cert = (str(self.tls.cert), str(self.tls.key))
        client = DICOMwebClient(
            self.destination.url, session=session, timeout=self.timeout, chunk_size=NO_CHUNKS
        )
        client.set_http_retry_params(retry=False)
        self._session = session
        return client

    def send(self, files: list[Path], objects: list[tuple[str, str, str]]) -> str | None:
        """POST the files in one STOW-RS request; None when all were stored, else why not.

        Raises DestinationUnavailable when the service cannot be reached or is not ready.
        """
        import pydicom
        import requests

        try:
            datasets = [pydicom.dcmread(f) for f in files]
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - a result file that does not parse: never sendable
            return f"a result file cannot be read back ({type(exc).__name__}: {exc})"
        if self._client is None:
            self._client = self._new_client()
        dest = self.destination
        try:
            response = self._client.store_instances(datasets)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403, 407):
                self.close()
                self.credentials = read_credentials(self.credentials_file, self.environ)  # rotated?
                have = (
                    f"{self.credentials.kind} from {self.credentials.source}" if self.credentials else "none"
                )
                raise CredentialsRefused(
                    f"{dest}: HTTP {code}, the service refused the credentials ({have}); {CREDENTIALS_HELP}"
                ) from None
            if code in UNAVAILABLE_HTTP or code >= 500:
                raise DestinationUnavailable(f"{dest}: HTTP {code} {exc.response.reason}") from None
            body = (exc.response.text or "").strip().replace("\n", " ")[:200]
            return f"{dest} refused the STOW-RS request: HTTP {code} {exc.response.reason} {body}".strip()
        except (requests.RequestException, OSError) as exc:  # connection, TLS, timeout
            self.close()
            raise DestinationUnavailable(f"{dest}: {type(exc).__name__}: {exc}") from None
        return refusal(response, objects, dest)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._client = self._session = None


def refusal(response, objects: list[tuple[str, str, str]], dest: object) -> str | None:
    """Why a STOW-RS response (a pydicom Dataset, maybe empty) does not confirm every object, or None."""
    failed = [
        f"{item.get('ReferencedSOPInstanceUID', '?')} (failure 0x{int(item.get('FailureReason', 0)):04X})"
        for item in response.get("FailedSOPSequence", None) or []
    ]
    if failed:
        return f"{dest} did not store {', '.join(failed[:5])}"
    if "ReferencedSOPSequence" not in response:
        return None  # a 200 with no body: all stored (PS3.18: the body is optional for success)
    stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in response.ReferencedSOPSequence}
    missing = [uid for _, uid, _ in objects if uid not in stored]
    if missing:
        return (
            f"{dest} did not confirm {', '.join(missing[:5])} (not in the response's Referenced SOP Sequence)"
        )
    return None
