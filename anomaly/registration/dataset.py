"""A whole BIDS dataset through registration: :func:`prepare_dataset`.

The output is a BIDS-derivatives dataset in MNI152 space that ``fit-normative`` and
``score`` read as they read any dataset: ``dataset_description.json`` (DatasetType
"derivative"), a copy of ``participants.tsv`` (and ``participants.json``), and one
folder per subject (:mod:`anomaly.registration.subject`). Finished subjects are
skipped, so an interrupted run resumes; ``shard`` splits the subjects between SLURM
array tasks, ``n_jobs`` between processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from anomaly import __version__
from anomaly.io import (
    AnomalyInputError,
    Subject,
    check_output_dir,
    find_subjects,
    write_bytes,
    write_json,
)
from anomaly.registration.register import MODES
from anomaly.registration.subject import is_prepared, prepare_subject
from anomaly.registration.template import SPACE

__all__ = ["prepare_dataset"]


def _check_settings(mode: str, n_jobs: int, shard: tuple[int, int] | None) -> None:
    """Refuse an unknown mode, a bad job count or shard."""
    if mode not in MODES:
        raise AnomalyInputError(f"registration: {mode!r} is not one of {', '.join(MODES)}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise AnomalyInputError(f"n_jobs: expected a positive integer, got {n_jobs!r}")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise AnomalyInputError(f"shard: expected (index, count) with 0 <= index < count, got {shard!r}")


def prepare_dataset(bids_dir: str | os.PathLike, out_dir: str | os.PathLike, *, mode: str = "fast",
                    resolution: float = 2.0, n_jobs: int = 1, shard: tuple[int, int] | None = None,
                    participant_labels: Iterable[str] | None = None,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Register every subject of a native-space BIDS dataset to MNI152.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        Input BIDS dataset (native space; each subject needs a T1w).
    out_dir : str or os.PathLike
        Prepared dataset folder: created, or an earlier (partial) run to resume.
    mode : {"fast", "accurate"}, default="fast"
        Registration settings.
    resolution : float, default=2.0
        Voxel size (mm) of the written images.
    n_jobs : int, default=1
        Subjects registered in parallel processes, one core each (ANTs runs on one
        thread per process, so that a subject gives the same images every run).
    shard : (int, int), optional
        ``(i, n)``: only subjects i, i+n, i+2n... of the sorted list.
    participant_labels : iterable of str, optional
        Only these subjects.
    progress : bool, default=True
        Print one line per subject.

    Returns
    -------
    list of dict
        QC record of every subject prepared by this call (skipped ones excluded).

    Raises
    ------
    AnomalyInputError
        Bad settings, an unreadable dataset, an output folder inside the input, or a
        subject that cannot be prepared (the subjects finished before stay done).
    """
    _check_settings(mode, n_jobs, shard)
    subjects = find_subjects(bids_dir, participant_labels=participant_labels)
    out = check_output_dir(out_dir, inputs=[bids_dir])
    _write_dataset_files(Path(bids_dir), out, mode)
    if shard is not None:
        subjects = subjects[shard[0]::shard[1]]
    todo = [s for s in subjects if not is_prepared(out, s.label)]
    if progress and len(todo) < len(subjects):
        print(f"prepare: {len(subjects) - len(todo)} subject(s) already done, skipped")
    if n_jobs == 1 or len(todo) <= 1:
        return [_run(subject, out, mode, resolution, progress) for subject in todo]
    return _run_pool(todo, out, mode, resolution, min(n_jobs, len(todo)), progress)


def _run(subject: Subject, out: Path, mode: str, resolution: float, progress: bool) -> dict[str, Any]:
    record = prepare_subject(subject, out, mode=mode, resolution=resolution)
    if progress:
        print(f"prepare: {subject.participant_id} done in {record['seconds']:.0f} s "
              f"(T1w-template correlation {record['t1w_template_correlation']:.3f})", flush=True)
    return record


def _run_pool(todo: list[Subject], out: Path, mode: str, resolution: float, workers: int,
              progress: bool) -> list[dict[str, Any]]:
    """Prepare subjects in ``workers`` processes; the first failure stops the rest."""
    records = []
    # Each process runs ANTs on one thread (reproducible: anomaly.registration.register._ants).
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run, s, out, mode, resolution, progress) for s in todo]
        try:
            for future in as_completed(futures):
                records.append(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return records


def _write_dataset_files(bids_dir: Path, out: Path, mode: str) -> None:
    """dataset_description.json, and participants.tsv/json copied from the input."""
    write_json({
        "Name": f"anomaly prepare: {bids_dir.name} in {SPACE}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "anomaly prepare", "Version": __version__,
                         "Description": f"ANTs registration ({mode}) to nilearn's MNI152 2009 template"}],
        "SourceDatasets": [{"URL": bids_dir.resolve().as_uri()}],
    }, out / "dataset_description.json")
    for name in ("participants.tsv", "participants.json"):
        source = bids_dir / name
        if source.is_file():
            write_bytes(source.read_bytes(), out / name)
