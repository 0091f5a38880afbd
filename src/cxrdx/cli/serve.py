"""``cxrdx serve``: the web app for one checkpoint, local only unless ``--allow-remote``.

The set-up (checks, the predictor) is the job ``cxrdx.jobs.serve``; this file starts the page.
"""

from __future__ import annotations

import argparse
import sys

from cxrdx.errors import ConfigError
from cxrdx.jobs import serve as JOB

DESCRIPTION = (
    "Serve a Gradio page (and a /predict API for gradio_client) for one checkpoint. "
    "Local only unless --allow-remote."
)


def render(result: JOB.Result, config: JOB.Config, args: argparse.Namespace) -> int:
    """Serve ``result.predictor`` until Ctrl-C."""
    from cxrdx.app.ui import build_app, launch

    demo = build_app(result.predictor)
    print(
        f"cxrdx serve: {config.weights} ({result.predictor.meta.architecture}, backend {result.predictor.backend}) "
        f"on http://{config.host}:{config.port}  (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    for warning in result.warnings:  # the page shows them too, as banners
        print(f"cxrdx serve: WARNING: {warning}", file=sys.stderr, flush=True)
    try:
        launch(
            demo, config.host, config.port, max_file_size=result.max_file_size, share=config.share, block=True
        )
    except OSError as exc:
        raise ConfigError(
            f"`port` {config.port}: cannot listen on {config.host}:{config.port} ({exc}); choose another `port`"
        ) from None
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
