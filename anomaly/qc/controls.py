"""QC of the training set: each control against the others, before it shapes every z map.

One bad control (a mislabelled image, a misaligned brain, an unreported lesion) shifts
the normative mean and inflates the SD of every voxel it touches. At ``fit-normative``
:func:`screen_controls` computes every control's QC numbers leave-one-out (its
similarity to the mean of the *other* controls, and the largest connected cluster of
its voxels more than 3 SD from them, ``abnormal_fraction``), decides about each control against the others' distribution,
and summarises all of them into the :class:`~anomaly.qc.reference.QCReference` that
the model folder keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from anomaly.constants import PET
from anomaly.preprocess import Grid, template_images
from anomaly.qc.decide import assess_image
from anomaly.qc.masks import qc_masks
from anomaly.qc.metrics import covered_voxels, image_metrics
from anomaly.qc.pet import reference_ratios, region_means
from anomaly.qc.reference import QCReference

#: A control is an outlier when the largest cluster of its voxels beyond 3 SD of the other
#: controls (median over its modalities: a lesion shows in all of them, scanner
#: differences in one) covers more than this fraction of the brain (~45 cm3)...
OUTLIER_CLUSTER = 0.03
#: ... and more than this many times the largest such value of the other controls.
OUTLIER_OVER_MAX = 2.0
#: Fewer controls than this: no cluster screening (voxel SDs from a handful of controls
#: have heavy tails, so healthy controls show large "abnormal" clusters).
MIN_CONTROLS_CLUSTER = 8
#: Voxelwise |z| above which a control's voxel counts as abnormal.
ABNORMAL_Z = 3.0


@dataclass
class ControlScreen:
    """Result of :func:`screen_controls`.

    Attributes
    ----------
    reference : QCReference
        The distribution over the controls that passed.
    outliers : dict of str to str
        Outlier control label -> one-line reason.
    metrics : dict
        Label -> modality -> metric -> value (every control, outliers included).
    """

    reference: QCReference
    outliers: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)


Loader = Callable[[], tuple[np.ndarray, np.ndarray]]


def screen_controls(controls: Mapping[str, Loader], modalities: Sequence[str], grid: Grid,
                    ages: Mapping[str, float | None] | None = None) -> ControlScreen:
    """Leave-one-out QC of the training controls.

    Parameters
    ----------
    controls : mapping of str to callable
        Control label -> function returning ``(data, present)``: the normalised images
        (C, X, Y, Z) and which channels are present (called twice per control).
    modalities : sequence of str
        Channel names.
    grid : Grid
        The model grid.
    ages : mapping of str to float or None, optional
        Control label -> age.

    Returns
    -------
    ControlScreen
    """
    templates = template_images(grid)
    brain = templates["mask"] > 0.5
    total, square, count = _sums(controls, len(modalities), grid)
    metrics: dict[str, dict[str, dict[str, float | None]]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    for label, load in controls.items():
        data, present = load()
        metrics[label] = {}
        for c, modality in enumerate(modalities):
            if not present[c] or count[c] < 3:
                continue
            x = np.asarray(data[c], np.float64)
            mean = (total[c] - x) / (count[c] - 1)
            var = np.maximum((square[c] - x * x) / (count[c] - 1) - mean * mean, 0.0) * \
                (count[c] - 1) / (count[c] - 2)
            values = image_metrics(x.astype(np.float32), brain, templates, mean.astype(np.float32))
            covered = covered_voxels(x, brain)
            values["abnormal_fraction"] = _largest_cluster(x, mean, var, covered)
            metrics[label][modality] = values
            if modality == PET:
                ratios[label] = reference_ratios(region_means(x, qc_masks(grid)))
    outliers = {label: reason for label in metrics
                if (reason := _outlier_reason(label, metrics, ratios, ages or {}))}
    kept = {k: v for k, v in metrics.items() if k not in outliers}
    reference = _reference(kept, ratios, ages or {})
    return ControlScreen(reference=reference, outliers=outliers, metrics=metrics)


def _largest_cluster(x: np.ndarray, mean: np.ndarray, var: np.ndarray, covered: np.ndarray) -> float | None:
    """Largest connected cluster of voxels beyond :data:`ABNORMAL_Z` SD of the others, as a
    fraction of the covered brain.

    A lesion is one contiguous cluster; scanner differences scatter abnormal voxels
    over the whole brain, so the largest cluster separates the two.
    """
    if not covered.any():
        return None
    z = np.zeros(x.shape)
    z[covered] = np.abs(x - mean)[covered] / np.sqrt(np.maximum(var[covered], 1e-12))
    labels, n = ndimage.label(z > ABNORMAL_Z)
    if n == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max()) / int(covered.sum())


def _median_cluster(per_modality: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """Median over modalities of the largest abnormal cluster (None when none was computed)."""
    values = [v["abnormal_fraction"] for v in per_modality.values() if v.get("abnormal_fraction") is not None]
    return float(np.median(values)) if values else None


def _sums(controls: Mapping[str, Loader], n_channels: int, grid: Grid):
    """Voxelwise sum, sum of squares and count of present images per channel."""
    total = np.zeros((n_channels, *grid.shape))
    square = np.zeros_like(total)
    count = np.zeros(n_channels, dtype=int)
    for load in controls.values():
        data, present = load()
        for c in np.flatnonzero(present):
            x = np.asarray(data[c], np.float64)
            total[c] += x
            square[c] += x * x
            count[c] += 1
    return total, square, count


def _reference(metrics: Mapping[str, Mapping[str, Mapping[str, float | None]]],
               ratios: Mapping[str, Mapping[str, float | None]], ages: Mapping[str, float | None]) -> QCReference:
    """QCReference of a set of controls."""
    pet_ratios: dict[str, list[float]] = {}
    for label in metrics:
        for name, value in ratios.get(label, {}).items():
            if value is not None:
                pet_ratios.setdefault(name, []).append(value)
    return QCReference.from_controls(metrics, [ages.get(label) for label in metrics], pet_ratios)


def _outlier_reason(label: str, metrics: Mapping[str, Mapping[str, Mapping[str, float | None]]],
                    ratios: Mapping[str, Mapping[str, float | None]], ages: Mapping[str, float | None]
                    ) -> str | None:
    """Why a control is a clear outlier against the others, or None."""
    others = {k: v for k, v in metrics.items() if k != label}
    if len(others) < 3:
        return None
    reference = _reference(others, ratios, ages)
    for modality, values in metrics[label].items():
        verdict = assess_image(modality, f"sub-{label} {modality}", values, reference)
        if verdict.decision == "refuse":
            return verdict.refusal()
    if len(metrics) < MIN_CONTROLS_CLUSTER:
        return None
    cluster = _median_cluster(metrics[label])
    others_max = max((c for v in others.values() if (c := _median_cluster(v)) is not None), default=0.0)
    if cluster is not None and cluster > max(OUTLIER_CLUSTER, OUTLIER_OVER_MAX * others_max):
        return (f"sub-{label}: a cluster of {cluster:.1%} of its brain lies more than {ABNORMAL_Z:g} SD from the "
                f"other controls (median over modalities; others at most {others_max:.1%}, outlier above "
                f"{max(OUTLIER_CLUSTER, OUTLIER_OVER_MAX * others_max):.1%}): a lesion or an artefact in a "
                "control distorts every z map")
    return None
