"""``train``: the 14-finding network on a prepared cache (or CSV splits); resumable; DDP under torchrun.

Class-weighted BCE, Adam and ReduceLROnPlateau on val loss, early stopping, best/last safetensors
checkpoints, TensorBoard events and the resolved config in the run folder. The settings are
``cxrdx.training.config.TrainConfig`` (defined once); ``run`` also merges a JSON/TOML settings file
(``config_file``) or a resumed run's own settings (``resume``) under the ``settings`` given.
The result is ``cxrdx.training.loop.TrainResult``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrdx.errors import ConfigError, CxrdxError
from cxrdx.reporter import Reporter, reporter_or_default
from cxrdx.training.config import TrainConfig as Config

if TYPE_CHECKING:
    from cxrdx.training.loop import TrainResult as Result

__all__ = ["Config", "Result", "run", "resolve"]


def resolve(
    settings: dict[str, Any] | None = None, resume: str | None = None, config_file: str | None = None
) -> Config:
    """The TrainConfig that ``settings`` (field -> value) make over a settings file or a resumed run's own."""
    from cxrdx.training.config import load_config_file, make_config, resume_config

    given = dict(settings or {})
    base: dict = {}
    if resume:
        base = resume_config(resume, given, config_file)
        given.pop("out", None)
    elif config_file:
        base = load_config_file(config_file)
    return make_config(base, **given).validate()


def run(
    config: Config | None = None,
    reporter: Reporter | None = None,
    *,
    settings: dict[str, Any] | None = None,
    resume: str | None = None,
    config_file: str | None = None,
    debug_dump_weights: bool = False,
) -> Result:
    """Train ``config`` (or the one ``resolve(settings, resume, config_file)`` makes); only rank 0 reports."""
    from cxrdx.training.config import STATE_FILE
    from cxrdx.training.loop import train

    reporter = reporter_or_default(reporter, "train")
    cfg = config.validate() if config is not None else resolve(settings, resume, config_file)
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        result = train(cfg, resume=bool(resume), debug_dump_weights=debug_dump_weights, reporter=reporter)
    except CxrdxError:
        raise
    except KeyboardInterrupt:
        if is_main and (Path(cfg.out) / STATE_FILE).is_file():
            reporter.note(
                f"interrupted; continue from the last completed epoch with: cxrdx train --resume {cfg.out}"
            )
        raise
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise ConfigError(
                f"out of memory ({str(exc).splitlines()[0]}); use a smaller `batch_size` or `image_size`"
            ) from None
        raise
    if is_main:
        from cxrdx.inference.on_write import prepare_export_note

        prepare_export_note("train", result.best_path, reporter)  # so the first `cxrdx predict` is fast
    return result
