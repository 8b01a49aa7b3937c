"""Region statistics on an atlas grid: summaries of maps, region tables, painting.

The one home of per-region numbers: :class:`RegionStats` groups the voxels of every
region once and summarises any number of maps; :func:`region_table` builds the
region table of a scored subject (columns in ``docs/architecture.md``);
:func:`paint_regions` turns one value per region back into an image; and
:func:`cortex_mask` / :func:`global_cortical_pet` give the subject's global cortical
PET level, the first number a coma clinician reads.

Global versus focal deviation. Awareness needs roughly more than 42% of normal
cortical metabolism (Stender et al. 2016). The *global cortical PET level* is the
subject's mean SUVR over cortical grey matter as a percentage of the normative mean
SUVR in the same voxels. A diffuse drop shifts every cortical z; the *focal z* of a
region is its PET z minus the subject's median cortical PET z, so that a focal lesion
stands out from diffuse hypometabolism.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from anomaly.constants import PET, Z_THRESHOLD
from anomaly.io import AnomalyInputError
from anomaly.preprocess import Grid, template_images

if TYPE_CHECKING:  # the atlas class uses this module, not the other way round
    from anomaly.atlas.atlases import Atlas

__all__ = ["NON_CORTICAL", "RegionStats", "TABLE_DIGITS", "cortex_mask", "global_cortical_pet", "paint_regions",
           "region_table", "round_table"]

#: Regions that are not cortex (Neuromorphometrics names), excluded from the global level.
NON_CORTICAL = ("Ventricle|Cerebell|Brain_Stem|Thalamus|Caudate|Putamen|Pallidum|Accumbens|Amygdala|"
                "Hippocampus|Ventral_DC|White_Matter|CSF|vessel|Optic_Chiasm|Basal_Forebrain|Lat_Vent|"
                "Inf_Lat_Vent|Cerebral_White|non-brain")
#: Significant digits kept in the written region tables (enough for z in 0.001 steps).
TABLE_DIGITS = 5


class RegionStats:
    """Per-region summaries of maps on one grid, with the voxel grouping precomputed.

    Scoring summarises four maps per subject and atlas on the same grid, so the
    grouping (and the brain mask) is computed once here. Values are summarised in
    float32 (as the maps are stored) unless given in float64.

    Parameters
    ----------
    atlas : Atlas
        On the grid of the maps.
    mask : ndarray of bool, optional
        Only these voxels count (e.g. the model's brain mask).
    """

    def __init__(self, atlas: Atlas, mask: np.ndarray | None = None) -> None:
        labels = atlas.label_array()
        keep = labels > 0
        if mask is not None:
            keep &= np.asarray(mask, bool)
        self.index = atlas.labels["index"].to_numpy(np.int64)
        self.names = atlas.labels["name"].to_numpy()
        lut = np.zeros(int(self.index.max(initial=0)) + 1, dtype=np.int64)
        lut[self.index] = np.arange(len(self.index))
        flat = np.flatnonzero(keep)
        pos = lut[labels.ravel()[flat]]
        order = np.argsort(pos, kind="stable")
        self._flat = flat[order]
        self._pos = pos[order]
        self.n_voxels = np.bincount(self._pos, minlength=len(self.index)).astype(np.int64)
        self.shape = labels.shape

    def summarise(self, values: np.ndarray, *, percentiles: Sequence[float] = (5, 95),
                  threshold: float = Z_THRESHOLD) -> dict[str, np.ndarray]:
        """Mean, percentiles and fractions beyond +-threshold of the finite voxels per region.

        Returns
        -------
        dict
            ``n_finite``, ``mean``, ``p05``/``p95``... (numpy's linear interpolation),
            ``frac_above`` (> threshold) and ``frac_below`` (< -threshold); NaN for a
            region without a finite voxel.
        """
        if values.shape != self.shape:
            raise AnomalyInputError(f"values: shape {values.shape} does not match the atlas grid {self.shape}")
        if any(not 0 <= q <= 100 for q in percentiles):
            raise AnomalyInputError(f"percentiles: expected values in [0, 100], got {list(percentiles)}")
        dtype = np.float64 if np.asarray(values).dtype == np.float64 else np.float32
        v = np.ascontiguousarray(values, dtype=dtype).ravel()[self._flat]
        pos = self._pos
        finite = np.isfinite(v)
        if not finite.all():
            v, pos = v[finite], pos[finite]
        n_regions = len(self.index)
        n = np.bincount(pos, minlength=n_regions)
        has = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"n_finite": n,
                   "mean": np.where(has, np.bincount(pos, weights=v, minlength=n_regions) / n, np.nan)}
            above = np.bincount(pos[v > threshold], minlength=n_regions) / n
            below = np.bincount(pos[v < -threshold], minlength=n_regions) / n
        # Each region's voxels are contiguous (grouped once in __init__): a partial sort
        # per region finds the order statistics, ~3x faster than one global sort.
        qs = [float(q) for q in percentiles]
        result = np.full((len(qs), n_regions), np.nan)
        starts = np.concatenate(([0], np.cumsum(n)[:-1]))
        for r in np.flatnonzero(has):
            last = int(n[r]) - 1
            ranks = [q / 100.0 * last for q in qs]
            lows = [math.floor(x) for x in ranks]
            kth = sorted({k for low in lows for k in (low, min(low + 1, last))})
            part = np.partition(v[starts[r]:starts[r] + last + 1], kth)
            for j, (x, low) in enumerate(zip(ranks, lows)):
                a, b = float(part[low]), float(part[min(low + 1, last)])
                result[j, r] = a + (x - low) * (b - a)  # numpy's "linear" method
        for j, q in enumerate(qs):
            out[percentile_name(q)] = result[j]
        out["frac_above"] = np.where(has, above, np.nan)
        out["frac_below"] = np.where(has, below, np.nan)
        return out


def percentile_name(q: float) -> str:
    """Column name of a percentile: 5 -> "p05", 95 -> "p95", 2.5 -> "p2.5"."""
    return f"p{int(q):02d}" if float(q).is_integer() else f"p{q:g}"


def region_table(score: Any, atlas: Atlas, cortex_z_offset: float | None, *,
                 mask: np.ndarray | None = None, global_percent: float | None = None,
                 stats: RegionStats | None = None) -> pd.DataFrame:
    """One row per atlas region; columns documented in docs/architecture.md.

    Parameters
    ----------
    score : anomaly.normative.SubjectScore
        Or any object with ``anomaly``, ``z``, ``modalities`` and ``present``.
    atlas : Atlas
        Already on the model grid.
    cortex_z_offset : float or None
        Subject's median cortical PET z (None without PET): ``pet_focal_z_mean`` is
        ``pet_z_mean`` minus it.
    mask : ndarray of bool, optional
        Brain mask; voxels outside do not count (``n_voxels`` counts the rest).
    global_percent : float, optional
        Global cortical PET level (% of normative), repeated on every row as
        ``pet_global_cortical_percent``.
    stats : RegionStats, optional
        Precomputed grouping of ``atlas`` (and ``mask``); built if not given.

    Returns
    -------
    pandas.DataFrame
        ``index, name, n_voxels, anomaly_mean, anomaly_p95``, then per modality ``M``
        ``M_z_mean, M_z_p05, M_z_p95, M_frac_absz_gt2, M_frac_z_lt_m2`` and, for a
        model with PET, ``pet_focal_z_mean, pet_global_cortical_percent``. Statistics
        use the finite voxels; NaN (written ``n/a``) for a modality the subject lacks
        or a region none of its voxels covers.
    """
    stats = stats if stats is not None else RegionStats(atlas, mask)
    base = stats.summarise(score.anomaly, percentiles=(95,))
    table = pd.DataFrame({"index": stats.index, "name": stats.names, "n_voxels": stats.n_voxels,
                          "anomaly_mean": base["mean"], "anomaly_p95": base["p95"]})
    for c, modality in enumerate(score.modalities):
        cols = [f"{modality}_z_mean", f"{modality}_z_p05", f"{modality}_z_p95",
                f"{modality}_frac_absz_gt2", f"{modality}_frac_z_lt_m2"]
        if score.present[c]:
            s = stats.summarise(score.z[c], percentiles=(5, 95), threshold=Z_THRESHOLD)
            values = [s["mean"], s["p05"], s["p95"], s["frac_above"] + s["frac_below"], s["frac_below"]]
        else:
            values = [np.nan] * len(cols)  # written as n/a: no data, not zero deviation
        for col, v in zip(cols, values):
            table[col] = v
    if PET in score.modalities:
        present = bool(score.present[score.modalities.index(PET)])
        offset = cortex_z_offset if present and cortex_z_offset is not None else np.nan
        table["pet_focal_z_mean"] = table["pet_z_mean"] - offset
        table["pet_global_cortical_percent"] = np.nan if global_percent is None or not present \
            else float(global_percent)
    return table


def round_table(table: pd.DataFrame, digits: int = TABLE_DIGITS) -> pd.DataFrame:
    """Float columns rounded to ``digits`` significant digits (NaN kept)."""
    out = table.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            values = out[col].to_numpy(np.float64)
            out[col] = [float(f"{v:.{digits}g}") for v in values]
    return out


def paint_regions(labels: np.ndarray, affine: np.ndarray, values: Mapping[int, float]) -> nib.Nifti1Image:
    """One value per region label painted on its voxels (float32; 0 elsewhere and for non-finite values).

    Parameters
    ----------
    labels : ndarray of int
        Label image data (0 = background).
    affine : (4, 4) array
    values : mapping
        Region index -> value; labels not given are painted 0.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    index = np.fromiter((int(k) for k in values), dtype=np.int64, count=len(values))
    value = np.fromiter((float(v) for v in values.values()), dtype=np.float64, count=len(values))
    value = np.where(np.isfinite(value), value, 0.0)
    out = np.zeros(labels.shape, dtype=np.float32)
    if index.size:
        # Vectorised lookup: position of each voxel's label among the painted ones.
        order = np.argsort(index)
        pos = np.clip(np.searchsorted(index[order], labels), 0, index.size - 1)
        hit = index[order][pos] == labels
        out[hit] = value[order][pos][hit].astype(np.float32)
    img = nib.Nifti1Image(out, np.asarray(affine, dtype=float))
    img.header.set_data_dtype(np.float32)
    img.header.set_xyzt_units("mm")
    return img


def cortex_mask(grid: Grid, brain_mask: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Cortical grey matter on ``grid``: likely grey matter, labelled, not a subcortical label.

    Parameters
    ----------
    grid : Grid
    brain_mask : ndarray of bool
        The model's brain mask.
    atlas : Atlas
        The Neuromorphometrics atlas (whose names :data:`NON_CORTICAL` lists), on ``grid``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a pattern matching no region is fine here
        non_cortex = atlas.region_mask(NON_CORTICAL)
    gm = template_images(grid)["gm"] > 0.5
    return gm & (atlas.label_array() > 0) & ~non_cortex & np.asarray(brain_mask, bool)


def global_cortical_pet(pet: np.ndarray, pet_z: np.ndarray, normative_pet: np.ndarray,
                        cortex: np.ndarray) -> dict | None:
    """The subject's global cortical PET level against the normative mean.

    Parameters
    ----------
    pet : ndarray
        The subject's PET SUVR on the model grid.
    pet_z : ndarray
        Its z map (NaN where the image does not cover).
    normative_pet : ndarray
        The controls' mean SUVR.
    cortex : ndarray of bool
        :func:`cortex_mask`.

    Returns
    -------
    dict or None
        ``global_cortical_pet_percent`` (100 x subject / normative mean over the covered
        cortical voxels), ``cortical_pet_suvr``, ``normative_cortical_pet_suvr`` and
        ``median_cortical_pet_z``; None when no cortical voxel is covered.
    """
    z = pet_z[cortex]
    covered = np.isfinite(z)
    if not covered.any():
        return None
    subject = float(np.mean(pet[cortex][covered], dtype=np.float64))
    normal = float(np.mean(normative_pet[cortex][covered], dtype=np.float64))
    return {"global_cortical_pet_percent": 100.0 * subject / normal,
            "cortical_pet_suvr": subject, "normative_cortical_pet_suvr": normal,
            "median_cortical_pet_z": float(np.median(z[covered]))}
