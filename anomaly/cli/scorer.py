"""Score one subject with a normative model and write its BIDS-derivatives outputs.

:class:`Scorer` applies a loaded model to one subject at a time and writes, per
subject: voxel z maps per modality and the combined anomaly map (NIfTI), one region
table per atlas, subject-level values (``_scores.json``: global cortical PET level,
quality checks), and unless switched off, glass-brain figures and an HTML report. The
``anomaly score`` command (job planning, shards, the output index) is
:mod:`anomaly.cli.score`.

Global versus focal deviation. In coma the first question is how much cortical
metabolism is left (awareness needs roughly more than 42% of normal; Stender et al.
2016). The *global cortical PET level* is the best-preserved hemisphere's mean SUVR
over cortical grey matter, as a percentage of the normative mean in the same voxels and
of the controls' same measure, with an interval from the controls' spread (the
whole-cortex level is kept beside it). A diffuse drop shifts every cortical z; the
*focal z* of a region is its PET z minus the subject's median cortical PET z, and the
*focal log ratio* compares log(region PET / own cortical mean) with the controls' ratios
(:mod:`anomaly.atlas.petlevels`), so that a focal lesion stands out from diffuse
hypometabolism.

Voxels that a present image does not cover (outside its field of view, or zero after
skull stripping) have no z: they are NaN in that modality's z map, left out of the
region statistics, and the combined anomaly there combines the modalities that do
cover them. A region without any covered voxel gets ``n/a``, as do all the columns of
a missing modality.

Speed. A scorer loads the atlases once, precomputes the voxel grouping of every atlas,
writes the maps, tables and ``_scores.json`` (last) from a background thread, and
reuses the glass-brain outlines between subjects
(:class:`anomaly.report.figures.GlassBrainRenderer`); batch scoring
(:func:`anomaly.cli.score.score_jobs`) preprocesses and quality-checks the next subject
in a second thread while the current one is scored, and a batch can draw its figures in a helper
process (:meth:`Scorer.draw_figures_in_helper`, :mod:`anomaly.cli.figureproc`), off
the critical path. ``--jobs N`` runs N scorers in worker processes
(:mod:`anomaly.cli.workers`).

Atlas coverage (regions with no voxel on the model grid) is not warned about here: the
model records it for the shipped atlases at fit time, the command says it once for a
user atlas, and every subject's model description (``values["model"]``, the report's
model section) lists it.
"""

from __future__ import annotations

import math
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
from anomaly.atlas.petlevels import LogRatioNorm, hemisphere_masks
from anomaly.constants import PET, derivative_name
from anomaly.io import AnomalyInputError, jsonable, save_image, write_json, write_tsv
from anomaly.normative import NormativeModel, SubjectScore
from anomaly.preprocess import Preprocessed, template_images


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
    Output files are written by a background thread: call :meth:`flush` (or use the
    scorer as a context manager) before reading them when ``wait=False`` was passed
    to :meth:`score_subject`.
    """

    #: Score images that QC refuses anyway, marking the outputs (``anomaly score --force``).
    force: bool = False

    def __init__(self, model: NormativeModel, atlases: Sequence[str | Path] = (DEFAULT_ATLAS,)) -> None:
        self.model = model
        grid = model.grid_
        mask = np.asarray(model.mask_, bool)
        self.atlases, self._stats = [], []
        #: Per atlas, the regions kept and lost on the model grid (shown in every report).
        self.coverage: dict[str, dict] = {}
        for spec in atlases:
            full = Atlas.load(spec)
            with warnings.catch_warnings():
                # Regions lost on the grid are recorded in the model (shipped atlases) or
                # said once by the command (a user atlas), not once per scorer.
                warnings.filterwarnings("ignore", message=".*have no voxel left after nearest-neighbour")
                atlas = full.resample_to(grid)
            if any(a.name == atlas.name for a in self.atlases):
                raise AnomalyInputError(f"--atlas: two atlases named {atlas.name!r}; rename one file")
            self.atlases.append(atlas)
            self._stats.append(RegionStats(atlas, mask))
            self.coverage[atlas.name] = _coverage(model, full, atlas)
        templates = template_images(grid)
        main = next((a for a in self.atlases if a.name == DEFAULT_ATLAS), None)
        if main is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                main = Atlas.load(DEFAULT_ATLAS).resample_to(grid)
        self.cortex_mask = cortex_mask(grid, mask, main)
        # Left and right over the cortical voxels: what the global level needs per subject.
        self.hemispheres = tuple(h[self.cortex_mask] for h in hemisphere_masks(grid.affine, self.cortex_mask))
        self._focal_norms = _focal_norms(model, self.atlases, self._stats)
        self._t1 = templates["t1"]
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomaly-write")
        self._pending: list[Future] = []
        self._renderers: dict[str, object] = {}
        self._figure_process = None  # see draw_figures_in_helper()
        self._figure_files: list[tuple[dict, Future]] = []
        #: Seconds spent per step, summed over subjects (see benchmarks/scoring.py).
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def add_time(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to the step ``key`` of :attr:`timings`."""
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def _tick(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.add_time(key, now - start)
        return now

    def draw_figures_in_helper(self) -> None:
        """Draw figures and reports in a helper process from now on (:mod:`anomaly.cli.figureproc`).

        Worth it for a batch on a machine with a free core: the figures of one subject
        are drawn while the next one is read and scored. :meth:`flush` waits for them.
        """
        from anomaly.cli.figureproc import FigureProcess

        if self._figure_process is None:
            self._figure_process = FigureProcess(self._t1)

    def flush(self) -> None:
        """Wait for the background NIfTI writes and figures; re-raise the first error."""
        pending, self._pending = self._pending, []
        figures, self._figure_files = self._figure_files, []
        start = time.perf_counter()
        errors = [f.exception() for f in pending]
        start = self._tick("wait_writes", start)
        errors += [f.exception() for _, f in figures]
        self._tick("wait_figures", start)
        for exc in errors:
            if exc is not None:
                raise exc
        for files, future in figures:
            files.update(future.result())

    def close(self) -> None:
        """Finish the writes and figures, stop the writer thread and the figure helper."""
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)
            if self._figure_process is not None:
                self._figure_process.close()
                self._figure_process = None

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
        norms = getattr(self.model, "pet_levels_", None)
        level = global_cortical_pet(score.data[c], score.z[c], self.model.control_mean_[c], self.cortex_mask,
                                    hemispheres=self.hemispheres, norm=norms.global_level if norms else None)
        if level is not None:
            level["pet_reference"] = level["global_cortical_pet_reference"] = self.model.pet_reference
        return level

    # ------------------------------------------------------------------ scoring
    def score_subject(self, label: str, images: Mapping, out_dir: Path, *, age=None, sex=None,
                      prep: Preprocessed | None = None, verdict=None, figures: bool = True, crs_model=None,
                      wait: bool = True) -> ScoredSubject:
        """Score one subject and write all its outputs under ``out_dir/sub-<label>/``.

        Everything is computed in memory first, so an invalid input leaves no file.
        ``prep`` and ``verdict`` (:meth:`assess_quality`) may come precomputed (batch
        scoring computes both in its prefetch thread). With ``wait=False`` the files
        may still be being written on return (see :meth:`flush`).
        """
        start = time.perf_counter()
        if prep is None:
            prep = self.model.preprocess(images)
            start = self._tick("preprocess", start)
        qc = self.quality_check(label, prep, age=age, sex=sex, verdict=verdict)
        start = self._tick("qc", start)
        score = self.model.transform(prep, age=age, sex=sex)
        start = self._tick("model", start)
        glob = self.global_pet(score)
        tables = self.region_tables(score, glob)
        start = self._tick("tables", start)

        folder = Path(out_dir) / f"sub-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        result = ScoredSubject(label=label)
        result.files.update(self._write_maps(label, score, folder))
        result.files.update(self._write_tables(label, tables, folder))
        result.values = self.subject_values(label, score, tables, glob, age=age, sex=sex)
        _add_qc(result.values, qc)
        if figures:
            _copy_registration_figure(images, folder, result)
        if crs_model is not None:
            result.values["crs"] = _predict_crs_one(crs_model, tables, result.values)
        result.files["scores"] = folder / f"sub-{label}_scores.json"
        # Last in the writer's queue: a _scores.json means the subject's other files are there.
        self._pending.append(self._writer.submit(write_json, jsonable(result.values), result.files["scores"]))
        start = self._tick("write", start)
        if figures:
            main_table = next(iter(tables.values()))
            self._figures_and_report(label, score, main_table, result.values, folder, result.files)
            start = self._tick("figures", start)
        if wait:
            self.flush()
        return result

    def assess_quality(self, prep: Preprocessed, *, age=None, sex=None):
        """The QC verdict of one preprocessed subject (:meth:`NormativeModel.quality_check`), not acted on.

        Thread-safe: batch scoring computes it with the preprocessing, in the prefetch
        thread, and :meth:`quality_check` then acts on it.
        """
        return self.model.quality_check(prep, age=age, sex=sex, force=self.force)

    def quality_check(self, label: str, prep: Preprocessed, *, age=None, sex=None, verdict=None):
        """QC against the model's controls (:mod:`anomaly.qc`); raises for a refused image.

        With :attr:`force` True a refusal is recorded (``values["qc"]["forced"]``) and
        the subject is scored anyway. Every QC warning is also issued as a UserWarning.
        ``verdict``: the subject's :meth:`assess_quality`, if already computed.
        """
        qc = verdict if verdict is not None else self.assess_quality(prep, age=age, sex=sex)
        refusal = qc.refusal()
        if refusal and not self.force:
            raise AnomalyInputError(f"{refusal} (score --force scores it anyway)")
        for message in qc.warnings + ([f"scored despite QC refusal (--force): {refusal}"] if refusal else []):
            warnings.warn(f"sub-{label}: {message}", UserWarning, stacklevel=2)
        return qc

    def region_tables(self, score: SubjectScore, glob: dict | None) -> dict[str, pd.DataFrame]:
        """One rounded region table per atlas, keyed by atlas name (the first is the report's)."""
        offset = glob["median_cortical_pet_z"] if glob else None
        percent = glob["global_cortical_pet_percent"] if glob else None
        cortex = glob["cortical_pet_suvr"] if glob else None
        return {atlas.name: round_table(region_table(score, atlas, offset, global_percent=percent, stats=stats,
                                                     focal_norm=self._focal_norms.get(atlas.name),
                                                     cortex_pet_mean=cortex))
                for atlas, stats in zip(self.atlases, self._stats)}

    def subject_values(self, label: str, score: SubjectScore, tables: Mapping[str, pd.DataFrame],
                       glob: dict | None, *, age=None, sex=None) -> dict:
        """Subject-level values of ``sub-<label>_scores.json`` (without the CRS-R prediction)."""
        present = [m for m, p in zip(score.modalities, score.present) if p]
        missing = [m for m, p in zip(score.modalities, score.present) if not p]
        peak = np.unravel_index(int(np.argmax(score.anomaly)), score.anomaly.shape)
        peak_mm = (self.model.grid_.affine @ np.array([*peak, 1.0]))[:3]
        main_table = next(iter(tables.values()))
        top = main_table.sort_values("anomaly_mean", ascending=False, na_position="last").head(3)
        model = {**self.model.describe(), **{f"atlas {name}": coverage_text(info, self.model.grid_.resolution)
                                             for name, info in self.coverage.items()}}
        values = {
            "participant_id": f"sub-{label}", "toolkit_version": __version__,
            "model": model, "age": age, "sex": sex,
            "modalities_present": present, "modalities_missing": missing,
            "max_anomaly": float(score.anomaly.max()),
            "mean_anomaly": float(score.anomaly[self.model.mask_].mean(dtype=np.float64)),
            "peak_anomaly_mni_mm": [round(float(v), 1) for v in peak_mm],
            "top_regions": [str(n) for n in top["name"]],
            "qc": jsonable(score.qc),
        }
        if glob:
            values.update(glob)
        return values

    def _write_maps(self, label: str, score: SubjectScore, folder: Path) -> dict[str, Path]:
        """Queue the z map of each present modality and the combined map on the writer thread."""
        maps = [(f"z_{m}", derivative_name(label, f"mod-{m}", "stat-z", "statmap"), score.z[c])
                for c, m in enumerate(score.modalities) if score.present[c]]
        maps.append(("anomaly", derivative_name(label, "stat-anomaly", "statmap"), score.anomaly))
        files = {}
        for key, name, array in maps:
            path = folder / f"{name}.nii.gz"
            # zlib releases the GIL: compression overlaps with the tables and figures.
            self._pending.append(self._writer.submit(save_image, score.to_image(array), path))
            files[key] = path
        return files

    def _write_tables(self, label: str, tables: Mapping[str, pd.DataFrame], folder: Path) -> dict[str, Path]:
        """Queue one region table per atlas on the writer thread (a copy: the report reads them meanwhile)."""
        files = {}
        for name, table in tables.items():
            path = folder / (derivative_name(label, f"atlas-{name}", "regions") + ".tsv")
            self._pending.append(self._writer.submit(write_tsv, table.copy(), path))
            files[f"regions_{name}"] = path
        return files

    def _figures_and_report(self, label: str, score: SubjectScore, table: pd.DataFrame, values: dict,
                            folder: Path, files: dict) -> None:
        """Figures and HTML report (:func:`anomaly.report.subject.write_subject_figures`).

        Their paths are added to ``files`` now, or by :meth:`flush` when the helper
        process draws them.
        """
        if self._figure_process is not None:
            future = self._figure_process.submit(label, score, table, values, folder)
            self._figure_files.append((files, future))
            return
        # matplotlib and nilearn's plotting load in ~1 s: only when figures are asked for.
        from anomaly.report.subject import write_subject_figures

        files.update(write_subject_figures(label, score, table, values, folder, t1=self._t1,
                                           renderers=self._renderers))


def _focal_norms(model: NormativeModel, atlases: Sequence[Atlas], stats: Sequence[RegionStats]
                 ) -> dict[str, LogRatioNorm]:
    """Per atlas, the controls' PET log ratios (:mod:`anomaly.atlas.petlevels`); {} without PET.

    An atlas the model has no ratios for (a model fitted before they were recorded, or
    a user atlas) gets :meth:`LogRatioNorm.missing`: n/a focal log-ratio columns, and
    one warning.
    """
    if PET not in model.modalities_:
        return {}
    levels = getattr(model, "pet_levels_", None)
    out, lacking = {}, []
    for atlas, grouping in zip(atlases, stats):
        norm = levels.for_atlas(atlas.name, grouping.index, grouping.n_voxels) if levels else None
        if norm is None:
            lacking.append(atlas.name)
        out[atlas.name] = norm or LogRatioNorm.missing()
    if lacking:
        why = ("the model was fitted before they were recorded: refit it for these columns and the interval of "
               "global_cortical_pet_percent" if levels is None
               else "the model records them for the shipped atlases only")
        warnings.warn(f"pet_focal_logratio(_z) is n/a for atlas {', '.join(lacking)}: no control PET ratios ({why})",
                      UserWarning, stacklevel=3)
    return out


def _coverage(model: NormativeModel, full: Atlas, on_grid: Atlas) -> dict:
    """The atlas's coverage of the model grid: as the model recorded it at fit, else as resampled here."""
    recorded = (getattr(model, "atlas_coverage_", None) or {}).get(full.name)
    if recorded is not None and recorded.get("n_regions") == len(full.labels):
        return recorded
    lost = full.labels[~full.labels["index"].isin(on_grid.labels["index"])]
    return {"atlas": full.name, "n_regions": len(full.labels), "n_kept": len(on_grid.labels),
            "lost": [[int(i), str(n)] for i, n in zip(lost["index"], lost["name"])]}


def coverage_text(coverage: dict, resolution: float) -> str:
    """One line for reports: ``134 of 136 regions on the 2 mm grid (no voxel: A (63), B (64))``."""
    text = f"{coverage['n_kept']} of {coverage['n_regions']} regions on the {resolution:g} mm grid"
    if coverage["lost"]:
        text += " (no voxel, no row in the region table: " + ", ".join(
            f"{name} ({index})" for index, name in coverage["lost"]) + ")"
    return text


def _add_qc(values: dict, qc) -> None:
    """Merge the QC verdict (:meth:`anomaly.qc.SubjectQC.to_dict`) into ``values``.

    Each image's metrics and decision join its preprocessing entry in ``values["qc"]``;
    the subject's decision, warnings and ``forced`` flag sit beside them; the PET
    reference check and the global levels by reference are top-level values (the
    latter rescaled to the headline's measure, :func:`anomaly.qc.pet.rescale_levels`).
    """
    verdict = qc.to_dict()
    entries = values.setdefault("qc", {})
    for modality, image in verdict.pop("images").items():
        entries.setdefault(modality, {}).update(
            {"decision": image["decision"], **image["metrics"],
             "findings": [f["message"] for f in image["findings"]]})
    pet = verdict.pop("pet_reference", None)
    if qc.forced and qc.refusal():
        verdict["warnings"].insert(0, f"refused by QC, scored anyway (--force): {qc.refusal()}")
    entries.update(verdict, forced=bool(qc.forced and qc.refusal()))
    if pet is not None:
        levels = pet.pop("global_cortical_pet_percent_by_reference")
        if "global_cortical_pet_percent" in values:  # the headline's measure under each reference
            from anomaly.qc.pet import rescale_levels

            levels = rescale_levels(levels, pet["reference"], values["global_cortical_pet_percent"])
        values["global_cortical_pet_percent_by_reference"] = levels
        values["pet_reference_check"] = pet


def _copy_registration_figure(images: Mapping, folder: Path, result: ScoredSubject) -> None:
    """Bring the QC figure of ``anomaly prepare`` (if the inputs are prepared) into the report."""
    import shutil

    from anomaly.registration import registration_figure

    paths = [p for m, p in sorted(images.items(), key=lambda item: item[0] != "T1w")
             if isinstance(p, (str, Path))]
    figure = next((f for p in paths if (f := registration_figure(p)) is not None), None)
    if figure is not None:
        shutil.copyfile(figure, folder / figure.name)
        result.files["registration_qc"] = folder / figure.name
        result.values["registration_qc_figure"] = figure.name


def _predict_crs_one(crs_model, tables: dict, values: dict) -> dict:
    """CRS-R prediction for one freshly scored subject (for its report).

    Gets the same inputs as ``anomaly predict`` reading the written files: the rounded
    region tables and the top-level numbers of ``_scores.json``.
    """
    from anomaly.crs import predict_from_tables

    numbers = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return predict_from_tables(crs_model, tables, global_values=numbers)


__all__ = ["ScoredSubject", "Scorer", "coverage_text"]
