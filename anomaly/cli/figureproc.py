"""Draw subjects' figures and reports in a separate process, off the scoring's critical path.

Drawing a subject's figures (two glass brains, the peak slices, the HTML report) is
pure Python and matplotlib: it holds the GIL, so a thread would not let it overlap the
next subject's preprocessing, which holds the GIL too (scipy's resampling). A single
helper process can: while the main process reads, resamples and scores subject *n+1*,
the helper draws subject *n* on another core. The figures are the same files (the
helper runs :func:`anomaly.report.subject.write_subject_figures` with the same
arguments, and keeps its own glass-brain outlines between subjects).

The main process sends the maps the figures need (``z``, ``anomaly``, the grid), not
the preprocessed images. Errors come back when the scorer waits for its pending work
(:meth:`anomaly.cli.scorer.Scorer.flush`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_HELPER: dict = {}


def _init_helper(t1: np.ndarray) -> None:
    """Initializer of the helper process: the background anatomy and a renderer cache."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops the helper
    warnings.formatwarning = lambda message, *args, **kwargs: f"anomaly: warning: {message}\n"
    _HELPER.update(t1=t1, renderers={})


def _draw(label: str, score: Any, table: pd.DataFrame, values: dict, folder: Path) -> dict[str, Path]:
    from anomaly.report.subject import write_subject_figures

    return write_subject_figures(label, score, table, values, folder, t1=_HELPER["t1"],
                                 renderers=_HELPER["renderers"])


class FigureProcess:
    """One helper process that draws figures and reports in submission order.

    Parameters
    ----------
    t1 : numpy.ndarray
        Template T1w on the model grid (the slices' background).
    """

    def __init__(self, t1: np.ndarray) -> None:
        import multiprocessing

        # spawn: a forked child of a process whose torch/OpenMP threads ran can hang.
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_helper, initargs=(t1,))

    def submit(self, label: str, score: Any, table: pd.DataFrame, values: dict, folder: Path) -> Future:
        """Queue one subject's figures and report; the future gives their paths by key.

        Parameters
        ----------
        label : str
            Subject label without ``sub-``.
        score : SubjectScore
            The scored maps; the preprocessed images (``data``) are not sent.
        table : pandas.DataFrame
            The region table of the report's atlas.
        values : dict
            The subject's ``_scores.json`` values.
        folder : path
            The subject's output folder.
        """
        slim = dataclasses.replace(score, data=np.zeros((0,), np.float32))
        return self._pool.submit(_draw, label, slim, table, values, Path(folder))

    def close(self) -> None:
        """Wait for the queued subjects and stop the helper."""
        self._pool.shutdown(wait=True)


__all__ = ["FigureProcess"]
