"""``anomaly score``: plan the jobs, score them, and index the outputs.

Turns the command's inputs (one subject's NIfTI files, or a BIDS dataset folder) into
one :class:`ScoreJob` per subject, keeps a ``--shard`` of them, loads the models once,
scores every job with a :class:`anomaly.cli.scorer.Scorer` (the next subject is
preprocessed in a background thread meanwhile) and writes the derivative dataset's
``dataset_description.json`` and ``index.html``. A subject whose input is invalid is
reported on one stderr line and skipped; the exit status is then 2.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from anomaly import __version__
from anomaly.atlas import DEFAULT_ATLAS
from anomaly.cli.scorer import Scorer
from anomaly.cli.status import EXIT_BAD_INPUT, EXIT_OK
from anomaly.io import (AnomalyInputError, check_output_dir, find_subjects, modality_from_path, subject_from_path,
                        write_json)
from anomaly.normative import NormativeModel
from anomaly.preprocess import Preprocessed


# --------------------------------------------------------------------------- jobs
@dataclass
class ScoreJob:
    """One subject to score."""

    label: str
    images: dict
    age: float | None = None
    sex: str | None = None


def _clean_label(text: str, what: str) -> str:
    label = str(text).removeprefix("sub-")
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise AnomalyInputError(f"{what}: subject label {text!r} must be letters and digits only (BIDS)")
    return label


def jobs_from_inputs(inputs: Sequence[Path], *, participant_labels=None, modalities=None, subject=None,
                     age=None, sex=None, group: str = "patient") -> tuple[list[ScoreJob], list[Path]]:
    """Turn CLI inputs into scoring jobs; returns the jobs and the inputs to protect.

    A single folder input is a BIDS dataset (its subjects sorted by label); otherwise
    the inputs are NIfTI files of one subject whose modalities come from their BIDS
    suffixes (or ``modalities``, one per file).
    """
    inputs = [Path(p) for p in inputs]
    if len(inputs) == 1 and inputs[0].is_dir():
        bids_dir = inputs[0]
        subjects = find_subjects(bids_dir, participant_labels=participant_labels,
                                 group=None if group == "all" or participant_labels else group)
        jobs = [ScoreJob(s.label, dict(s.images), s.age, s.sex) for s in subjects]
        return jobs, [bids_dir]
    images = _file_images(inputs, modalities)
    subject = _clean_label(subject, "--subject") if subject is not None else _subject_of_files(inputs)
    # The files themselves: check_output_dir refuses an output inside their BIDS dataset
    # (not one next to loose files).
    return [ScoreJob(subject, images, age, sex)], list(inputs)


def _file_images(inputs: Sequence[Path], modalities: Sequence[str] | None) -> dict[str, Path]:
    """Modality -> file of one subject's NIfTI inputs (BIDS suffixes, or ``modalities`` in order)."""
    for path in inputs:
        if path.is_dir():
            raise AnomalyInputError(f"{path}: is a folder; give one BIDS folder alone or NIfTI files")
        if not path.exists():
            raise AnomalyInputError(f"{path}: file not found")
    if modalities and len(modalities) != len(inputs):
        raise AnomalyInputError(
            f"--modality: got {len(modalities)} modalities for {len(inputs)} input files")
    images = {}
    for i, path in enumerate(inputs):
        modality = modalities[i] if modalities else modality_from_path(path)
        if modality is None:
            raise AnomalyInputError(
                f"{path}: cannot tell the modality from the file name; name it like sub-01_T1w.nii.gz "
                f"or pass --modality")
        if modality in images:
            raise AnomalyInputError(f"{path}: a second {modality} image for the same subject")
        images[modality] = path
    return images


def _subject_of_files(inputs: Sequence[Path]) -> str:
    """The subject label of file inputs: their sub-<label>, else the first file's name."""
    labels = {subject_from_path(p) for p in inputs} - {None}
    if len(labels) > 1:
        raise AnomalyInputError(f"input files belong to several subjects ({', '.join(sorted(labels))}); "
                                f"score them one at a time or as a BIDS dataset")
    if labels:
        return labels.pop()
    # e.g. patient.nii.gz -> sub-patient
    return re.sub(r"[^A-Za-z0-9]", "", inputs[0].name.split(".")[0]) or "01"


def _match_modalities(jobs: list[ScoreJob], model_modalities: Sequence[str]) -> None:
    """Spell modalities as the model does ("PET" -> "pet", "t1w" -> "T1w")."""
    spelling = {m.lower(): m for m in model_modalities}
    for job in jobs:
        job.images = {spelling.get(str(m).lower(), m): p for m, p in job.images.items()}


def shard_jobs(jobs: Sequence[ScoreJob], shard: tuple[int, int] | None) -> list[ScoreJob]:
    """Jobs ``I, I+N, I+2N...`` of shard ``(I, N)`` (0-based): N shards cover each job once."""
    if shard is None:
        return list(jobs)
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise AnomalyInputError(f"--shard: expected 0 <= I < N in I/N; got {index}/{count}")
    return list(jobs)[index::count]


# --------------------------------------------------------------------------- command
def score_command(inputs: Sequence[Path], *, model_dir: Path, out_dir: Path, atlases=None,
                  participant_labels=None, modalities=None, subject=None, age=None, sex=None,
                  group: str = "patient", shard: tuple[int, int] | None = None, crs_model=None,
                  figures: bool = True, device: str = "auto", progress: bool = True) -> int:
    """The ``anomaly score`` command; returns the exit status.

    A subject whose input is invalid is reported on one stderr line and skipped, the
    others are scored; the exit status is then 2.
    """
    all_jobs, protected = jobs_from_inputs(inputs, participant_labels=participant_labels,
                                           modalities=modalities, subject=subject, age=age, sex=sex,
                                           group=group)
    jobs = shard_jobs(all_jobs, shard)
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {len(jobs)} of {len(all_jobs)} subject(s)"
              + (f" ({', '.join('sub-' + j.label for j in jobs)})" if len(jobs) <= 10 else ""))
        if not jobs:
            return EXIT_OK
    model = NormativeModel.load(model_dir, device=device)
    _match_modalities(jobs, model.modalities_)
    crs = None
    if crs_model is not None:
        from anomaly.crs import load_crs_model

        crs = load_crs_model(crs_model)
    created = not Path(out_dir).exists()
    out_dir = check_output_dir(out_dir, inputs=[*protected, model_dir])
    try:
        with Scorer(model, atlases or (DEFAULT_ATLAS,)) as scorer:
            failures = score_jobs(jobs, scorer, out_dir, figures=figures, crs=crs, progress=progress)
    except AnomalyInputError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no trace
        raise
    return EXIT_BAD_INPUT if failures else EXIT_OK


def score_jobs(jobs: Sequence[ScoreJob], scorer: Scorer, out_dir: Path, *, figures: bool, crs,
               progress: bool) -> int:
    """Score jobs with one-subject look-ahead preprocessing; returns the failure count.

    A job whose input is invalid is reported on one stderr line and skipped, unless it
    is the only job (its error is then raised). Once any job succeeded, the output root
    gets ``dataset_description.json`` and an up-to-date ``index.html``.
    """
    start = time.perf_counter()
    failures = _score_prefetching(jobs, scorer, out_dir, figures=figures, crs=crs, progress=progress)
    scorer.flush()
    if failures < len(jobs):
        write_json({"Name": "anomaly scores", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "anomaly", "Version": __version__,
                                     "Description": "normative-model anomaly maps and region tables"}]},
                   out_dir / "dataset_description.json")
        write_index(out_dir)
    elapsed = time.perf_counter() - start
    done = len(jobs) - failures
    print(f"scored {done} subject(s) in {elapsed:.1f} s"
          + (f" ({elapsed / done:.2f} s per subject)" if done > 1 else "") + f" into {out_dir}"
          + (f"; {failures} failed" if failures else ""))
    return failures


def _score_prefetching(jobs: Sequence[ScoreJob], scorer: Scorer, out_dir: Path, *, figures: bool, crs,
                       progress: bool) -> int:
    """Score each job while the next one is preprocessed in a thread; returns the failures."""
    from tqdm.auto import tqdm

    model = scorer.model
    failures = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomaly-prefetch") as pool:
        def load(job: ScoreJob) -> tuple[Preprocessed, float]:
            t0 = time.perf_counter()
            return model.preprocess(job.images), time.perf_counter() - t0

        pending = pool.submit(load, jobs[0]) if jobs else None
        for i, job in enumerate(tqdm(jobs, desc="scoring", unit="subject", disable=not progress)):
            future = pending
            # Submitted before scoring this one: the next subject is read meanwhile.
            pending = pool.submit(load, jobs[i + 1]) if i + 1 < len(jobs) else None
            try:
                t0 = time.perf_counter()
                prep, seconds = future.result()
                scorer.add_time("wait_preprocess", time.perf_counter() - t0)
                scorer.add_time("preprocess", seconds)
                scorer.score_subject(job.label, job.images, out_dir, age=job.age, sex=job.sex, prep=prep,
                                     figures=figures, crs_model=crs, wait=False)
            except AnomalyInputError as exc:
                if len(jobs) == 1:
                    raise
                failures += 1
                print(f"anomaly score: error: sub-{job.label}: {exc}", file=sys.stderr)
    return failures


# --------------------------------------------------------------------------- index
def _index_entries(out_dir: Path) -> list[dict]:
    entries = []
    for scores in sorted(out_dir.glob("sub-*/sub-*_scores.json")):
        label = scores.parent.name
        if not scores.name.startswith(label + "_"):
            continue
        try:
            info = json.loads(scores.read_text())
        except (OSError, ValueError):
            info = {}  # another shard may be rewriting it; still list the subject
        report = scores.parent / f"{label}_report.html"
        percent = info.get("global_cortical_pet_percent")
        crs = info.get("crs") if isinstance(info.get("crs"), dict) else {}
        entry = {"participant_id": label,
                 "modalities missing": ", ".join(info.get("modalities_missing", [])) or "none",
                 "max anomaly": _round(info.get("max_anomaly"), 2),
                 "cortical PET % of normal": _round(percent, 1),
                 "most abnormal regions": ", ".join(info.get("top_regions", []))}
        if crs:
            entry["CRS-R estimate"] = _round(crs.get("crs_pred"), 1)
        entry["report"] = str(report.relative_to(out_dir)) if report.exists() else None
        entries.append(entry)
    return entries


def _round(value, digits: int):
    return round(float(value), digits) if isinstance(value, (int, float)) else None


def write_index(out_dir: Path) -> Path:
    """index.html at the output root linking every subject scored there.

    Built from the ``sub-*/sub-*_scores.json`` files present, so that shards of one
    cohort writing into the same folder each leave a complete index once all have
    finished; the page is replaced atomically, and rebuilt if subjects appeared while
    it was written (another shard finishing at the same moment).
    """
    from anomaly.report.html import render_index

    out_dir = Path(out_dir)
    entries = None
    for _ in range(5):
        current = _index_entries(out_dir)
        if entries is not None and [e["participant_id"] for e in current] == \
                [e["participant_id"] for e in entries] and \
                [e["report"] for e in current] == [e["report"] for e in entries]:
            break
        entries = current
        render_index(out_dir / "index.html", entries, title="anomaly: subject reports",
                            summary={"subjects": len(entries), "toolkit version": __version__})
    return out_dir / "index.html"


__all__ = ["ScoreJob", "jobs_from_inputs", "score_command", "score_jobs", "shard_jobs", "write_index"]
