"""PET levels relative to the subject's own cortex, and the controls' norms for them.

Two numbers carry most of the physiology of an FDG-PET scan in disorders of
consciousness, and neither should depend on the scan's global scale:

Focal deviation (per region)
    Proportional scaling: ``r = log(region mean PET / the subject's own cortical mean
    PET)``. A diffuse drop of cortical metabolism (or any global scale factor: dose,
    reference region, scanner calibration) scales numerator and denominator alike, so
    ``r`` of a cortical region does not move; a focal lesion lowers it. The same ratio
    is computed for every control at fit (:class:`LogRatioNorm`), and a subject's
    region is compared with the controls' distribution:
    ``pet_focal_logratio = r - mean_controls(r)`` (log units: -0.1 is about 10% less
    uptake than the rest of the cortex would predict) and ``pet_focal_logratio_z`` =
    that difference / ``max(sd_controls(r), LOGRATIO_SD_FLOOR)``.

Global cortical level (per subject)
    As Stender et al. (2016) measure it: the mean uptake of the best-preserved
    cortical hemisphere. Each hemisphere's mean is taken as a percentage of the
    normative mean image over the same covered voxels (so that a partial field of view
    compares like with like); the higher of the two is divided by the controls' mean of
    the same measure (:class:`GlobalLevelNorm`), so that a control scores 100% on
    average. The controls' SD of their own percent gives the uncertainty.

Across patients, :class:`GlobalCoupling` estimates how much each region's log ratio
follows the global level (deep grey matter and the brainstem follow the cortex less)
and removes it; it is a cohort-level step for the CRS-R features, not part of scoring.

Everything here takes plain arrays (the PET SUVR on the model grid, where 0 marks a
voxel the image does not cover) and stores plain lists in JSON, so the normative model
records the norms in ``metadata.json`` and nothing is unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["HEMISPHERES", "LOGRATIO_SD_FLOOR", "MIN_CONTROLS", "GlobalCoupling", "GlobalLevelNorm", "LogRatioNorm",
           "PETNorms", "cortical_mean", "covered_pet", "hemisphere_levels", "hemisphere_masks", "pet_log_ratios"]

#: SD floor of the controls' log ratios (log units, about 1% uptake): a region whose
#: ratio hardly varies over a few controls must not turn tiny differences into huge z.
LOGRATIO_SD_FLOOR = 0.01
#: Fewest controls whose ratio a norm needs (an SD from two values is meaningless).
MIN_CONTROLS = 3
#: Hemisphere names, in the order of :func:`hemisphere_masks`.
HEMISPHERES = ("left", "right")


def covered_pet(pet: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The PET SUVR as float64 with NaN at voxels it does not cover (0 after preprocessing).

    Parameters
    ----------
    pet : ndarray
        PET SUVR on the model grid (0 where the image does not cover).
    mask : ndarray of bool, optional
        Only these voxels count (e.g. where the subject's z map is finite).
    """
    values = np.asarray(pet, dtype=np.float64)
    keep = np.isfinite(values) & (values != 0)
    if mask is not None:
        keep &= np.asarray(mask, bool)
    return np.where(keep, values, np.nan)


def hemisphere_masks(affine: np.ndarray, cortex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right cortex: voxel centres at MNI x < 0 and x > 0 (the midline plane left out).

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-MNI affine of the grid.
    cortex : ndarray of bool
        Cortical grey matter on the grid (:func:`anomaly.atlas.cortex_mask`).
    """
    cortex = np.asarray(cortex, bool)
    i, j, k = np.indices(cortex.shape, sparse=True)
    a = np.asarray(affine, dtype=np.float64)
    x = a[0, 0] * i + a[0, 1] * j + a[0, 2] * k + a[0, 3]
    return cortex & (x < 0), cortex & (x > 0)


def cortical_mean(pet: np.ndarray, region: np.ndarray) -> float:
    """Mean of the finite values of ``pet`` (NaN = not covered) in ``region``; NaN if none."""
    values = pet[np.asarray(region, bool)]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def pet_log_ratios(region_means: np.ndarray, cortex_mean: float) -> np.ndarray:
    """``log(region mean / cortical mean)``; NaN where either is missing or not positive.

    Parameters
    ----------
    region_means : ndarray
        Mean PET per region over covered voxels (:meth:`anomaly.atlas.RegionStats.means`).
    cortex_mean : float
        The same subject's mean PET over covered cortical grey matter.
    """
    means = np.asarray(region_means, dtype=np.float64)
    if not (math.isfinite(cortex_mean) and cortex_mean > 0):
        return np.full(means.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(means > 0, np.log(means / cortex_mean), np.nan)


def hemisphere_levels(pet: np.ndarray, normative_pet: np.ndarray,
                      sides: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Each hemisphere's cortical mean PET as % of the normative mean image over the same voxels.

    Works on any set of voxels (scoring passes the cortical voxels only, which is
    cheaper than whole grids).

    Parameters
    ----------
    pet : ndarray
        The subject's PET (NaN where not covered).
    normative_pet : ndarray
        The controls' mean SUVR at the same voxels.
    sides : (ndarray, ndarray)
        Left and right cortex masks of the same shape (:func:`hemisphere_masks`).

    Returns
    -------
    dict
        ``{"left": %, "right": %}``; NaN for a hemisphere without a covered voxel.
    """
    covered = np.isfinite(pet)
    out = {}
    for name, side in zip(HEMISPHERES, sides):
        voxels = np.asarray(side, bool) & covered
        if not voxels.any():
            out[name] = math.nan
            continue
        normal = float(np.mean(normative_pet[voxels], dtype=np.float64))
        out[name] = 100.0 * float(np.mean(pet[voxels], dtype=np.float64)) / normal if normal > 0 else math.nan
    return out


def _finite_stats(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, SD (ddof 1) and count of the finite values (NaN when fewer than MIN_CONTROLS)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < MIN_CONTROLS:
        return math.nan, math.nan, int(values.size)
    return float(values.mean()), float(values.std(ddof=1)), int(values.size)


@dataclass(frozen=True)
class LogRatioNorm:
    """The controls' distribution of each region's log ratio to their own cortical mean.

    Attributes
    ----------
    index : ndarray of int
        Atlas region indices.
    mean, sd : ndarray of float
        Mean and SD (ddof 1) of the controls' ratios; NaN where fewer than
        :data:`MIN_CONTROLS` controls cover the region.
    n : ndarray of int
        Controls whose PET covers the region.
    n_voxels : ndarray of int
        The region's voxels on the model grid when the norm was made: a table whose
        regions have other sizes is another atlas, and gets no focal columns.
    """

    index: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    n: np.ndarray
    n_voxels: np.ndarray

    @classmethod
    def from_ratios(cls, index: np.ndarray, n_voxels: np.ndarray, ratios: np.ndarray) -> LogRatioNorm:
        """The norm of a (controls x regions) array of :func:`pet_log_ratios` (NaN = not covered).

        Parameters
        ----------
        index, n_voxels : ndarray of int
            Region indices and sizes (:class:`anomaly.atlas.RegionStats`).
        ratios : ndarray, shape (n_controls, n_regions)
        """
        stats = [_finite_stats(column) for column in np.asarray(ratios, dtype=np.float64).T]
        mean, sd, n = (np.array(v) for v in zip(*stats)) if stats else (np.array([]),) * 3
        return cls(index=np.asarray(index, np.int64), mean=mean.astype(np.float64),
                   sd=sd.astype(np.float64), n=n.astype(np.int64), n_voxels=np.asarray(n_voxels, np.int64))

    @classmethod
    def missing(cls) -> LogRatioNorm:
        """A norm with no region (a model fitted without them, or a user atlas): all n/a."""
        empty = np.array([], dtype=np.int64)
        return cls(index=empty, mean=empty.astype(np.float64), sd=empty.astype(np.float64), n=empty,
                   n_voxels=empty)

    def matches(self, index: np.ndarray, n_voxels: np.ndarray) -> bool:
        """Whether a table's regions (indices and voxel counts) are those of this norm."""
        return np.array_equal(np.asarray(index), self.index) and np.array_equal(np.asarray(n_voxels),
                                                                                self.n_voxels)

    def deviation(self, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(r - mean, (r - mean) / max(sd, LOGRATIO_SD_FLOOR))`` of one subject's ratios."""
        diff = np.asarray(ratios, dtype=np.float64) - self.mean
        return diff, diff / np.maximum(self.sd, LOGRATIO_SD_FLOOR)

    def to_dict(self) -> dict[str, list]:
        """Plain lists for JSON (NaN as None)."""
        return {"index": self.index.tolist(), "mean": _list(self.mean), "sd": _list(self.sd),
                "n": self.n.tolist(), "n_voxels": self.n_voxels.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogRatioNorm:
        """Inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError when malformed."""
        arrays = {k: np.array([math.nan if v is None else v for v in d[k]], dtype=np.float64)
                  for k in ("index", "mean", "sd", "n", "n_voxels")}
        if len({a.shape for a in arrays.values()}) != 1:
            raise ValueError("pet log-ratio norm: lists of different lengths")
        return cls(index=arrays["index"].astype(np.int64), mean=arrays["mean"], sd=arrays["sd"],
                   n=arrays["n"].astype(np.int64), n_voxels=arrays["n_voxels"].astype(np.int64))


@dataclass(frozen=True)
class GlobalLevelNorm:
    """The controls' best-hemisphere and whole-cortex levels (% of the normative mean image).

    Attributes
    ----------
    best_mean, best_sd : float
        Mean and SD of the controls' best-hemisphere level.
    whole_mean, whole_sd : float
        The same for the whole cortex.
    n : int
        Controls with PET.
    """

    best_mean: float
    best_sd: float
    whole_mean: float
    whole_sd: float
    n: int

    @classmethod
    def from_levels(cls, best: np.ndarray, whole: np.ndarray) -> GlobalLevelNorm:
        """From the controls' best-hemisphere and whole-cortex levels (NaN: not measured)."""
        best_mean, best_sd, n = _finite_stats(best)
        whole_mean, whole_sd, _ = _finite_stats(whole)
        return cls(best_mean, best_sd, whole_mean, whole_sd, n)

    def percent_sd(self) -> float:
        """SD of the controls' own percent of their mean (the normal spread, in %)."""
        return 100.0 * self.best_sd / self.best_mean

    def interval(self, percent: float) -> tuple[float, float]:
        """95% interval of a subject's percent from the normative sample.

        ``percent x (1 +- t(0.975, n - 1) x (s / 100) x sqrt(1 + 1/n))`` with ``s`` =
        :meth:`percent_sd`: the spread of one control's level around the controls'
        mean, plus the uncertainty of that mean from ``n`` controls, taken as relative
        to the level.
        """
        from scipy.stats import t

        half = float(t.ppf(0.975, self.n - 1)) * self.percent_sd() / 100.0 * math.sqrt(1.0 + 1.0 / self.n)
        return percent * (1.0 - half), percent * (1.0 + half)

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain numbers for JSON (NaN as None)."""
        return {"best_hemisphere_mean": _num(self.best_mean), "best_hemisphere_sd": _num(self.best_sd),
                "whole_cortex_mean": _num(self.whole_mean), "whole_cortex_sd": _num(self.whole_sd),
                "n": int(self.n)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlobalLevelNorm:
        """Inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError when malformed."""
        def num(key: str) -> float:
            return math.nan if d[key] is None else float(d[key])

        return cls(num("best_hemisphere_mean"), num("best_hemisphere_sd"), num("whole_cortex_mean"),
                   num("whole_cortex_sd"), int(d["n"]))

    def usable(self) -> bool:
        """Whether the norm has a positive mean and a finite SD."""
        return math.isfinite(self.best_mean) and self.best_mean > 0 and math.isfinite(self.best_sd)


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _list(values: np.ndarray) -> list[float | None]:
    return [_num(float(v)) for v in values]


@dataclass(frozen=True)
class PETNorms:
    """Everything a normative model records of its controls' PET levels (``metadata.json``).

    Attributes
    ----------
    log_ratio : dict of str to LogRatioNorm
        Per atlas name (the shipped atlases), the regions' log-ratio norms.
    global_level : GlobalLevelNorm
    """

    log_ratio: dict[str, LogRatioNorm]
    global_level: GlobalLevelNorm

    #: Version of the JSON layout (``metadata.json`` key ``pet_levels``).
    VERSION = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: version, the global norm and one log-ratio norm per atlas."""
        return {"version": self.VERSION, "global_level": self.global_level.to_dict(),
                "log_ratio": {name: norm.to_dict() for name, norm in self.log_ratio.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PETNorms:
        """Inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError when malformed."""
        if d.get("version") != cls.VERSION:
            raise ValueError(f"pet_levels: unknown version {d.get('version')!r}")
        return cls(log_ratio={str(k): LogRatioNorm.from_dict(v) for k, v in d["log_ratio"].items()},
                   global_level=GlobalLevelNorm.from_dict(d["global_level"]))

    def for_atlas(self, name: str, index: np.ndarray, n_voxels: np.ndarray) -> LogRatioNorm | None:
        """The norm of atlas ``name`` if its regions (indices, voxel counts) are the same; else None."""
        norm = self.log_ratio.get(name)
        return norm if norm is not None and norm.matches(index, n_voxels) else None


class GlobalCoupling:
    """Region-specific coupling of the focal log ratios to the global cortical level.

    After proportional scaling a cortical region no longer follows the global level,
    but a region that follows the cortex less (deep grey matter, brainstem) gets a
    *higher* ratio as the cortex falls, which can hide its own damage. Across
    patients, each region's ``pet_focal_logratio`` is regressed on
    ``x = log(global_cortical_pet_percent / 100)`` with the Theil-Sen estimator (the
    median of pairwise slopes: robust to the few patients with focal damage there);
    :meth:`transform` removes ``slope x x``. The controls' level is ``x = 0``, so their
    distribution, and a subject with a normal global level, are unchanged. A slope of
    -1 means that the region does not follow the cortex at all, 0 that it follows it
    fully. Regions with fewer than ``min_subjects`` usable patients keep slope 0.

    Parameters
    ----------
    min_subjects : int
        Fewest patients with both values that a region's slope needs.
    """

    def __init__(self, min_subjects: int = 10) -> None:
        self.min_subjects = min_subjects

    def fit(self, deviation: np.ndarray, global_percent: np.ndarray) -> GlobalCoupling:
        """Fit one slope per region.

        Parameters
        ----------
        deviation : ndarray, shape (n_subjects, n_regions)
            ``pet_focal_logratio`` of the patients (NaN: not measured).
        global_percent : ndarray, shape (n_subjects,)
            Their ``global_cortical_pet_percent`` (NaN: no PET).

        Returns
        -------
        self
        """
        y = np.asarray(deviation, dtype=np.float64)
        x = _log_level(global_percent)
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"deviation: expected shape (n_subjects, n_regions) with n_subjects = {x.shape[0]}, "
                             f"got {y.shape}")
        self.slope_ = np.zeros(y.shape[1])
        self.n_ = np.zeros(y.shape[1], dtype=np.int64)
        i, j = np.triu_indices(x.shape[0], k=1)
        for r in range(y.shape[1]):
            ok = np.isfinite(y[:, r]) & np.isfinite(x)
            self.n_[r] = int(ok.sum())
            if self.n_[r] < self.min_subjects:
                continue
            pair = ok[i] & ok[j] & (x[i] != x[j])
            if pair.any():
                a, b = i[pair], j[pair]
                self.slope_[r] = float(np.median((y[b, r] - y[a, r]) / (x[b] - x[a])))
        return self

    def transform(self, deviation: np.ndarray, global_percent: np.ndarray) -> np.ndarray:
        """``deviation - slope x log(global_percent / 100)`` (unchanged where the level is unknown)."""
        if not hasattr(self, "slope_"):
            raise RuntimeError("this GlobalCoupling is not fitted yet; call fit()")
        x = _log_level(global_percent)
        shift = np.where(np.isfinite(x), x, 0.0)[:, None] * self.slope_[None, :]
        return np.asarray(deviation, dtype=np.float64) - shift

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of the fitted slopes (e.g. for a CRS-R model folder's metadata)."""
        return {"min_subjects": int(self.min_subjects), "slope": self.slope_.tolist(), "n": self.n_.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlobalCoupling:
        """Inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError when malformed."""
        coupling = cls(min_subjects=int(d["min_subjects"]))
        coupling.slope_ = np.asarray(d["slope"], dtype=np.float64)
        coupling.n_ = np.asarray(d["n"], dtype=np.int64)
        if coupling.slope_.ndim != 1 or coupling.slope_.shape != coupling.n_.shape:
            raise ValueError("global coupling: slope and n must be lists of the same length")
        return coupling


def _log_level(global_percent: np.ndarray) -> np.ndarray:
    """``log(percent / 100)``; NaN for a missing or non-positive level."""
    p = np.asarray(global_percent, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p > 0, np.log(p / 100.0), np.nan)
