"""Small helpers shared by tests in several folders (tests/ is on sys.path, so `from testkit import ...`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cxrdx.cli import main


def run_cli(capsys, argv) -> tuple[int, str, str]:
    """``cxrdx ARGV`` in-process: (exit code, stdout, stderr); never a traceback."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    return buf.getvalue()


def lungs_and_centre(img: np.ndarray) -> tuple[float, float, float]:
    """Mean of the left and right lung fields and the mediastinum, over the middle rows."""
    h, w = img.shape
    rows = img[int(h * 0.35) : int(h * 0.65)]
    return (
        float(rows[:, int(w * 0.10) : int(w * 0.33)].mean()),
        float(rows[:, int(w * 0.67) : int(w * 0.90)].mean()),
        float(rows[:, int(w * 0.45) : int(w * 0.55)].mean()),
    )


def looks_like_chest(img: np.ndarray) -> bool:
    """Bright = dense: the mediastinum is brighter than both lung fields."""
    left, right, centre = lungs_and_centre(img)
    return max(left, right) < centre
