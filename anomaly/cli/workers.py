"""Score subjects in worker processes: ``anomaly score --jobs N``.

Each worker process loads the model, the atlases and the CRS-R model once (the pool
initializer) and then scores whole subjects: reading, the forward pass, tables, maps
and figures. Subjects are independent, so the outputs are the same files with the same
content as with one process; only the order in which subjects finish changes.

Processes are started with ``spawn``: a forked child of a process whose torch or
OpenMP thread pools already ran can hang, and spawn behaves the same on every platform.
Each worker gets ``cores // N`` torch threads (at least one), so that N processes do
not ask for more threads than there are cores. Ctrl-C is handled by the main process
alone (workers ignore SIGINT and are stopped with the pool).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from anomaly.io import AnomalyInputError


@dataclass(frozen=True)
class ScoreSettings:
    """What a worker needs to score subjects like the main process would.

    Parameters
    ----------
    model_dir : path
        Normative model folder.
    atlases : tuple of str or path
        Atlas names or label images.
    out_dir : path
        Output root (already checked by the main process).
    figures : bool
        Draw figures and write the HTML reports.
    crs_model : path, optional
        CRS-R model folder for the reports.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    threads : int
        torch threads of each worker.
    force : bool
        Score images that quality control refuses (``score --force``).
    """

    model_dir: Path
    atlases: tuple
    out_dir: Path
    figures: bool = True
    crs_model: Path | None = None
    device: str = "cpu"
    threads: int = 1
    force: bool = False


@dataclass
class Outcome:
    """What scoring one subject gave: its label, seconds, error (None if scored) and step times."""

    label: str
    seconds: float
    error: str | None = None
    timings: dict = field(default_factory=dict)


def threads_per_worker(n_jobs: int) -> int:
    """torch threads for each of ``n_jobs`` busy processes: the usable cores shared out, at least 1.

    Parameters
    ----------
    n_jobs : int
        Processes (or busy threads) that share the cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_jobs))


@contextmanager
def compute_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch threads and BLAS threads inside the block (None: leave them).

    In a batch scored in one process, the prefetch threads (and the figure helper) keep
    another core busy: the forward pass and the matrix products of resampling and
    smoothing get cores // 2 threads each, so that library threads never wait for a
    busy core (OpenBLAS threads spin while they wait: on a loaded 2-core machine a 15 ms
    product took up to 0.5 s with two threads). torch is only touched when the model
    already imported it. Restored on exit.

    Parameters
    ----------
    threads : int or None
        Threads for each library; None leaves them as they are.
    """
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


# ----------------------------------------------------------------- in the worker
_WORKER: dict = {}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"anomaly: warning: {message}\n"


def _init_worker(settings: ScoreSettings) -> None:
    """Pool initializer: load the models and atlases once for this process."""
    import signal

    import torch

    from anomaly.cli.scorer import Scorer
    from anomaly.normative import NormativeModel

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops the pool
    warnings.formatwarning = _one_line_warning
    torch.set_num_threads(settings.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=settings.threads, user_api="blas")  # for the life of the worker
    model = NormativeModel.load(settings.model_dir, device=settings.device)
    crs = None
    if settings.crs_model is not None:
        from anomaly.crs import load_crs_model

        crs = load_crs_model(settings.crs_model)
    scorer = Scorer(model, settings.atlases)
    scorer.force = settings.force
    _WORKER.update(scorer=scorer, crs=crs, settings=settings)


def _score_in_worker(job) -> Outcome:
    """Score one job in this worker; an invalid input becomes the outcome's error."""
    scorer, settings = _WORKER["scorer"], _WORKER["settings"]
    return score_one(scorer, job, settings.out_dir, figures=settings.figures, crs=_WORKER["crs"])


def score_one(scorer, job, out_dir: Path, *, figures: bool, crs=None, prep=None, verdict=None,
              wait_writes: bool = True) -> Outcome:
    """Score one job with ``scorer``; returns its :class:`Outcome` (errors included).

    Parameters
    ----------
    scorer : Scorer
    job : ScoreJob
    out_dir : path
    figures : bool
    crs : CRS-R model, optional
    prep : Preprocessed, optional
        The job already preprocessed (by the prefetch thread).
    verdict : SubjectQC, optional
        Its quality-check verdict (:meth:`Scorer.assess_quality`), if already computed.
    wait_writes : bool
        Wait for the file writes before returning.
    """
    before = dict(scorer.timings)
    start = time.perf_counter()
    error = None
    try:
        scorer.score_subject(job.label, job.images, out_dir, age=job.age, sex=job.sex, prep=prep,
                             verdict=verdict, figures=figures, crs_model=crs, wait=wait_writes)
    except AnomalyInputError as exc:
        error = str(exc)
    timings = {k: v - before.get(k, 0.0) for k, v in scorer.timings.items()}
    return Outcome(job.label, time.perf_counter() - start, error, timings)


# ----------------------------------------------------------------- in the main process
class WorkerPool:
    """A pool of scoring processes (use as a context manager).

    Parameters
    ----------
    settings : ScoreSettings
    n_jobs : int
        Worker processes.
    """

    def __init__(self, settings: ScoreSettings, n_jobs: int) -> None:
        import multiprocessing

        self.n_jobs = n_jobs
        self._pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(settings,))

    def imap(self, jobs: Sequence) -> Iterator[Outcome]:
        """Score ``jobs``; yields each outcome as soon as its subject is done.

        At most two jobs per worker are queued at a time, so that an interruption
        leaves few subjects started.

        Parameters
        ----------
        jobs : sequence of ScoreJob
            Subjects already checked (:mod:`anomaly.cli.inputs`).
        """
        queue = iter(jobs)
        running: set[Future] = set()
        self._fill(queue, running)
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            self._fill(queue, running)
            for future in done:
                yield future.result()

    def _fill(self, queue: Iterable, running: set[Future]) -> None:
        while len(running) < 2 * self.n_jobs:
            job = next(queue, None)
            if job is None:
                return
            running.add(self._pool.submit(_score_in_worker, job))

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers.

        Parameters
        ----------
        cancel : bool
            Drop the subjects not started yet (after an error or Ctrl-C).
        """
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


__all__ = ["Outcome", "ScoreSettings", "WorkerPool", "compute_threads", "score_one", "threads_per_worker"]
