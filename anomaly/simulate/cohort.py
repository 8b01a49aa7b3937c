"""A simulated BIDS cohort of controls and coma patients: :func:`simulate_cohort`.

The dataset, in MNI152 space::

    dataset_description.json  README  participants.tsv  participants.json
    sub-<l>/anat/sub-<l>_T1w.nii.gz, sub-<l>/anat/sub-<l>_FLAIR.nii.gz
    sub-<l>/pet/sub-<l>_pet.nii.gz
    derivatives/simulation/dataset_description.json, truth.tsv,
        causal_regions.json, simulation.json,
        sub-<l>/sub-<l>_desc-lesion_mask.nii.gz, ..._desc-focal_mask.nii.gz,
        ..._desc-brain_mask.nii.gz (patients; see :mod:`anomaly.simulate.truth`)

with labels ``hc001``... for controls and ``pt001``... for patients.

**Missing data.** ``round(missing_fraction * n_patients)`` patients (half up), chosen
at random, miss one randomly chosen modality (never all of them); controls miss none
unless ``missing_in_controls`` is set.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.io import AnomalyInputError
from anomaly.simulate import writer
from anomaly.simulate.checks import (
    check_count,
    check_fraction,
    check_modalities,
    check_resolution,
    check_seed,
)
from anomaly.simulate.config import MODALITIES, SimulationConfig
from anomaly.simulate.seeds import GROUP_CODES, MISSING_STREAM
from anomaly.simulate.workers import Task, n_workers, run_tasks

__all__ = ["simulate_cohort"]

_LABEL_PREFIX = {"control": "hc", "patient": "pt"}


def simulate_cohort(
    out_dir: str | os.PathLike, *, n_healthy: int = 20, n_patients: int = 10, seed: int = 0,
    resolution: float = 2.0, label_noise_sd: float = 1.5, missing_fraction: float = 0.1,
    modalities: Sequence[str] = MODALITIES, n_jobs: int = 1, progress: bool = True,
    write_crs_sd: bool = False, missing_in_controls: bool = False,
    missing_modalities: Sequence[str] | None = None, config: SimulationConfig | None = None,
) -> Path:
    """Write a simulated BIDS cohort of controls and coma patients with ground truth.

    Parameters
    ----------
    out_dir : str or os.PathLike
        New or empty folder for the dataset (parents are created). The dataset is
        written in a hidden temporary folder next to it and renamed at the end, so
        an interrupted run leaves nothing behind.
    n_healthy, n_patients : int, default=20, 10
        Number of controls (``sub-hc001``...) and patients (``sub-pt001``...).
    seed : int, default=0
        Seed of every random draw; the same seed gives identical data.
    resolution : float, default=2.0
        Voxel size in mm of the MNI152 template grid (2, 3 or 4 are typical).
    label_noise_sd : float, default=1.5
        SD of the CRS-R label noise (points).
    missing_fraction : float, default=0.1
        Fraction of patients that miss one modality (rounded to a count).
    modalities : sequence of str, default=("T1w", "FLAIR", "pet")
        Modalities to write.
    n_jobs : int, default=1
        Worker processes (-1: all cores). Results do not depend on it.
    progress : bool, default=True
        Show a progress bar.
    write_crs_sd : bool, default=False
        Add a ``crs_sd`` column (= ``label_noise_sd``) to ``participants.tsv``.
    missing_in_controls : bool, default=False
        Let controls miss modalities too, with the same fraction.
    missing_modalities : sequence of str, optional
        The modalities a subject may miss (one of them, drawn per subject); default: any
        of ``modalities``. ``("pet",)`` mimics a clinical cohort where some patients had
        no PET (EVALUATION.md: about 15 %). The same seed keeps the same subjects and the
        same subjects missing something, whatever this list.
    config : SimulationConfig, optional
        Model parameters; defaults to ``SimulationConfig()``.

    Returns
    -------
    pathlib.Path
        The dataset folder (layout: see the module docstring).

    Raises
    ------
    AnomalyInputError
        Invalid parameter, or ``out_dir`` exists and is not an empty folder.

    Examples
    --------
    >>> simulate_cohort("sim", n_healthy=4, n_patients=2, resolution=4)  # doctest: +SKIP
    PosixPath('sim')
    """
    n_healthy, n_patients, seed = _check_cohort(n_healthy, n_patients, seed)
    settings = _check_settings(seed, resolution, label_noise_sd, missing_fraction, modalities,
                               config)
    settings["write_crs_sd"] = write_crs_sd
    settings["missing_modalities"] = _check_missing(missing_modalities, settings["modalities"])
    out = _check_out_dir(out_dir)
    tasks = _plan(n_healthy, n_patients, seed, settings["modalities"], settings["missing_fraction"],
                  missing_in_controls, settings["missing_modalities"])
    return _write_dataset(out, tasks, n_workers(n_jobs, len(tasks)), progress, settings)


def _write_dataset(out: Path, tasks: list[Task], workers: int, progress: bool,
                   settings: dict[str, Any]) -> Path:
    """Run the tasks and write the tables in a temporary folder, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    init_args = (settings["resolution"], settings["config"], settings["modalities"],
                 settings["seed"], str(tmp), settings["label_noise_sd"])
    try:
        rows = run_tasks(tasks, workers, progress, init_args)
        ordered = sorted(tasks, key=lambda t: (GROUP_CODES[t.group], t.index))
        # Called through the module, so that a test can make it fail.
        writer.write_tables(tmp, rows, [f"sub-{t.label}" for t in ordered], **settings)
        if out.exists():
            out.rmdir()  # empty (checked above); rename needs it gone on some systems
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_cohort(n_healthy: int, n_patients: int, seed: int) -> tuple[int, int, int]:
    """Subject counts (at least one subject) and the seed."""
    n_healthy = check_count(n_healthy, "n_healthy")
    n_patients = check_count(n_patients, "n_patients")
    if n_healthy + n_patients == 0:
        raise AnomalyInputError("n_healthy, n_patients: at least one subject is needed")
    return n_healthy, n_patients, check_seed(seed)


def _check_settings(seed: int, resolution: float, label_noise_sd: float, missing_fraction: float,
                    modalities: Sequence[str], config: SimulationConfig | None) -> dict[str, Any]:
    """Checked keyword arguments of :func:`anomaly.simulate.writer.write_tables` (but two)."""
    return {  # checked in the order of the signature
        "seed": seed,
        "resolution": check_resolution(resolution),
        "label_noise_sd": check_fraction(label_noise_sd, "label_noise_sd", upper=None),
        "missing_fraction": check_fraction(missing_fraction, "missing_fraction"),
        "modalities": check_modalities(modalities),
        "config": _check_config(config),
    }


def _check_missing(missing: Sequence[str] | None, modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The modalities a subject may miss: distinct, among the written ones (default: all)."""
    if missing is None:
        return modalities
    chosen = check_modalities(missing)
    extra = [m for m in chosen if m not in modalities]
    if extra:
        raise AnomalyInputError(f"missing_modalities: {extra} not among the written modalities {list(modalities)}")
    return chosen


def _check_config(config: SimulationConfig | None) -> SimulationConfig:
    """``config``, or the default configuration."""
    config = config if config is not None else SimulationConfig()
    if not isinstance(config, SimulationConfig):
        raise AnomalyInputError(f"config: expected a SimulationConfig, got {type(config).__name__}")
    return config


def _check_out_dir(out_dir: str | os.PathLike) -> Path:
    """The output folder, which must be new or empty."""
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AnomalyInputError(f"{out}: output folder exists and is not empty")
    return out


def _plan(n_healthy: int, n_patients: int, seed: int, modalities: tuple[str, ...],
          missing_fraction: float, missing_in_controls: bool,
          missing_modalities: tuple[str, ...] | None = None) -> list[Task]:
    """Subject labels and missing modalities (a cohort-level draw)."""
    choices = missing_modalities or modalities
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(MISSING_STREAM,)))
    tasks: list[Task] = []
    for group, n in (("patient", n_patients), ("control", n_healthy)):
        width = max(3, len(str(n)))
        missing: dict[int, tuple[str, ...]] = {}
        # Fixed draws per group, whether used or not.
        order = rng.permutation(n)
        which = rng.integers(0, len(modalities), size=n)
        if len(modalities) > 1 and (group == "patient" or missing_in_controls):
            n_missing = int(math.floor(missing_fraction * n + 0.5))  # half up, not to even
            for i in order[:n_missing]:
                missing[int(i)] = (choices[which[i] % len(choices)],)
        tasks += [
            Task(group, i, f"{_LABEL_PREFIX[group]}{i + 1:0{width}d}", missing.get(i, ()))
            for i in range(n)
        ]
    return tasks
