"""Running a cohort's subjects, in this process or in a pool of worker processes.

Each task simulates one subject from its own seed and writes its files; results do
not depend on the number of workers (see :mod:`anomaly.simulate.seeds`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.io import AnomalyInputError
from anomaly.simulate.config import SimulationConfig
from anomaly.simulate.seeds import subject_seed
from anomaly.simulate.simulator import get_simulator
from anomaly.simulate.subject import simulate_from_seed
from anomaly.simulate.writer import truth_row, write_subject

__all__ = ["Task", "n_workers", "run_tasks"]


@dataclass(frozen=True)
class Task:
    """What a worker needs to simulate and write one subject."""

    group: str
    index: int
    label: str
    missing: tuple[str, ...]


# State of this process's worker: simulator, seed, output root, label noise.
_WORKER: dict[str, Any] = {}


def _init_worker(resolution: float, config: SimulationConfig, modalities: tuple[str, ...],
                 seed: int, root: str, label_noise_sd: float) -> None:
    _WORKER.update(
        sim=get_simulator(resolution, config, modalities), seed=seed, root=Path(root),
        label_noise_sd=label_noise_sd,
    )


def _run_task(task: Task) -> dict[str, Any]:
    """Simulate one subject, write its files and return its ground-truth row."""
    sim, root = _WORKER["sim"], _WORKER["root"]
    ss = subject_seed(_WORKER["seed"], task.group, task.index)
    subject = simulate_from_seed(sim, ss, task.group, label_noise_sd=_WORKER["label_noise_sd"])
    write_subject(root, task.label, subject, task.missing, sim.config)
    return truth_row(task.label, subject, task.missing, sim.config)


def n_workers(n_jobs: int, n_tasks: int) -> int:
    """Worker processes for ``n_jobs`` (-1: all available cores), at most one per task."""
    integer = isinstance(n_jobs, (int, np.integer)) and not isinstance(n_jobs, bool)
    if not integer or n_jobs == 0 or n_jobs < -1:
        raise AnomalyInputError(
            f"n_jobs: expected a positive integer or -1 (all cores), got {n_jobs!r}"
        )
    if n_jobs == -1:
        if hasattr(os, "sched_getaffinity"):
            n_jobs = len(os.sched_getaffinity(0))
        else:
            n_jobs = os.cpu_count() or 1
    return max(1, min(int(n_jobs), n_tasks))


def run_tasks(
    tasks: list[Task], workers: int, progress: bool, init_args: tuple
) -> list[dict[str, Any]]:
    """Run the tasks in this process or in a pool; return the truth rows (any order).

    ``init_args``: resolution, config, modalities, seed, output root, label noise SD.
    """
    from tqdm.auto import tqdm

    def bar() -> Any:
        return tqdm(total=len(tasks), desc="simulate", unit="subject", disable=not progress)

    # The parent builds the template first: forked workers inherit it for free, and
    # a problem (e.g. a missing atlas) is reported once, before any work.
    _init_worker(*init_args)
    try:
        if workers == 1:
            return _run_serial(tasks, bar)
        return _run_pool(tasks, workers, init_args, bar)
    finally:
        _WORKER.clear()


def _run_serial(tasks: list[Task], bar: Callable[[], Any]) -> list[dict[str, Any]]:
    """Run the tasks one after the other in this process."""
    rows: list[dict[str, Any]] = []
    with bar() as shown:
        for task in tasks:
            rows.append(_run_task(task))
            shown.update()
    return rows


def _run_pool(tasks: list[Task], workers: int, init_args: tuple,
              bar: Callable[[], Any]) -> list[dict[str, Any]]:
    """Run the tasks in ``workers`` processes; rows in order of completion."""
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init_args) as pool:
        # Submit before the progress bar starts its monitor thread: forking a
        # multi-threaded process is unsafe.
        futures = [pool.submit(_run_task, task) for task in tasks]
        try:
            with bar() as shown:
                for future in as_completed(futures):
                    rows.append(future.result())
                    shown.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return rows
