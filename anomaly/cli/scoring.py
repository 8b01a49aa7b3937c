"""Score subjects with a normative model and write the BIDS-derivatives outputs.

For each subject: voxel z maps per modality and the combined anomaly map (NIfTI), one
region table per atlas, subject-level values (``_scores.json``: global cortical PET
level, quality checks), and unless switched off, glass-brain figures and an HTML report.
An ``index.html`` at the output root links every subject scored there.

Global versus focal deviation. In coma the first question is how much cortical
metabolism is left (awareness needs roughly more than 42% of normal; Stender et al.
2016). The *global cortical PET level* is the subject's mean SUVR over cortical grey
matter as a percentage of the normative mean SUVR in the same voxels. A diffuse drop
shifts every cortical z; the *focal z* of a region is its PET z minus the subject's
median cortical PET z, so that a focal lesion stands out from diffuse hypometabolism.

Voxels that a present image does not cover (outside its field of view, or zero after
skull stripping) have no z: they are NaN in that modality's z map, left out of the
region statistics, and the combined anomaly there averages the modalities that do
cover them. A region without any covered voxel gets ``n/a``, as do all the columns of
a missing modality.

Speed. Batch scoring loads the model and atlases once, precomputes the voxel grouping
of every atlas, preprocesses the next subject in a background thread while the current
one is scored (reading and resampling NIfTI files is mostly zlib and numpy, which
release the GIL), writes NIfTI files from a second background thread, and reuses the
glass-brain outlines between subjects (:class:`anomaly.report.figures.GlassBrainRenderer`).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly import __version__
from anomaly.atlas import (DEFAULT_ATLAS, Atlas, RegionStats, cortex_mask, global_cortical_pet, region_table,
                           round_table)
from anomaly.constants import PET, Z_THRESHOLD, derivative_name
from anomaly.io import (AnomalyInputError, check_output_dir, find_subjects, jsonable, modality_from_path, save_image,
                        subject_from_path, write_json, write_tsv)
from anomaly.normative import NormativeModel, SubjectScore
from anomaly.preprocess import Preprocessed, template_images

#: Threshold of the combined-anomaly glass brain and slices (z units): the map is a
#: mean over modalities, so a voxel with z = 4.5 in one modality of three reaches 1.5.
ANOMALY_FIGURE_THRESHOLD = 1.5
#: Region-table columns shown in the report (those present).
REPORT_COLUMNS = ("name", "n_voxels", "anomaly_mean", "anomaly_p95", "{m}_z_mean", "pet_frac_z_lt_m2",
                  "pet_focal_z_mean")


@dataclass
class ScoredSubject:
    """What scoring one subject produced (paths and headline values)."""

    label: str
    files: dict[str, Path] = field(default_factory=dict)
    values: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- scorer
class Scorer:
    """Score many subjects with one loaded model (and atlases).

    Parameters
    ----------
    model : NormativeModel
    atlases : sequence of str or path
        Atlas names or label images; the first is used for the report's table.

    Notes
    -----
    NIfTI files are written by a background thread: call :meth:`flush` (or use the
    scorer as a context manager) before reading them when ``wait=False`` was passed
    to :meth:`score_subject`.
    """

    def __init__(self, model: NormativeModel, atlases: Sequence[str | Path] = (DEFAULT_ATLAS,)) -> None:
        self.model = model
        grid = model.grid_
        mask = np.asarray(model.mask_, bool)
        self.atlases, self._stats = [], []
        for spec in atlases:
            atlas = Atlas.load(spec)
            atlas = atlas.resample_to(grid)  # warns with the regions too small for the grid
            if any(a.name == atlas.name for a in self.atlases):
                raise AnomalyInputError(f"--atlas: two atlases named {atlas.name!r}; rename one file")
            self.atlases.append(atlas)
            self._stats.append(RegionStats(atlas, mask))
        templates = template_images(grid)
        main = next((a for a in self.atlases if a.name == DEFAULT_ATLAS), None)
        if main is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                main = Atlas.load(DEFAULT_ATLAS).resample_to(grid)
        self.cortex_mask = cortex_mask(grid, mask, main)
        self._t1 = templates["t1"]
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomaly-write")
        self._pending: list[Future] = []
        self._renderers: dict[str, object] = {}
        #: Seconds spent per step, summed over subjects (see benchmarks/scoring.py).
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def _tick(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + now - start
        return now

    def flush(self) -> None:
        """Wait for the background NIfTI writes; re-raise the first error."""
        pending, self._pending = self._pending, []
        start = time.perf_counter()
        errors = [f.exception() for f in pending]
        self._tick("wait_writes", start)
        for exc in errors:
            if exc is not None:
                raise exc

    def close(self) -> None:
        """Finish the writes and stop the writer thread."""
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: do not hide that error behind a write error
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def global_pet(self, score: SubjectScore) -> dict | None:
        """Global cortical PET level (% of normative mean) and the median cortical z."""
        if PET not in score.modalities:
            return None
        c = score.modalities.index(PET)
        if not score.present[c]:
            return None
        level = global_cortical_pet(score.data[c], score.z[c], self.model.control_mean_[c], self.cortex_mask)
        if level is not None:
            level["pet_reference"] = self.model.pet_reference
        return level

    # ------------------------------------------------------------------ scoring
    def score_subject(self, label: str, images: Mapping, out_dir: Path, *, age=None, sex=None,
                      prep: Preprocessed | None = None, figures: bool = True, crs_model=None,
                      wait: bool = True) -> ScoredSubject:
        """Score one subject and write all its outputs under ``out_dir/sub-<label>/``.

        Everything is computed in memory first, so an invalid input leaves no file.
        With ``wait=False`` the NIfTI files may still be being written on return
        (see :meth:`flush`).
        """
        start = time.perf_counter()
        if prep is None:
            prep = self.model.preprocess(images)
            start = self._tick("preprocess", start)
        score = self.model.score(prep, age=age, sex=sex)
        start = self._tick("model", start)
        glob = self.global_pet(score)
        offset = glob["median_cortical_pet_z"] if glob else None
        percent = glob["global_cortical_pet_percent"] if glob else None
        tables = {atlas.name: round_table(region_table(score, atlas, offset, global_percent=percent,
                                                       stats=stats))
                  for atlas, stats in zip(self.atlases, self._stats)}
        start = self._tick("tables", start)

        folder = Path(out_dir) / f"sub-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        result = ScoredSubject(label=label)
        maps = [(f"z_{m}", derivative_name(label, f"mod-{m}", "stat-z", "statmap"), score.z[c])
                for c, m in enumerate(score.modalities) if score.present[c]]
        maps.append(("anomaly", derivative_name(label, "stat-anomaly", "statmap"), score.anomaly))
        for key, name, array in maps:
            path = folder / f"{name}.nii.gz"
            # zlib releases the GIL: compression overlaps with the tables and figures.
            self._pending.append(self._writer.submit(save_image, score.to_image(array), path))
            result.files[key] = path
        for name, table in tables.items():
            path = folder / (derivative_name(label, f"atlas-{name}", "regions") + ".tsv")
            write_tsv(table, path)
            result.files[f"regions_{name}"] = path

        present = [m for m, p in zip(score.modalities, score.present) if p]
        missing = [m for m, p in zip(score.modalities, score.present) if not p]
        peak = np.unravel_index(int(np.argmax(score.anomaly)), score.anomaly.shape)
        peak_mm = (self.model.grid_.affine @ np.array([*peak, 1.0]))[:3]
        main_table = next(iter(tables.values()))
        top = main_table.sort_values("anomaly_mean", ascending=False, na_position="last").head(3)
        values = {
            "participant_id": f"sub-{label}", "toolkit_version": __version__,
            "model": self.model.describe(), "age": age, "sex": sex,
            "modalities_present": present, "modalities_missing": missing,
            "max_anomaly": float(score.anomaly.max()),
            "mean_anomaly": float(score.anomaly[self.model.mask_].mean(dtype=np.float64)),
            "peak_anomaly_mni_mm": [round(float(v), 1) for v in peak_mm],
            "top_regions": [str(n) for n in top["name"]],
            "qc": jsonable(score.qc),
        }
        if glob:
            values.update(glob)
        if crs_model is not None:
            values["crs"] = _predict_crs_one(crs_model, tables, values)
        path = folder / f"sub-{label}_scores.json"
        write_json(values, path)
        result.files["scores"] = path
        result.values = values
        start = self._tick("write", start)
        if figures:
            result.files.update(self._figures_and_report(label, score, main_table, values, folder))
            start = self._tick("figures", start)
        if wait:
            self.flush()
        return result

    def _renderer(self, kind: str):
        from anomaly.report.figures import GlassBrainRenderer

        if kind not in self._renderers:
            self._renderers[kind] = GlassBrainRenderer(kind)
        return self._renderers[kind]

    def _figures_and_report(self, label: str, score: SubjectScore, table: pd.DataFrame, values: dict,
                            folder: Path) -> dict:
        from anomaly.report.figures import plot_peak_slices
        from anomaly.report.html import render_subject_report

        files, figures = {}, {}
        anomaly_img = score.to_image(score.anomaly)
        path = folder / (derivative_name(label, "stat-anomaly", "glassbrain") + ".png")
        self._renderer("anomaly").plot(anomaly_img, path, threshold=ANOMALY_FIGURE_THRESHOLD,
                                       title=f"sub-{label}: combined anomaly (z units)")
        figures["Combined anomaly map (glass brain)"] = (
            path, f"Mean over the modalities present of the z score in the lesion direction, "
                  f"shown above {ANOMALY_FIGURE_THRESHOLD:g}.")
        files["glassbrain"] = path
        if "pet" in score.modalities and score.present[score.modalities.index("pet")]:
            c = score.modalities.index("pet")
            path = folder / (derivative_name(label, "mod-pet", "stat-z", "glassbrain") + ".png")
            self._renderer("signed").plot(score.to_image(score.z[c]), path,
                                          threshold=Z_THRESHOLD, title=f"sub-{label}: FDG-PET z")
            figures["FDG-PET z map (glass brain)"] = (
                path, f"Blue: hypometabolism, red: hypermetabolism; |z| > {Z_THRESHOLD:g} shown.")
            files["glassbrain_pet"] = path
        path = folder / (derivative_name(label, "stat-anomaly", "slices") + ".png")
        plot_peak_slices(anomaly_img, score.grid.to_image(self._t1), path,
                         threshold=ANOMALY_FIGURE_THRESHOLD, title=f"sub-{label}: most abnormal location")
        figures["Orthogonal slices at the most abnormal location"] = (
            path, "Combined anomaly over the MNI152 template.")
        files["slices"] = path

        columns = []
        for col in REPORT_COLUMNS:
            names = [col.format(m=m) for m in score.modalities] if "{m}" in col else [col]
            columns += [n for n in names if n in table.columns and n not in columns]
        top = table.sort_values("anomaly_mean", ascending=False, na_position="last")[columns]
        qc = {"modalities present": ", ".join(values["modalities_present"]) or "none",
              "modalities missing": ", ".join(values["modalities_missing"]) or "none"}
        for modality, info in values.get("qc", {}).items():
            if isinstance(info, dict):
                for key, val in info.items():
                    qc[f"{modality} {key}"] = val
        metabolism = None
        if "global_cortical_pet_percent" in values:
            metabolism = {
                "global_cortical_pet_percent": values["global_cortical_pet_percent"],
                "pet_reference": values["pet_reference"],
                "cortical PET SUVR (subject)": values["cortical_pet_suvr"],
                "cortical PET SUVR (normative mean)": values["normative_cortical_pet_suvr"],
                "median cortical PET z (focal z = region z minus this)": values["median_cortical_pet_z"],
            }
        report = folder / f"sub-{label}_report.html"
        render_subject_report(
            report, subject={"participant_id": f"sub-{label}", "age": values.get("age"),
                             "sex": values.get("sex")},
            model=values["model"], figures=figures, top_regions=top, qc=qc,
            global_metabolism=metabolism, crs=values.get("crs"))
        files["report"] = report
        return files


def _predict_crs_one(crs_model, tables: dict, values: dict) -> dict:
    """CRS-R prediction for one freshly scored subject (for its report).

    Gets the same inputs as ``anomaly predict`` reading the written files: the rounded
    region tables and the top-level numbers of ``_scores.json``.
    """
    from anomaly.crs import predict_from_tables

    numbers = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return predict_from_tables(crs_model, tables, global_values=numbers)


# --------------------------------------------------------------------------- inputs
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
    if subject is not None:
        subject = _clean_label(subject, "--subject")
    else:
        labels = {subject_from_path(p) for p in inputs} - {None}
        if len(labels) > 1:
            raise AnomalyInputError(f"input files belong to several subjects ({', '.join(sorted(labels))}); "
                                    f"score them one at a time or as a BIDS dataset")
        if labels:
            subject = labels.pop()
        else:  # e.g. patient.nii.gz -> sub-patient
            subject = re.sub(r"[^A-Za-z0-9]", "", inputs[0].name.split(".")[0]) or "01"
    # The files themselves: check_output_dir refuses an output inside their BIDS dataset
    # (not one next to loose files).
    return [ScoreJob(subject, images, age, sex)], list(inputs)


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
            return 0
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
            failures = _score_jobs(jobs, scorer, out_dir, figures=figures, crs=crs, progress=progress)
    except AnomalyInputError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no trace
        raise
    return 2 if failures else 0


def _score_jobs(jobs: Sequence[ScoreJob], scorer: Scorer, out_dir: Path, *, figures: bool, crs,
                progress: bool) -> int:
    """Score jobs with one-subject look-ahead preprocessing; returns the failure count."""
    from tqdm.auto import tqdm

    model = scorer.model
    failures = 0
    start = time.perf_counter()
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
                scorer._tick("wait_preprocess", t0)
                scorer.timings["preprocess"] = scorer.timings.get("preprocess", 0.0) + seconds
                scorer.score_subject(job.label, job.images, out_dir, age=job.age, sex=job.sex, prep=prep,
                                     figures=figures, crs_model=crs, wait=False)
            except AnomalyInputError as exc:
                if len(jobs) == 1:
                    raise
                failures += 1
                print(f"anomaly score: error: sub-{job.label}: {exc}", file=sys.stderr)
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


__all__ = ["RegionStats", "ScoreJob", "ScoredSubject", "Scorer", "derivative_name", "jobs_from_inputs",
           "region_table", "round_table", "score_command", "shard_jobs", "write_index"]
