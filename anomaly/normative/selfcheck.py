"""Self-check: how well a fitted normative model finds lesions on the user's own controls.

After fitting, up to four calibration controls each receive synthetic lesions in their
preprocessed images (model grid, MRI robust z units, PET SUVR):

- **PET hypometabolism**: uptake times ``1 - d b`` (``d`` = 0.25 or 0.4);
- **structural**: T1w lower, FLAIR/T2w higher, ADC lower (two-sided and unknown MRI
  modalities: lower) by ``c b`` robust units (``c`` = 1 or 2), and PET times
  ``1 - 0.3 b``;

where ``b`` is a smooth-edged ball of radius 5, 8 or 12 mm (at least two voxels)
placed deep in the brain.
Three lesions per control, drawn from the model's seed. Each control is then scored
out of sample: its own contribution is removed from the calibration sums (exact
leave-one-out, :meth:`~anomaly.normative.calibration.VoxelwiseLinearModel.without`),
and every method the model can give (``ae``, ``zscore``, ``hybrid``, or ``zscore``
alone) is scored by the voxel AUROC and AUPRC of its combined anomaly map against the
balls (weight > 0.5) over the brain mask, pooled over the controls.

The table goes to ``metadata.json`` (``self_check``) and the model card; ``fit-normative
--method auto`` uses the method with the highest AUPRC (:func:`best_method`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from anomaly.constants import PET, lesion_sign
from anomaly.normative.calibration import standardise
from anomaly.normative.maps import combine_anomaly

if TYPE_CHECKING:
    from anomaly.normative.calibration import VoxelwiseLinearModel
    from anomaly.normative.data import CachedSubject

__all__ = ["RADII_MM", "best_method", "inject_lesions", "self_check", "self_check_text"]

#: Ball radii (mm), contrasts of the lesions and controls used.
RADII_MM = (5.0, 8.0, 12.0)
PET_DROPS = (0.25, 0.4)
MRI_SHIFTS = (1.0, 2.0)
MAX_SUBJECTS = 4
LESIONS_PER_SUBJECT = 3


def inject_lesions(data: np.ndarray, present: np.ndarray, modalities: Sequence[str], mask: np.ndarray,
                   resolution: float, rng: np.random.Generator,
                   n_lesions: int = LESIONS_PER_SUBJECT) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Add synthetic lesions to one preprocessed subject.

    Parameters
    ----------
    data : ndarray, shape (C, X, Y, Z)
        Normalised images (not modified).
    present : ndarray of bool, shape (C,)
    modalities : sequence of str
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask of the model.
    resolution : float
        Voxel size in mm.
    rng : numpy.random.Generator
    n_lesions : int
        Lesions to place (alternately PET-only and structural where both are possible).

    Returns
    -------
    tuple
        The lesioned images, the lesion mask (bool) and one record per lesion.
    """
    out = np.array(data, dtype=np.float32, copy=True)
    has_pet = PET in modalities and present[list(modalities).index(PET)]
    has_mri = any(present[c] and m != PET for c, m in enumerate(modalities))
    kinds = [k for k, ok in (("pet", has_pet), ("structural", has_mri)) if ok]
    depth = ndimage.distance_transform_edt(mask) * resolution
    truth = np.zeros(mask.shape, bool)
    records = []
    grid = np.indices(mask.shape, dtype=np.float32)
    for i in range(n_lesions if kinds else 0):
        kind = kinds[i % len(kinds)]
        radius = max(float(rng.choice(RADII_MM)), 2.0 * resolution)  # at least 2 voxels
        candidates = np.argwhere(depth >= radius + 2 * resolution)
        if candidates.size == 0:
            continue
        centre = candidates[rng.integers(len(candidates))]
        dist = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3))) * resolution
        ball = (1.0 / (1.0 + np.exp((dist - radius) / 1.5))).astype(np.float32) * mask
        strength = float(rng.choice(PET_DROPS if kind == "pet" else MRI_SHIFTS))
        for c, m in enumerate(modalities):
            if not present[c]:
                continue
            if m == PET:
                out[c] *= 1.0 - (strength if kind == "pet" else 0.3) * ball
            elif kind == "structural":
                sign = lesion_sign(m) or -1.0  # two-sided (ADC): acute lesions are lower
                out[c] += sign * strength * ball
        truth |= ball > 0.5
        records.append({"kind": kind, "radius_mm": radius, "strength": strength,
                        "centre_voxel": [int(v) for v in centre]})
    return out, truth, records


def self_check(model: Any, held_out: Sequence[CachedSubject], mean: np.ndarray, std: np.ndarray,
               sums: Mapping[str, VoxelwiseLinearModel], *, seed: int = 0) -> dict:
    """Detection of injected lesions by every method of a fitted model.

    Parameters
    ----------
    model : NormativeModel
        Fitted up to its calibration (network, ``calibration_``, ``mask_``).
    held_out : sequence of CachedSubject
        Calibration controls (the first :data:`MAX_SUBJECTS` are used).
    mean, std : ndarray, shape (C,)
        Channel standardisation.
    sums : mapping of str to VoxelwiseLinearModel
        The calibration sums per component ("ae", "zscore"), for leave-one-out.
    seed : int
        Seed of the lesion placement.

    Returns
    -------
    dict
        ``n_subjects``, ``lesions`` (records), ``methods`` (method -> auroc, auprc).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5C,)))
    scores: dict[str, list[np.ndarray]] = {}
    labels, records = [], []
    for sub in list(held_out)[:MAX_SUBJECTS]:
        data = np.load(sub.path, mmap_mode="r").astype(np.float32)
        lesioned, truth, recs = inject_lesions(data, sub.present, model.modalities_, model.mask_,
                                               float(model.grid_.resolution), rng)
        if not truth.any():
            continue
        clean = standardise(data, sub.present, mean, std, model.mask_)
        try:
            loo = {k: vlm.without(model._residual(clean, sub.present, kind=k), sub.present, sub.age,
                                  sub.sex).finalise() for k, vlm in sums.items()}
        except ValueError:  # too few calibration controls to leave one out
            return {"n_subjects": 0, "lesions": [], "methods": {},
                    "skipped": "too few calibration controls to leave one out"}
        z = model.component_z(standardise(lesioned, sub.present, mean, std, model.mask_), sub.present,
                              sub.age, sub.sex, calibrations=loo)
        for method, zmap in z.items():
            anomaly = combine_anomaly(zmap, sub.present, model.modalities_, model.mask_)
            scores.setdefault(method, []).append(anomaly[model.mask_])
        labels.append(truth[model.mask_])
        records.append({"label": sub.label, "lesions": recs})
    if not labels:
        return {"n_subjects": 0, "lesions": [], "methods": {}}
    y = np.concatenate(labels)
    methods = {m: {"auroc": round(float(roc_auc_score(y, np.concatenate(s))), 4),
                   "auprc": round(float(average_precision_score(y, np.concatenate(s))), 4)}
               for m, s in scores.items()}
    return {"n_subjects": len(labels), "prevalence": round(float(y.mean()), 5), "lesions": records,
            "methods": methods}


def best_method(table: Mapping[str, Any]) -> str:
    """The method with the highest self-check AUPRC ("hybrid" if the table is empty)."""
    methods = table.get("methods") or {}
    if not methods:
        return "hybrid"
    return max(methods, key=lambda m: (methods[m]["auprc"], m == "hybrid"))


def self_check_text(table: Mapping[str, Any]) -> str:
    """One line for the model card: AUPRC (AUROC) per method on the injected lesions."""
    methods = table.get("methods") or {}
    if not methods:
        return f"not run ({table.get('skipped', 'no held-out controls')})"
    parts = [f"{m} AUPRC {r['auprc']:.2f} (AUROC {r['auroc']:.2f})" for m, r in methods.items()]
    return (f"{'; '.join(parts)}: lesions injected into {table['n_subjects']} held-out controls "
            f"(chance AUPRC {table.get('prevalence', float('nan')):.3f})")
