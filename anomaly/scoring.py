"""Score subjects with a normative model and write the BIDS-derivatives outputs.

For each subject: voxel z maps per modality and the combined anomaly map (NIfTI), one
region table per atlas, subject-level values (``_scores.json``: global cortical PET
level, quality checks), and unless switched off, glass-brain figures and an HTML report.

Global versus focal deviation. In coma the first question is how much cortical
metabolism is left (awareness needs roughly more than 42% of normal; Stender et al.
2016). The *global cortical PET level* is the subject's mean SUVR over cortical grey
matter as a percentage of the normative mean SUVR in the same voxels. A diffuse drop
shifts every cortical z; the *focal z* of a region is its PET z minus the subject's
median cortical PET z, so that a focal lesion stands out from diffuse hypometabolism.

Batch scoring loads the model and atlases once and preprocesses the next subject in a
background thread while the current one is scored (reading and resampling NIfTI files
is mostly I/O and zlib, which release the GIL).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly import __version__
from anomaly.atlas import DEFAULT_ATLAS, Atlas
from anomaly.io import (AnomalyInputError, Subject, check_output_dir, find_subjects, modality_from_path,
                        save_image, subject_from_path, write_json, write_tsv)
from anomaly.normative import NormativeModel, SubjectScore
from anomaly.preprocess import template_images

SPACE = "space-MNI152NLin2009cAsym"
#: Regions that are not cortex (Neuromorphometrics names), excluded from the global level.
NON_CORTICAL = ("Ventricle|Cerebell|Brain_Stem|Thalamus|Caudate|Putamen|Pallidum|Accumbens|Amygdala|"
                "Hippocampus|Ventral_DC|White_Matter|CSF|vessel|Optic_Chiasm|Basal_Forebrain|Lat_Vent|"
                "Inf_Lat_Vent|Cerebral_White|non-brain")


@dataclass
class ScoredSubject:
    """What scoring one subject produced (paths and headline values)."""

    label: str
    files: dict[str, Path] = field(default_factory=dict)
    values: dict = field(default_factory=dict)


def derivative_name(label: str, *parts: str) -> str:
    """``sub-<label>_space-MNI152NLin2009cAsym_<parts...>`` (parts joined by ``_``)."""
    return "_".join([f"sub-{label}", SPACE, *parts])


def region_table(score: SubjectScore, atlas: Atlas, cortex_z_offset: float | None) -> pd.DataFrame:
    """One row per atlas region; columns documented in docs/architecture.md.

    Parameters
    ----------
    score : SubjectScore
    atlas : Atlas
        Already on the model grid.
    cortex_z_offset : float or None
        Subject's median cortical PET z (None without PET).
    """
    base = atlas.summarise(score.anomaly, threshold=2.0, percentiles=(95,))
    table = pd.DataFrame({"index": base["index"], "name": base["name"], "n_voxels": base["n_voxels"],
                          "anomaly_mean": base["mean"], "anomaly_p95": base["p95"]})
    for c, modality in enumerate(score.modalities):
        cols = [f"{modality}_z_mean", f"{modality}_z_p05", f"{modality}_z_p95",
                f"{modality}_frac_absz_gt2", f"{modality}_frac_z_lt_m2"]
        if score.present[c]:
            s = atlas.summarise(score.z[c], threshold=2.0, percentiles=(5, 95))
            values = [s["mean"], s["p05"], s["p95"], s["frac_above"] + s["frac_below"], s["frac_below"]]
            for col, v in zip(cols, values):
                table[col] = v.to_numpy()
        else:
            for col in cols:
                table[col] = np.nan  # written as n/a: no data, not zero deviation
    if "pet" in score.modalities:
        if cortex_z_offset is not None:
            table["pet_focal_z_mean"] = table["pet_z_mean"] - cortex_z_offset
        else:
            table["pet_focal_z_mean"] = np.nan
    return table


class Scorer:
    """Score many subjects with one loaded model (and atlases).

    Parameters
    ----------
    model : NormativeModel
    atlases : sequence of str or path
        Atlas names or label images; the first is used for the report's table.
    """

    def __init__(self, model: NormativeModel, atlases: Sequence[str | Path] = (DEFAULT_ATLAS,)) -> None:
        self.model = model
        self.atlases = []
        for spec in atlases:
            atlas = Atlas.load(spec)
            self.atlases.append(atlas.resample_to(model.grid_))
        grid = model.grid_
        gm = template_images(grid)["gm"]
        main = self.atlases[0] if self.atlases[0].name == DEFAULT_ATLAS else \
            Atlas.load(DEFAULT_ATLAS).resample_to(grid)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            non_cortex = main.region_mask(NON_CORTICAL)
        # Cortical grey matter: likely GM, labelled by the atlas, not a subcortical label.
        self.cortex_mask = (gm > 0.5) & (main.label_array() > 0) & ~non_cortex & model.mask_

    def global_pet(self, score: SubjectScore) -> dict | None:
        """Global cortical PET level (% of normative mean) and the median cortical z."""
        if "pet" not in score.modalities:
            return None
        c = score.modalities.index("pet")
        if not score.present[c]:
            return None
        subject = float(np.mean(score.data[c][self.cortex_mask]))
        normal = float(np.mean(self.model.control_mean_[c][self.cortex_mask]))
        return {"global_cortical_pet_percent": 100.0 * subject / normal,
                "cortical_pet_suvr": subject, "normative_cortical_pet_suvr": normal,
                "median_cortical_pet_z": float(np.median(score.z[c][self.cortex_mask])),
                "pet_reference": self.model.pet_reference}

    def score_subject(self, label: str, images: dict, out_dir: Path, *, age=None, sex=None,
                      prep=None, figures: bool = True, crs_model=None) -> ScoredSubject:
        """Score one subject and write all its outputs under ``out_dir/sub-<label>/``.

        Everything is computed in memory first, so an invalid input leaves no file.
        """
        score = self.model.score(prep if prep is not None else images, age=age, sex=sex)
        glob = self.global_pet(score)
        offset = glob["median_cortical_pet_z"] if glob else None
        tables = {atlas.name: region_table(score, atlas, offset) for atlas in self.atlases}

        folder = out_dir / f"sub-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        result = ScoredSubject(label=label)
        for c, modality in enumerate(score.modalities):
            if score.present[c]:
                path = folder / (derivative_name(label, f"mod-{modality}", "stat-z", "statmap") + ".nii.gz")
                save_image(score.to_image(score.z[c]), path)
                result.files[f"z_{modality}"] = path
        path = folder / (derivative_name(label, "stat-anomaly", "statmap") + ".nii.gz")
        save_image(score.to_image(score.anomaly), path)
        result.files["anomaly"] = path
        for name, table in tables.items():
            path = folder / (derivative_name(label, f"atlas-{name}", "regions") + ".tsv")
            write_tsv(table, path)
            result.files[f"regions_{name}"] = path

        present = [m for m, p in zip(score.modalities, score.present) if p]
        missing = [m for m, p in zip(score.modalities, score.present) if not p]
        peak = np.unravel_index(int(np.argmax(score.anomaly)), score.anomaly.shape)
        peak_mm = (self.model.grid_.affine @ np.array([*peak, 1.0]))[:3]
        values = {
            "participant_id": f"sub-{label}", "toolkit_version": __version__,
            "model": self.model.describe(), "age": age, "sex": sex,
            "modalities_present": present, "modalities_missing": missing,
            "max_anomaly": float(score.anomaly.max()),
            "mean_anomaly": float(score.anomaly[self.model.mask_].mean()),
            "peak_anomaly_mni_mm": [round(float(v), 1) for v in peak_mm],
            "qc": _jsonable(score.qc),
        }
        if glob:
            values.update(glob)
        if crs_model is not None:
            values["crs"] = _predict_crs_one(crs_model, tables)
        path = folder / f"sub-{label}_scores.json"
        write_json(values, path)
        result.files["scores"] = path
        result.values = values
        if figures:
            result.files.update(self._figures_and_report(label, score, tables, values, folder))
        return result

    def _figures_and_report(self, label: str, score: SubjectScore, tables: dict, values: dict,
                            folder: Path) -> dict:
        from anomaly.plotting import plot_anomaly_glass_brain, plot_peak_slices, plot_signed_glass_brain
        from anomaly.report import render_subject_report

        files, figures = {}, {}
        anomaly_img = score.to_image(score.anomaly)
        path = folder / (derivative_name(label, "stat-anomaly", "glassbrain") + ".png")
        plot_anomaly_glass_brain(anomaly_img, path, title=f"sub-{label}: combined anomaly (z units)")
        figures["Combined anomaly map (glass brain)"] = path
        files["glassbrain"] = path
        if "pet" in score.modalities and score.present[score.modalities.index("pet")]:
            c = score.modalities.index("pet")
            path = folder / (derivative_name(label, "mod-pet", "stat-z", "glassbrain") + ".png")
            plot_signed_glass_brain(score.to_image(score.z[c]), path, title=f"sub-{label}: FDG-PET z")
            figures["FDG-PET z map (blue: hypometabolism)"] = path
            files["glassbrain_pet"] = path
        t1 = template_images(self.model.grid_)["t1"]
        path = folder / (derivative_name(label, "stat-anomaly", "slices") + ".png")
        plot_peak_slices(anomaly_img, self.model.grid_.to_image(t1), path,
                         title=f"sub-{label}: most abnormal location")
        figures["Orthogonal slices at the most abnormal location"] = path
        files["slices"] = path

        table = next(iter(tables.values()))
        top = table.sort_values("anomaly_mean", ascending=False).head(10)
        qc = {"modalities present": ", ".join(values["modalities_present"]) or "none",
              "modalities missing": ", ".join(values["modalities_missing"]) or "none"}
        for modality, info in values.get("qc", {}).items():
            if isinstance(info, dict):
                for key, val in info.items():
                    qc[f"{modality} {key}"] = val
        report = folder / f"sub-{label}_report.html"
        render_subject_report(
            report, subject={"participant_id": f"sub-{label}", "age": values.get("age"),
                             "sex": values.get("sex")},
            model=values["model"], figures=figures, top_regions=top, qc=qc,
            global_metabolism={k: values[k] for k in ("global_cortical_pet_percent", "pet_reference")
                               if k in values} or None,
            crs=values.get("crs"))
        files["report"] = report
        return files


def _predict_crs_one(crs_model, tables: dict) -> dict:
    """CRS-R prediction for one freshly scored subject (for its report)."""
    from anomaly.crs import predict_from_tables

    return predict_from_tables(crs_model, tables)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# --------------------------------------------------------------------------- inputs
@dataclass
class ScoreJob:
    """One subject to score."""

    label: str
    images: dict
    age: float | None = None
    sex: str | None = None


def jobs_from_inputs(inputs: Sequence[Path], *, participant_labels=None, modalities=None, subject=None,
                     age=None, sex=None, group: str = "patient") -> tuple[list[ScoreJob], list[Path]]:
    """Turn CLI inputs into scoring jobs; returns the jobs and the input roots.

    A single folder input is a BIDS dataset; otherwise the inputs are NIfTI files of one
    subject whose modalities come from their BIDS suffixes (or ``modalities``).
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
    labels = {subject_from_path(p) for p in inputs} - {None}
    if subject is None:
        if len(labels) > 1:
            raise AnomalyInputError(f"input files belong to several subjects ({', '.join(sorted(labels))})")
        subject = labels.pop() if labels else Path(inputs[0]).name.split(".")[0]
    subject = subject.removeprefix("sub-")
    return [ScoreJob(subject, images, age, sex)], [p.parent for p in inputs]


def score_command(inputs: Sequence[Path], *, model_dir: Path, out_dir: Path, atlases=None,
                  participant_labels=None, modalities=None, subject=None, age=None, sex=None,
                  group: str = "patient", shard: tuple[int, int] | None = None, crs_model=None,
                  figures: bool = True, device: str = "auto", progress: bool = True) -> int:
    """The ``anomaly score`` command; returns the exit status.

    A subject whose input is invalid is reported on one stderr line and skipped, the
    others are scored; the exit status is then 2.
    """
    jobs, roots = jobs_from_inputs(inputs, participant_labels=participant_labels, modalities=modalities,
                                   subject=subject, age=age, sex=sex, group=group)
    if shard is not None:
        index, count = shard
        jobs = jobs[index::count]
    model = NormativeModel.load(model_dir, device=device)
    crs = None
    if crs_model is not None:
        from anomaly.crs import load_crs_model

        crs = load_crs_model(crs_model)
    scorer = Scorer(model, atlases or (DEFAULT_ATLAS,))
    created = not Path(out_dir).exists()
    out_dir = check_output_dir(out_dir, inputs=[*roots, model_dir])
    try:
        failures = _score_jobs(jobs, model, scorer, out_dir, figures=figures, crs=crs, progress=progress)
    except AnomalyInputError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no trace
        raise
    return 2 if failures else 0


def _score_jobs(jobs, model, scorer, out_dir, *, figures, crs, progress) -> int:
    """Score jobs with one-subject look-ahead preprocessing; returns the failure count."""
    from tqdm.auto import tqdm

    failures = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        def load(job):
            return model.preprocess(job.images)

        pending = pool.submit(load, jobs[0]) if jobs else None
        for i, job in enumerate(tqdm(jobs, desc="scoring", unit="subject", disable=not progress)):
            future = pending
            pending = pool.submit(load, jobs[i + 1]) if i + 1 < len(jobs) else None
            try:
                prep = future.result()
                scorer.score_subject(job.label, job.images, out_dir, age=job.age, sex=job.sex, prep=prep,
                                     figures=figures, crs_model=crs)
            except AnomalyInputError as exc:
                if len(jobs) == 1:
                    raise
                failures += 1
                print(f"anomaly score: error: sub-{job.label}: {exc}", file=sys.stderr)
    if failures < len(jobs):
        write_json({"Name": "anomaly scores", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "anomaly", "Version": __version__}]},
                   out_dir / "dataset_description.json")
        if figures:
            write_index(out_dir)
    elapsed = time.perf_counter() - start
    print(f"scored {len(jobs) - failures} subject(s) in {elapsed:.1f} s into {out_dir}"
          + (f"; {failures} failed" if failures else ""))
    return failures


def write_index(out_dir: Path) -> Path:
    """index.html at the output root linking every subject report found there."""
    import json

    from anomaly.report import render_index

    entries = []
    for report in sorted(out_dir.glob("sub-*/sub-*_report.html")):
        label = report.parent.name
        info_path = report.parent / f"{label}_scores.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        entries.append({"participant_id": label, "report": str(report.relative_to(out_dir)),
                        "max_anomaly": info.get("max_anomaly"),
                        "global_cortical_pet_percent": info.get("global_cortical_pet_percent"),
                        "modalities_missing": ", ".join(info.get("modalities_missing", []))})
    return render_index(out_dir / "index.html", entries, title="anomaly: subject reports")


__all__ = ["Scorer", "ScoreJob", "derivative_name", "jobs_from_inputs", "region_table",
           "score_command", "write_index"]
