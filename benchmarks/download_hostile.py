"""The weights downloader against hostile servers (issue 28 item 6, issue 26's DNS case): before/after figures.

A loopback HTTP server misbehaves on purpose; ``cxrdx weights pull chexnet`` runs in a
subprocess against it (``CXRDX_WEIGHTS_MIRROR``, with the trust opt-in so an older and a
newer checkout fetch the same way), killed after ``--limit`` seconds if it has not ended.
Runs against whatever ``cxrdx`` is importable (``PYTHONPATH=OLD/src`` measures an older checkout).

- ``endless``: 200, no length, zeros (stopped at 2 GB: without bounds a client fills its disk at
  loopback speed; an unbounded run wrote 16.9 GB in 60 s);
- ``huge``: ``Content-Length`` 10 GB, 1 MB of body, then the connection closes;
- ``trickle``: one byte every 3 s;
- ``dns``: no mirror, and ``github.com`` does not resolve (this machine has no DNS).

For each: the exit (or "killed"), the seconds, the size of the partial file left, and the message.

    python benchmarks/download_hostile.py [--scenario endless|huge|trickle|dns|all] [--limit 60]
"""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cxrdx_cmd, machine_line  # noqa: E402

ENDLESS_CAP = 2 << 30


class Hostile(http.server.BaseHTTPRequestHandler):
    mode = "endless"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        if self.mode == "huge":
            self.send_header("Content-Length", str(10 << 30))
        self.end_headers()
        try:
            if self.mode == "endless":  # "endless" up to 2 GB, to spare the disk of a client without bounds
                for _ in range(ENDLESS_CAP >> 16):
                    self.wfile.write(b"\0" * (1 << 16))
            elif self.mode == "huge":
                self.wfile.write(b"\0" * (1 << 20))
            else:
                while True:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(3)
        except OSError:
            pass
        self.close_connection = True


def run(mode: str, limit: float, cache: Path) -> str:
    env = dict(os.environ, CXRDX_CACHE=str(cache), CXRDX_TRUST_UNVERIFIED_MIRROR="1")
    env.pop("CXRDX_OFFLINE", None)
    server = None
    if mode == "dns":
        env.pop("CXRDX_WEIGHTS_MIRROR", None)
    else:
        Hostile.mode = mode
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env["CXRDX_WEIGHTS_MIRROR"] = f"http://127.0.0.1:{server.server_address[1]}"
    start = time.monotonic()
    proc = subprocess.Popen(
        cxrdx_cmd("weights", "pull", "chexnet"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=limit)
        end = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        end = f"killed at {limit:g} s"
    took = time.monotonic() - start
    if server is not None:
        server.shutdown()
    part = cache / "model.pth.tar.part"
    left = f"{part.stat().st_size / 2**20:.1f} MB partial file left" if part.exists() else "no partial file"
    message = err.strip().splitlines()[-1][:220] if err.strip() else ""
    return f"{mode}: {end} after {took:.1f} s, {left}; {message}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("endless", "huge", "trickle", "dns", "all"), default="all")
    ap.add_argument(
        "--limit", type=float, default=60.0, help="kill a pull still running after this many seconds"
    )
    args = ap.parse_args()
    import cxrdx

    print(machine_line())
    print(f"cxrdx from {Path(cxrdx.__file__).parent}")
    modes = ("endless", "huge", "trickle", "dns") if args.scenario == "all" else (args.scenario,)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            print(run(mode, args.limit, Path(tmp) / mode), flush=True)


if __name__ == "__main__":
    main()
