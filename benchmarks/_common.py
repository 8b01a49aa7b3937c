"""Helpers shared by the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np


def machine() -> str:
    """CPU model and cores (from /proc/cpuinfo), for the header of every table."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {os.cpu_count()} logical cores ({usable} usable); Python {platform.python_version()}"


def to_json(result: dict) -> str:
    """JSON text of a benchmark result (DataFrames as records, NaN as null)."""
    def clean(v):
        if hasattr(v, "to_dict") and hasattr(v, "columns"):  # a pandas DataFrame
            return clean(v.to_dict(orient="records"))
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, np.ndarray)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return float(v) if np.isfinite(v) else None
        if isinstance(v, (np.integer, np.bool_)):
            return v.item()
        return v

    return json.dumps(clean(result), indent=1)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure (tight layout, parent folders created) and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
