"""``anomaly score``: plan the jobs, score them, and index the outputs.

Turns the command's inputs (one subject's NIfTI files, or a BIDS dataset folder) into
one :class:`ScoreJob` per subject, keeps a ``--shard`` of them, loads the models once,
checks every input's header before any work (:mod:`anomaly.cli.inputs`), scores every
job with a :class:`anomaly.cli.scorer.Scorer` (the next subjects are preprocessed and
quality-checked in background threads meanwhile), or in ``--jobs`` worker processes
(:mod:`anomaly.cli.workers`), logs each subject (:mod:`anomaly.cli.progress`) and
writes the derivative dataset's ``dataset_description.json`` and ``index.html``. A
subject whose input is invalid is reported on one stderr line and skipped; the exit
status is then 2.
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from anomaly import __version__
from anomaly.atlas import DEFAULT_ATLAS
from anomaly.cli.inputs import BadSubject, check_jobs, drop_unused_modalities, unused_modalities_note
from anomaly.cli.progress import FAILED, OK, SubjectLog
from anomaly.cli.scorer import Scorer
from anomaly.cli.status import EXIT_BAD_INPUT, EXIT_OK
from anomaly.cli.workers import (Outcome, ScoreSettings, WorkerPool, compute_threads, score_one,
                                 threads_per_worker)
from anomaly.io import (AnomalyInputError, check_output_dir, find_subjects, modality_from_path, subject_from_path,
                        write_json)
from anomaly.normative import NormativeModel
from anomaly.preprocess import Preprocessed


#: Subjects read ahead of the one being scored in one process, one thread each. Two keep
#: both cores of a 2-core machine busy: reading and resampling a subject cost more than
#: scoring it with the z-score model, and a single reader left the main thread waiting.
PREFETCH_DEPTH = 2

#: Batches of at least this many subjects scored in one process draw their figures in a
#: helper process. Its start-up (~2 CPU-seconds of imports) runs on another core while
#: the first subject is read and scored; for one or two subjects drawing inline is as fast.
FIGURE_HELPER_MIN_JOBS = 3


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
                  figures: bool = True, device: str = "auto", progress: bool = True, n_jobs: int = 1,
                  strict: bool = False, force: bool = False, native_maps: bool = False) -> int:
    """The ``anomaly score`` command; returns the exit status.

    ``native_maps``: also write the maps in native T1w space (inputs from ``anomaly prepare``).

    ``force``: score images that quality control refuses, marking their outputs.

    Every input is checked (:mod:`anomaly.cli.inputs`) before any work starts. A single
    subject with a bad input is one error line; in a batch, all bad subjects are named
    at the start and the others are scored (exit status 2), unless ``strict``: then
    nothing is scored or written. ``n_jobs`` > 1 scores subjects in that many worker
    processes (:mod:`anomaly.cli.workers`).
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
    good, bad = _checked_jobs(jobs, model.modalities_, strict=strict)
    if native_maps:
        from anomaly.cli.prepare import check_prepared

        check_prepared(good)
    # Loads every user atlas: a bad --atlas fails here, before anything is written.
    notes = _atlas_notes(model, atlases or (DEFAULT_ATLAS,))
    crs = None
    if crs_model is not None:
        from anomaly.crs import load_crs_model

        crs = load_crs_model(crs_model)
    created = not Path(out_dir).exists()
    out_dir = check_output_dir(out_dir, inputs=[*protected, model_dir])
    for entry in bad:
        print(f"anomaly score: error: {entry.line()}", file=sys.stderr, flush=True)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    try:
        failures = _score_checked(good, model, out_dir, atlases=tuple(atlases or (DEFAULT_ATLAS,)),
                                  model_dir=model_dir, crs=crs, crs_model=crs_model, figures=figures,
                                  device=device, progress=progress, n_jobs=n_jobs, force=force)
    except AnomalyInputError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no trace
        raise
    if created and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if native_maps:
        from anomaly.cli.prepare import native_maps_for_jobs

        native_maps_for_jobs(good, out_dir)
    return EXIT_BAD_INPUT if failures or bad else EXIT_OK


def _checked_jobs(jobs: list[ScoreJob], model_modalities: Sequence[str], *, strict: bool
                  ) -> tuple[list[ScoreJob], list[BadSubject]]:
    """The jobs that pass the input check, and the bad subjects.

    A single job that fails raises its error; with ``strict`` any failure refuses the
    batch (after naming every bad subject).
    """
    _match_modalities(jobs, model_modalities)
    good, bad = check_jobs(jobs, model_modalities)
    if bad and len(jobs) == 1:
        raise AnomalyInputError(bad[0].message)
    if bad and strict:
        for entry in bad:
            print(f"anomaly score: error: {entry.line()}", file=sys.stderr)
        raise AnomalyInputError(f"--strict: {len(bad)} of {len(jobs)} subject(s) have bad input; "
                                f"nothing was scored")
    note = unused_modalities_note(drop_unused_modalities(good, model_modalities), model_modalities)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    return good, bad


def _atlas_notes(model: NormativeModel, atlases: Sequence) -> list[str]:
    """Regions lost on the model grid, for the atlases the model did not record (one note each).

    The shipped atlases' coverage is recorded in the model at fit time and shown in
    every report; a user atlas is loaded (and so checked) and resampled here, once per run.
    """
    from anomaly.atlas import Atlas
    from anomaly.atlas.atlases import grid_coverage

    known = getattr(model, "atlas_coverage_", {}) or {}
    notes = []
    for spec in atlases:
        if str(spec) in known:
            continue
        atlas = Atlas.load(spec)
        if atlas.name in known:
            continue
        coverage = grid_coverage(atlas, model.grid_)
        if coverage["lost"]:
            listed = ", ".join(f"{name} ({index})" for index, name in coverage["lost"])
            notes.append(f"atlas '{atlas.name}': {len(coverage['lost'])} region(s) have no voxel on the "
                         f"{model.grid_.resolution:g} mm model grid (no row in the region tables): {listed}")
    return notes


def _score_checked(jobs: list[ScoreJob], model: NormativeModel, out_dir: Path, *, atlases: tuple, model_dir,
                   crs, crs_model, figures: bool, device: str, progress: bool, n_jobs: int,
                   force: bool = False) -> int:
    """Score the checked jobs serially or in worker processes; returns the failure count."""
    if not jobs:
        return 0
    n_jobs = max(1, min(n_jobs, len(jobs)))
    if n_jobs == 1:
        helper = figures and len(jobs) >= FIGURE_HELPER_MIN_JOBS and threads_per_worker(1) > 1
        # The prefetch thread (and the figure helper) keep another core busy.
        threads = threads_per_worker(2) if len(jobs) > 1 else None
        with Scorer(model, atlases) as scorer, compute_threads(threads):
            scorer.force = force
            if helper:
                scorer.draw_figures_in_helper()  # off the critical path, on another core
            return score_jobs(jobs, scorer, out_dir, figures=figures, crs=crs, progress=progress)
    settings = ScoreSettings(model_dir=Path(model_dir), atlases=atlases, out_dir=out_dir, figures=figures,
                             crs_model=crs_model, device=device, threads=threads_per_worker(n_jobs),
                             force=force)
    with WorkerPool(settings, n_jobs) as pool:
        return run_outcomes(jobs, pool.imap(jobs), out_dir, progress=progress)


def score_jobs(jobs: Sequence[ScoreJob], scorer: Scorer, out_dir: Path, *, figures: bool, crs,
               progress: bool, timings: dict | None = None) -> int:
    """Score jobs in this process, the next subjects preprocessed meanwhile; returns the failures.

    A job whose input turns out invalid while it is read is reported on one stderr line
    and skipped, unless it is the only job (its error is then raised). Once any job
    succeeded, the output root gets ``dataset_description.json`` and an up-to-date
    ``index.html``.
    """
    outcomes = _score_prefetching(jobs, scorer, out_dir, figures=figures, crs=crs)
    if len(jobs) == 1:
        outcomes = _raise_single(outcomes)
    return run_outcomes(jobs, outcomes, out_dir, progress=progress, timings=timings, flush=scorer.flush)


def _raise_single(outcomes: Iterator[Outcome]) -> Iterator[Outcome]:
    for outcome in outcomes:
        if outcome.error is not None:
            raise AnomalyInputError(outcome.error)
        yield outcome


def run_outcomes(jobs: Sequence[ScoreJob], outcomes: Iterator[Outcome], out_dir: Path, *, progress: bool,
                 timings: dict | None = None, flush=None) -> int:
    """Log each subject's outcome, then write the dataset files; returns the failure count.

    Parameters
    ----------
    jobs : sequence of ScoreJob
        The jobs being scored (for the log's width and the summary).
    outcomes : iterator of Outcome
        One per job, as they finish.
    out_dir : path
    progress : bool
        Progress bar or log lines (:class:`anomaly.cli.progress.SubjectLog`).
    timings : dict, optional
        Step times of every subject are added to it (benchmarks).
    flush : callable, optional
        Called once all outcomes are in (waits for background writes).
    """
    start = time.perf_counter()
    failures = 0
    # One subject needs no progress report (and a failure must stay one line).
    with SubjectLog([j.label for j in jobs], enabled=progress and len(jobs) > 1) as log:
        for outcome in outcomes:
            if outcome.error is not None:
                failures += 1
                log.error(outcome.label, outcome.error)
            log.done(outcome.label, outcome.seconds, FAILED if outcome.error else OK)
            if timings is not None:
                for key, value in outcome.timings.items():
                    timings[key] = timings.get(key, 0.0) + value
    if flush is not None:
        flush()
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


def _score_prefetching(jobs: Sequence[ScoreJob], scorer: Scorer, out_dir: Path, *, figures: bool, crs
                       ) -> Iterator[Outcome]:
    """Score each job while the next ones are preprocessed and quality-checked in threads; yields the outcomes.

    :data:`PREFETCH_DEPTH` subjects are read ahead (fewer on a single core), in job order.
    Subjects are read one at a time until one is read without error: that fills the
    model's and quality control's caches (atlas masks), whose first computation is not
    thread-safe (``warnings.catch_warnings``).
    """
    depth = max(1, min(PREFETCH_DEPTH, threads_per_worker(1)))
    load = _prefetch_step(scorer)
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="anomaly-prefetch") as pool:
        ahead = deque([pool.submit(load, jobs[0])] if jobs else [])
        queued, warm = 1, False
        for job in jobs:
            future = ahead.popleft()
            t0 = time.perf_counter()
            prep, verdict, seconds, error = future.result()
            waited = time.perf_counter() - t0
            warm = warm or error is None
            while queued < len(jobs) and len(ahead) < (depth if warm else 1):  # read ahead while scoring
                ahead.append(pool.submit(load, jobs[queued]))
                queued += 1
            if error is not None:
                yield Outcome(job.label, sum(seconds.values()), error, seconds)
                continue
            outcome = score_one(scorer, job, out_dir, figures=figures, crs=crs, prep=prep, verdict=verdict,
                                wait_writes=False)
            outcome.seconds += waited
            # The prefetch thread's steps, and the time this thread waited for them.
            outcome.timings.update(preprocess=seconds["preprocess"], qc=seconds["qc"] + outcome.timings.get("qc", 0.0),
                                   wait_preprocess=waited)
            yield outcome


def _prefetch_step(scorer: Scorer):
    """The work of a prefetch thread on one job: preprocessing and the QC verdict, timed.

    The returned function gives ``(prep, verdict, seconds, error)``: an invalid input is
    its one-line error, reported when the job's turn comes.
    """
    def load(job: ScoreJob) -> tuple[Preprocessed | None, object, dict, str | None]:
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            prep = scorer.model.preprocess(job.images)
            seconds["preprocess"] = time.perf_counter() - t0
            verdict = scorer.assess_quality(prep, age=job.age, sex=job.sex)
            seconds["qc"] = time.perf_counter() - t0 - seconds["preprocess"]
            return prep, verdict, seconds, None
        except AnomalyInputError as exc:
            seconds.setdefault("preprocess", time.perf_counter() - t0)
            return None, None, seconds, str(exc)

    return load


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


__all__ = ["FIGURE_HELPER_MIN_JOBS", "PREFETCH_DEPTH", "ScoreJob", "jobs_from_inputs", "run_outcomes", "score_command",
           "score_jobs", "shard_jobs", "write_index"]
