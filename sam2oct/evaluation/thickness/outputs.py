"""Writing outputs whole or not at all, and the figure canvas (Agg, without pyplot's global state)."""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np


def atomic_write(path, data: bytes) -> None:
    """Write to a hidden file beside path, then rename: an interrupt leaves no partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def file_stem(name: str) -> str:
    """A layer name as a file name part: 'IS/OS' -> 'IS_OS', 'GCL+IPL' stays."""
    return re.sub(r"[^A-Za-z0-9+._-]+", "_", name).strip("._") or "layer"


def new_figure(width_in: float, height_in: float, dpi: int = 130):
    """A matplotlib Figure drawn by the Agg canvas (the pyplot backend is never touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
