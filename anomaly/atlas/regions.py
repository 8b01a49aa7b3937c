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
SUVR in the same voxels; with the hemispheres given (as scoring does) it is the
best-preserved hemisphere's level, as Stender et al. measure it, against the controls'
same measure (:mod:`anomaly.atlas.petlevels`). A diffuse drop shifts every cortical z;
the *focal z* of a region is its PET z minus the subject's median cortical PET z, and the
*focal log ratio* compares log(region PET / own cortical mean PET) with the controls'
distribution of the same ratio, which no global scale factor moves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from anomaly.atlas.petlevels import (
    GlobalLevelNorm,
    LogRatioNorm,
    hemisphere_levels,
    pet_log_ratios,
)
from anomaly.constants import PET, Z_THRESHOLD
from anomaly.io import AnomalyInputError
from anomaly.preprocess import Grid, template_images

if TYPE_CHECKING:  # the atlas class uses this module, not the other way round
    from anomaly.atlas.atlases import Atlas

__all__ = [
    "NON_CORTICAL",
    "TABLE_DIGITS",
    "RegionStats",
    "cortex_mask",
    "global_cortical_pet",
    "paint_regions",
    "region_table",
    "round_table",
]

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

    def means(self, values: np.ndarray, *, finite_in: np.ndarray | None = None,
              nonzero: bool = False) -> np.ndarray:
        """Mean of the finite voxels of ``values`` per region (float64; NaN for none).

        Much cheaper than :meth:`summarise` (no order statistics): one pass of bincount,
        on the grouped voxels only.

        Parameters
        ----------
        values : ndarray
            A map on the atlas grid.
        finite_in : ndarray, optional
            Only voxels where this map (same grid) is finite count, e.g. a z map that is
            NaN where the image does not cover.
        nonzero : bool
            Leave out voxels where ``values`` is 0 (a preprocessed PET's uncovered voxels).
        """
        for what, array in (("values", values), ("finite_in", finite_in)):
            if array is not None and array.shape != self.shape:
                raise AnomalyInputError(f"{what}: shape {array.shape} does not match the atlas grid {self.shape}")
        v = np.asarray(values).ravel()[self._flat].astype(np.float64)
        finite = np.isfinite(v)
        if finite_in is not None:
            finite &= np.isfinite(np.asarray(finite_in).ravel()[self._flat])
        if nonzero:
            finite &= v != 0
        n = np.bincount(self._pos[finite], minlength=len(self.index))
        with np.errstate(invalid="ignore", divide="ignore"):
            sums = np.bincount(self._pos[finite], weights=v[finite], minlength=len(self.index))
            return np.where(n > 0, sums / n, np.nan)

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
                 stats: RegionStats | None = None, focal_norm: LogRatioNorm | None = None,
                 cortex_pet_mean: float | None = None) -> pd.DataFrame:
    """One row per atlas region; columns documented in docs/architecture.md.

    ``anomaly_mean`` and ``anomaly_p95`` summarise the combined anomaly map, which at
    each voxel combines only the modalities the subject has (and that cover the
    voxel): without PET it is an MRI-only number. The per-modality columns, n/a for a
    missing modality, are the ones to compare across subjects with different scans.

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
    focal_norm : LogRatioNorm, optional
        The controls' log ratios of this atlas's regions
        (:class:`anomaly.atlas.petlevels.LogRatioNorm`). Given, a model with PET gets
        the columns ``pet_focal_logratio`` and ``pet_focal_logratio_z``; they are NaN
        where the norm does not match the table's regions (e.g.
        :meth:`LogRatioNorm.missing` for a model fitted without the norms).
    cortex_pet_mean : float, optional
        The subject's mean PET SUVR over covered cortical grey matter
        (``cortical_pet_suvr`` of :func:`global_cortical_pet`): the denominator of the
        log ratios.

    Returns
    -------
    pandas.DataFrame
        ``index, name, n_voxels, anomaly_mean, anomaly_p95``, then per modality ``M``
        ``M_z_mean, M_z_p05, M_z_p95, M_frac_absz_gt2, M_frac_z_lt_m2`` and, for a
        model with PET, ``pet_focal_z_mean, pet_global_cortical_percent`` (and with
        ``focal_norm``, ``pet_focal_logratio, pet_focal_logratio_z``). Statistics
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
        if focal_norm is not None:
            c = score.modalities.index(PET)
            diff, z = _focal_logratio(score.data[c], score.z[c], stats, focal_norm,
                                      cortex_pet_mean if present else None)
            table["pet_focal_logratio"], table["pet_focal_logratio_z"] = diff, z
    return table


def _focal_logratio(pet: np.ndarray, pet_z: np.ndarray, stats: RegionStats, norm: LogRatioNorm,
                    cortex_mean: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Each region's log ratio to the cortical mean minus the controls' mean, and its z.

    NaN everywhere when the norm is not this atlas's or there is no cortical mean; a
    few milliseconds at 2 mm (one bincount over the grouped voxels).
    """
    nan = np.full(len(stats.index), np.nan)
    if cortex_mean is None or not norm.matches(stats.index, stats.n_voxels):
        return nan, nan.copy()
    ratios = pet_log_ratios(stats.means(pet, finite_in=pet_z, nonzero=True), float(cortex_mean))
    return norm.deviation(ratios)


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
                        cortex: np.ndarray, *, hemispheres: tuple[np.ndarray, np.ndarray] | None = None,
                        norm: GlobalLevelNorm | None = None) -> dict | None:
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
    hemispheres : (ndarray, ndarray), optional
        Left and right cortex (:func:`anomaly.atlas.petlevels.hemisphere_masks`), on the
        grid or already restricted to the cortex (``h[cortex]``, cheaper). Given,
        ``global_cortical_pet_percent`` is the best-preserved hemisphere's level
        (Stender et al. 2016) and the whole-cortex level moves to
        ``global_cortical_pet_percent_whole_cortex``.
    norm : GlobalLevelNorm, optional
        The controls' levels (:class:`anomaly.atlas.petlevels.GlobalLevelNorm`): the
        best hemisphere is then a percentage of the controls' mean best hemisphere,
        with their spread as uncertainty. Without it (models fitted before the norm
        was recorded) the best hemisphere is a percentage of the normative mean image
        over its voxels, and no uncertainty is given.

    Returns
    -------
    dict or None
        ``global_cortical_pet_percent`` (100 x subject / normative mean over the covered
        cortical voxels; the best hemisphere with ``hemispheres``),
        ``cortical_pet_suvr``, ``normative_cortical_pet_suvr`` and
        ``median_cortical_pet_z``; with ``hemispheres`` also
        ``global_cortical_pet_percent_whole_cortex``, ``global_cortical_pet_hemisphere``,
        ``global_cortical_pet_percent_by_hemisphere`` and ``global_cortical_pet_measure``;
        with a usable ``norm`` also ``global_cortical_pet_percent_sd`` (the controls'
        SD of their own percent), ``global_cortical_pet_percent_ci95`` and
        ``global_cortical_pet_n_controls``. None when no cortical voxel is covered.
    """
    z = pet_z[cortex]
    covered = np.isfinite(z)
    if not covered.any():
        return None
    pet_cortex, normal_cortex = pet[cortex], normative_pet[cortex]
    subject = float(np.mean(pet_cortex[covered], dtype=np.float64))
    normal = float(np.mean(normal_cortex[covered], dtype=np.float64))
    out = {"global_cortical_pet_percent": 100.0 * subject / normal,
           "cortical_pet_suvr": subject, "normative_cortical_pet_suvr": normal,
           "median_cortical_pet_z": float(np.median(z[covered]))}
    if hemispheres is not None:
        # On the cortical voxels only (about 1 ms at 2 mm); scoring passes them so.
        sides = tuple(np.asarray(h, bool)[cortex] if np.shape(h) == cortex.shape else np.asarray(h, bool)
                      for h in hemispheres)
        out.update(_best_hemisphere(np.where(covered, pet_cortex, np.nan), normal_cortex, sides, norm,
                                    whole=out["global_cortical_pet_percent"]))
    return out


def _best_hemisphere(pet: np.ndarray, normative_pet: np.ndarray, sides: tuple[np.ndarray, np.ndarray],
                     norm: GlobalLevelNorm | None, whole: float) -> dict:
    """The best-preserved hemisphere's level, as % of the controls' same measure when known.

    ``pet`` (NaN where not covered), ``normative_pet`` and ``sides`` are over the same
    voxels (the cortex).
    """
    levels = hemisphere_levels(pet, normative_pet, sides)
    finite = {k: v for k, v in levels.items() if math.isfinite(v)}
    out = {"global_cortical_pet_percent_whole_cortex": whole,
           "global_cortical_pet_percent_by_hemisphere": {k: (round(v, 2) if math.isfinite(v) else None)
                                                         for k, v in levels.items()}}
    if not finite:  # only midline cortex covered: keep the whole-cortex level
        out["global_cortical_pet_measure"] = "whole cortex (no hemisphere covered)"
        return out
    side = max(finite, key=finite.get)
    out["global_cortical_pet_hemisphere"] = side
    if norm is not None and norm.usable():
        percent = 100.0 * finite[side] / norm.best_mean
        low, high = norm.interval(percent)
        out.update({"global_cortical_pet_percent": percent,
                    "global_cortical_pet_percent_sd": norm.percent_sd(),
                    "global_cortical_pet_percent_ci95": [round(low, 2), round(high, 2)],
                    "global_cortical_pet_n_controls": int(norm.n),
                    "global_cortical_pet_measure": f"best-preserved hemisphere ({side}), % of the controls' "
                                                   "mean best-hemisphere level"})
    else:
        out.update({"global_cortical_pet_percent": finite[side],
                    "global_cortical_pet_measure": f"best-preserved hemisphere ({side}), % of the normative "
                                                   "mean image (model without control levels: no interval)"})
    return out
