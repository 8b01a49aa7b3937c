"""Score one subject with a normative model and write its BIDS-derivatives outputs.

:class:`Scorer` applies a loaded model to one subject at a time and writes, per
subject: voxel z maps per modality and the combined anomaly map (NIfTI), one region
table per atlas, subject-level values (``_scores.json``: global cortical PET level,
quality checks), and unless switched off, glass-brain figures and an HTML report. The
``anomaly score`` command (job planning, shards, the output index) is
:mod:`anomaly.cli.score`.

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

Speed. A scorer loads the atlases once, precomputes the voxel grouping of every atlas,
writes NIfTI files from a background thread, and reuses the glass-brain outlines
between subjects (:class:`anomaly.report.figures.GlassBrainRenderer`); batch scoring
(:func:`anomaly.cli.score.score_jobs`) preprocesses the next subject in a second
thread while the current one is scored (reading and resampling NIfTI files is mostly
zlib and numpy, which release the GIL).
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
    def add_time(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to the step ``key`` of :attr:`timings`."""
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def _tick(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.add_time(key, now - start)
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
        if crs_model is not None:
            result.values["crs"] = _predict_crs_one(crs_model, tables, result.values)
        result.files["scores"] = folder / f"sub-{label}_scores.json"
        write_json(result.values, result.files["scores"])
        start = self._tick("write", start)
        if figures:
            main_table = next(iter(tables.values()))
            result.files.update(self._figures_and_report(label, score, main_table, result.values, folder))
            start = self._tick("figures", start)
        if wait:
            self.flush()
        return result

    def region_tables(self, score: SubjectScore, glob: dict | None) -> dict[str, pd.DataFrame]:
        """One rounded region table per atlas, keyed by atlas name (the first is the report's)."""
        offset = glob["median_cortical_pet_z"] if glob else None
        percent = glob["global_cortical_pet_percent"] if glob else None
        return {atlas.name: round_table(region_table(score, atlas, offset, global_percent=percent,
                                                     stats=stats))
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

    @staticmethod
    def _write_tables(label: str, tables: Mapping[str, pd.DataFrame], folder: Path) -> dict[str, Path]:
        """Write one region table per atlas."""
        files = {}
        for name, table in tables.items():
            path = folder / (derivative_name(label, f"atlas-{name}", "regions") + ".tsv")
            write_tsv(table, path)
            files[f"regions_{name}"] = path
        return files

    def _figures_and_report(self, label: str, score: SubjectScore, table: pd.DataFrame, values: dict,
                            folder: Path) -> dict:
        """Figures and HTML report (:func:`anomaly.report.subject.write_subject_figures`)."""
        # matplotlib and nilearn's plotting load in ~1 s: only when figures are asked for.
        from anomaly.report.subject import write_subject_figures

        return write_subject_figures(label, score, table, values, folder, t1=self._t1, renderers=self._renderers)


def _predict_crs_one(crs_model, tables: dict, values: dict) -> dict:
    """CRS-R prediction for one freshly scored subject (for its report).

    Gets the same inputs as ``anomaly predict`` reading the written files: the rounded
    region tables and the top-level numbers of ``_scores.json``.
    """
    from anomaly.crs import predict_from_tables

    numbers = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return predict_from_tables(crs_model, tables, global_values=numbers)


__all__ = ["ScoredSubject", "Scorer"]
