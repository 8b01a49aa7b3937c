"""Helpers shared by the benchmarks: machine description, JSON results, figures, child fits,
``--params`` keywords."""

from __future__ import annotations

import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: The repository root: the folder that holds the ``benchmarks`` package.
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (``platform.processor()`` where it cannot be read)."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity), or all logical cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine() -> str:
    """CPU model and cores, for the header of every table."""
    return (f"{cpu_model()}; {os.cpu_count()} logical cores ({usable_cores()} usable); "
            f"Python {platform.python_version()}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as text (other jobs may share the CPU)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def fmt_met(met: bool | None) -> str:
    """A target's outcome in a Markdown table: yes, **NO**, or n/a when not evaluated."""
    return "n/a" if met is None else ("yes" if met else "**NO**")


def _clean(value):
    """``value`` with DataFrames as records, arrays as lists, NaN and inf as None."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return _clean(value.to_dict(orient="records"))
    if isinstance(value, dict):
        return {str(k): _clean(x) for k, x in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(x) for x in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def to_json(result: dict) -> str:
    """JSON text of a benchmark result (DataFrames as records, NaN as null)."""
    return json.dumps(_clean(result), indent=1)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write a benchmark result as JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(result))
    return path


def nan_for_none(values: dict) -> dict:
    """A JSON-loaded dict of numbers with null (written for NaN) back as NaN."""
    return {k: float("nan") if v is None else v for k, v in values.items()}


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


def fit_in_child(method: str, bids: Path, out: Path, settings: dict) -> tuple[float, float]:
    """Fit a normative model in a child process, so that its peak memory is its own.

    Runs ``python -m benchmarks._fit`` (from the repository root, with absolute paths)
    and reads the JSON it writes.

    Returns
    -------
    tuple of float
        Fit seconds (fit and save) and peak resident memory of the child in MB.
    """
    with tempfile.TemporaryDirectory(prefix="anomaly-bench-fit-") as tmp:
        report = Path(tmp) / "fit.json"
        argv = [sys.executable, "-m", "benchmarks._fit", method, str(Path(bids).resolve()),
                str(Path(out).resolve()), json.dumps(settings), str(report)]
        # stdout is the benchmark's table: the child's own prints stay out of it
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        info = json.loads(report.read_text())
    return info["seconds"], info["peak_mb"]


def parse_model_params(text: str, reserved: tuple[str, ...]) -> dict:
    """Extra :class:`~anomaly.normative.NormativeModel` keyword arguments from a JSON object.

    Parameters
    ----------
    text : str
        JSON object, e.g. ``'{"channels": [32, 64, 128, 256], "augment": 1}'``.
    reserved : tuple of str
        Keywords the calling benchmark sets from its own options (e.g.
        ``benchmarks.detection.RESERVED_PARAMS``); refused here.

    Returns
    -------
    dict
        The keyword arguments.

    Raises
    ------
    ValueError
        Not JSON, a keyword ``NormativeModel`` does not take, or a reserved one.
    TypeError
        JSON, but not an object.
    """
    from anomaly.normative import NormativeModel

    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--params: not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise TypeError(f"--params: expected a JSON object of NormativeModel keywords, got {text!r}")
    known = set(inspect.signature(NormativeModel).parameters)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"--params: unknown NormativeModel keyword(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known - set(reserved)))}")
    taken = sorted(set(params) & set(reserved))
    if taken:
        raise ValueError(f"--params: {', '.join(taken)} is set by the benchmark's own option, not --params")
    return params
