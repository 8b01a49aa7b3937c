"""A scored subject's figures and HTML report, composed from the scored maps.

:func:`write_subject_figures` draws the combined-anomaly glass brain, the FDG-PET z
glass brain (when PET is present) and orthogonal slices through the most abnormal
location, then renders ``sub-<label>_report.html`` embedding them with the region table,
the quality checks, the global cortical metabolism (best-preserved hemisphere, its
reference region and 95% interval) and the CRS-R estimate. The region table shows the
focal PET deviations: the z difference ``pet_focal_z_mean`` and the log ratio to the
subject's own cortex against the controls (``pet_focal_logratio``, ``_z``).

The scored maps come in as any object with the attributes of
:class:`anomaly.normative.SubjectScore` that figures need (duck typing keeps this stage
below the normative model):

- ``modalities`` (list of str) and ``present`` (one bool per modality);
- ``z`` (one voxel array per modality) and ``anomaly`` (voxel array, >= 0);
- ``to_image(array)``: the array as a NIfTI image on the model grid;
- ``grid.to_image(array)``: likewise, for the background anatomy.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly.constants import PET, Z_THRESHOLD, derivative_name
from anomaly.report.figures import GlassBrainRenderer, plot_peak_slices
from anomaly.report.html import render_subject_report

__all__ = ["ANOMALY_FIGURE_THRESHOLD", "METABOLISM_FACTS", "REPORT_COLUMNS", "report_regions",
           "write_subject_figures"]

#: Threshold of the combined-anomaly glass brain and slices (z units): the map is a
#: mean over modalities, so a voxel with z = 4.5 in one modality of three reaches 1.5.
ANOMALY_FIGURE_THRESHOLD = 1.5
#: Region-table columns shown in the report (those present); ``{m}`` stands for each
#: modality.
REPORT_COLUMNS = ("name", "n_voxels", "anomaly_mean", "anomaly_p95", "{m}_z_mean", "pet_frac_z_lt_m2",
                  "pet_focal_z_mean", "pet_focal_logratio", "pet_focal_logratio_z")
#: ``_scores.json`` keys of the global cortical level shown in the report, and their labels.
METABOLISM_FACTS = (
    ("global_cortical_pet_percent_sd", "SD of the controls' own level (%)"),
    ("global_cortical_pet_n_controls", "controls with PET"),
    ("global_cortical_pet_percent_whole_cortex", "whole cortex, % of the normative mean"),
    ("cortical_pet_suvr", "cortical PET SUVR (subject)"),
    ("normative_cortical_pet_suvr", "cortical PET SUVR (normative mean)"),
    ("median_cortical_pet_z", "median cortical PET z (focal z = region z minus this)"),
)


def write_subject_figures(label: str, score: Any, table: pd.DataFrame, values: Mapping[str, Any],
                          folder: Path, *, t1: np.ndarray,
                          renderers: MutableMapping[str, GlassBrainRenderer] | None = None) -> dict[str, Path]:
    """Draw one subject's figures and write its HTML report into ``folder``.

    Parameters
    ----------
    label : str
        Subject label, without ``sub-``.
    score : SubjectScore-like
        The scored maps (see the module docstring for the attributes used).
    table : pandas.DataFrame
        The subject's region table of the main atlas.
    values : mapping
        The subject's ``_scores.json`` content (modalities, qc, model, global PET level,
        ``crs``...).
    folder : path
        The subject's output folder ``sub-<label>/``.
    t1 : numpy.ndarray
        Template T1w on the model grid: the background of the slices.
    renderers : mutable mapping, optional
        Cache of :class:`~anomaly.report.figures.GlassBrainRenderer` by kind
        (``"anomaly"``, ``"signed"``), filled as needed: pass the same mapping for
        every subject of a batch to reuse the brain outlines.

    Returns
    -------
    dict of str to pathlib.Path
        ``glassbrain``, ``glassbrain_pet`` (with PET), ``slices`` and ``report``.
    """
    files, figures = _draw_figures(label, score, Path(folder), t1, {} if renderers is None else renderers)
    if values.get("registration_qc_figure"):  # inputs registered by anomaly prepare
        figures["Registration to MNI152 (anomaly prepare)"] = (
            Path(folder) / values["registration_qc_figure"],
            "MNI152 template edges over the subject's registered T1w: they should follow its brain outline, "
            "ventricles and sulci; if they do not, the maps and the global level are not to be trusted.")
    qc, metabolism = _report_facts(values)
    report = Path(folder) / f"sub-{label}_report.html"
    render_subject_report(
        report, subject={"participant_id": f"sub-{label}", "age": values.get("age"),
                         "sex": values.get("sex")},
        model=values["model"], figures=figures, top_regions=report_regions(table, score.modalities), qc=qc,
        global_metabolism=metabolism, crs=values.get("crs"))
    files["report"] = report
    return files


def _renderer(renderers: MutableMapping[str, GlassBrainRenderer], kind: str) -> GlassBrainRenderer:
    """The cached renderer of ``kind``, built on first use."""
    if kind not in renderers:
        renderers[kind] = GlassBrainRenderer(kind)
    return renderers[kind]


def _draw_figures(label: str, score: Any, folder: Path, t1: np.ndarray,
                  renderers: MutableMapping[str, GlassBrainRenderer]) -> tuple[dict, dict]:
    """Write the PNGs; returns their paths by key and the report's figures (title -> (path, caption))."""
    files, figures = {}, {}
    anomaly_img = score.to_image(score.anomaly)
    path = folder / (derivative_name(label, "stat-anomaly", "glassbrain") + ".png")
    _renderer(renderers, "anomaly").plot(anomaly_img, path, threshold=ANOMALY_FIGURE_THRESHOLD,
                                         title=f"sub-{label}: combined anomaly (z units)")
    figures["Combined anomaly map (glass brain)"] = (
        path, ("Largest over the modalities present of the z score in the lesion direction, "
               f"shown above {ANOMALY_FIGURE_THRESHOLD:g}."))
    files["glassbrain"] = path
    if PET in score.modalities and score.present[score.modalities.index(PET)]:
        c = score.modalities.index(PET)
        path = folder / (derivative_name(label, f"mod-{PET}", "stat-z", "glassbrain") + ".png")
        _renderer(renderers, "signed").plot(score.to_image(score.z[c]), path, threshold=Z_THRESHOLD,
                                            title=f"sub-{label}: FDG-PET z")
        figures["FDG-PET z map (glass brain)"] = (
            path, f"Blue: hypometabolism, red: hypermetabolism; |z| > {Z_THRESHOLD:g} shown.")
        files["glassbrain_pet"] = path
    path = folder / (derivative_name(label, "stat-anomaly", "slices") + ".png")
    plot_peak_slices(anomaly_img, score.grid.to_image(t1), path,
                     threshold=ANOMALY_FIGURE_THRESHOLD, title=f"sub-{label}: most abnormal location")
    figures["Orthogonal slices at the most abnormal location"] = (
        path, "Combined anomaly over the MNI152 template.")
    files["slices"] = path
    return files, figures


def report_regions(table: pd.DataFrame, modalities: list[str]) -> pd.DataFrame:
    """The :data:`REPORT_COLUMNS` of a region table, most abnormal region first."""
    columns = []
    for col in REPORT_COLUMNS:
        names = [col.format(m=m) for m in modalities] if "{m}" in col else [col]
        columns += [n for n in names if n in table.columns and n not in columns]
    return table.sort_values("anomaly_mean", ascending=False, na_position="last")[columns]


def _report_facts(values: Mapping[str, Any]) -> tuple[dict, dict | None]:
    """Quality checks and global metabolism of the report, from ``_scores.json`` values."""
    qc = {"modalities present": ", ".join(values["modalities_present"]) or "none",
          "modalities missing": ", ".join(values["modalities_missing"]) or "none"}
    for modality, info in values.get("qc", {}).items():
        if isinstance(info, dict):
            for key, val in info.items():
                qc[f"{modality} {key}"] = val
    # The QC verdict (anomaly.qc) as "QC ..." keys: the report's banner reads them.
    qc.update({f"QC {key}": val for key, val in values.get("qc", {}).items()
               if key in ("decision", "forced", "warnings", "note")})
    metabolism = None
    if "global_cortical_pet_percent" in values:
        metabolism = {
            "global_cortical_pet_percent": values["global_cortical_pet_percent"],
            "pet_reference": values.get("global_cortical_pet_reference", values["pet_reference"]),
        }
        for key in ("global_cortical_pet_percent_ci95", "global_cortical_pet_measure"):
            if values.get(key) is not None:
                metabolism[key] = values[key]
        for side, level in (values.get("global_cortical_pet_percent_by_hemisphere") or {}).items():
            metabolism[f"{side} hemisphere, % of the normative mean"] = level
        metabolism.update({label: values[key] for key, label in METABOLISM_FACTS if values.get(key) is not None})
        for ref, level in values.get("global_cortical_pet_percent_by_reference", {}).items():
            metabolism[f"% of normal with reference {ref}"] = level
    return qc, metabolism
