"""Covariate-aware voxelwise calibration of residuals into z maps.

Both normative methods end the same way: for every healthy calibration subject we have a
residual map ``r`` per modality (for the z-score model the image itself, for the
autoencoder the image minus its reconstruction). Each voxel gets a small linear model

    r_v = b0_v + b_age,v * (age - age_ref) / 10 + b_sex,v * [sex == "M"] + e_v,

fitted by ordinary least squares, and a residual standard deviation ``sd_v``. A new
subject's z map is ``(r - prediction) / sd``. This is the voxelwise analogue of the
covariate-aware normative models of PCNtoolkit (which fit such models on regional
features). The sums needed by least squares are accumulated one subject at a time, so
memory does not grow with the cohort.

Standard deviations from a few dozen subjects are noisy voxel by voxel; they are
floored, and smoothed when there are few of them (see
:meth:`VoxelwiseLinearModel.finalise`), so that a voxel that happened to vary little
cannot produce huge z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from anomaly.preprocess.separable import gaussian_smooth

#: Years per unit of the age covariate; keeps the normal equations well conditioned.
AGE_SCALE = 10.0
#: Residual degrees of freedom from which SD maps are used unsmoothed.
MIN_RAW_SD_DOF = 12
#: Smoothing (voxels) of the variance maps of smaller calibration sets.
SMALL_SAMPLE_SD_SIGMA = 1.5
#: Calibration subjects from which ``covariates="auto"`` models age and sex. On the
#: realistic detection benchmark (4 mm, seed 0) the zscore method's focal AUPRC with
#: and without covariates was 0.542 / 0.725 from 20 controls, 0.559 / 0.678 from 29
#: and 0.706 / 0.709 from 39: three coefficients per voxel from a few dozen subjects
#: cost more than the age effect they remove (the threshold was 10 before).
COVARIATE_MIN_SUBJECTS = 40


def design_row(age: float | None, sex: str | None, *, age_ref: float, covariates: bool) -> np.ndarray:
    """Return the design row [1, age, sex] (or [1]) of one subject.

    Missing age is replaced by the reference age and missing sex by the average
    effect (0.5), so that such subjects are scored with the population mean.
    """
    if not covariates:
        return np.ones(1)
    age_term = 0.0 if age is None or not np.isfinite(age) else (float(age) - age_ref) / AGE_SCALE
    if sex in ("M", "F"):
        sex_term = 1.0 if sex == "M" else 0.0
    else:
        sex_term = 0.5
    return np.array([1.0, age_term, sex_term])


@dataclass
class CalibrationMaps:
    """Fitted voxelwise linear model for every channel.

    Attributes
    ----------
    beta : ndarray, shape (P, C, X, Y, Z)
        Regression coefficients (intercept first) per channel and voxel.
    sd : ndarray, shape (C, X, Y, Z)
        Smoothed, floored residual standard deviation.
    n_subjects : ndarray, shape (C,)
        Calibration subjects that had each channel.
    age_ref : float
        Age subtracted before scaling.
    covariates : bool
        Whether age and sex are in the model.
    """

    beta: np.ndarray
    sd: np.ndarray
    n_subjects: np.ndarray
    age_ref: float
    covariates: bool

    def predict(self, age: float | None, sex: str | None) -> np.ndarray:
        """Expected residual maps, shape (C, X, Y, Z), for a subject's covariates."""
        row = design_row(age, sex, age_ref=self.age_ref, covariates=self.covariates)
        return np.tensordot(row.astype(np.float32), self.beta, axes=(0, 0))

    def zmap(self, residual: np.ndarray, age: float | None, sex: str | None) -> np.ndarray:
        """Signed z maps ``(residual - expected) / sd``, shape (C, X, Y, Z)."""
        return ((residual - self.predict(age, sex)) / self.sd).astype(np.float32)


class VoxelwiseLinearModel:
    """Streaming least-squares fit of residual maps on age and sex.

    Parameters
    ----------
    shape : tuple of int
        ``(C, X, Y, Z)`` of the residual maps.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; voxels outside get z = 0.
    covariates : bool
        Model age and sex; without them the model is a voxelwise mean and SD.
    age_ref : float
        Centre of the age covariate (e.g. the median training age).
    """

    def __init__(self, shape: tuple[int, ...], mask: np.ndarray, *, covariates: bool = True,
                 age_ref: float = 50.0) -> None:
        self.shape = tuple(shape)
        self.mask = np.asarray(mask, bool)
        self.covariates = covariates
        self.age_ref = float(age_ref)
        p = 3 if covariates else 1
        n_channels = self.shape[0]
        # Per channel: X'X (P x P), X'y (P maps), y'y (one map), count.
        self._xtx = np.zeros((n_channels, p, p))
        self._xty = np.zeros((n_channels, p) + self.shape[1:], dtype=np.float64)
        self._yty = np.zeros(self.shape, dtype=np.float64)
        self._count = np.zeros(n_channels, dtype=int)

    def add(self, residual: np.ndarray, present: np.ndarray, age: float | None, sex: str | None) -> None:
        """Accumulate one subject's residual maps (channels with ``present`` False are skipped)."""
        row = design_row(age, sex, age_ref=self.age_ref, covariates=self.covariates)
        for c in np.flatnonzero(present):
            y = residual[c].astype(np.float64)
            self._xtx[c] += np.outer(row, row)
            self._xty[c] += row[:, None, None, None] * y
            self._yty[c] += y * y
            self._count[c] += 1

    def without(self, residual: np.ndarray, present: np.ndarray, age: float | None,
                sex: str | None) -> VoxelwiseLinearModel:
        """A copy with one subject's contribution removed (exact leave-one-out sums).

        The subject must have been added with the same residual maps; the self-check
        uses it to score a calibration control out of sample without refitting.
        """
        out = VoxelwiseLinearModel(self.shape, self.mask, covariates=self.covariates, age_ref=self.age_ref)
        out._xtx, out._xty, out._yty = self._xtx.copy(), self._xty.copy(), self._yty.copy()
        out._count = self._count.copy()
        row = design_row(age, sex, age_ref=self.age_ref, covariates=self.covariates)
        for c in np.flatnonzero(present):
            y = residual[c].astype(np.float64)
            out._xtx[c] -= np.outer(row, row)
            out._xty[c] -= row[:, None, None, None] * y
            out._yty[c] -= y * y
            out._count[c] -= 1
        return out

    def finalise(self, *, smooth_sigma: float | None = None,
                 sd_floor_quantile: float = 0.05) -> CalibrationMaps:
        """Solve the normal equations and return floored (and, with few subjects, smoothed) SD maps.

        Parameters
        ----------
        smooth_sigma : float, optional
            Gaussian sigma (voxels) applied to the variance map inside the mask. Default:
            :data:`SMALL_SAMPLE_SD_SIGMA` when a channel has fewer than
            :data:`MIN_RAW_SD_DOF` residual degrees of freedom, else 0. On the realistic
            detection benchmark (16 and 40 controls, 4 mm) the raw voxelwise SD gave a
            higher focal AUPRC than SDs smoothed with 0.75 or 1.5 voxels (it keeps the
            high variance at tissue edges, where misregistration lives), but from 10
            controls its z maps of held-out controls spread too widely (SD up to 1.7).
        sd_floor_quantile : float
            SDs below this within-brain quantile are raised to it, so that a voxel that
            happened to vary little in the calibration set cannot produce huge z.

        Returns
        -------
        CalibrationMaps
        """
        n_channels, p = self._xtx.shape[:2]
        beta = np.zeros((p,) + self.shape, dtype=np.float32)
        sd = np.ones(self.shape, dtype=np.float32)
        for c in range(n_channels):
            n = self._count[c]
            if n <= p:
                raise ValueError(
                    f"calibration needs more than {p} subjects with channel {c}; got {n}")
            # Ridge on the covariates only, a tiny bit, so a cohort of one sex stays solvable.
            xtx = self._xtx[c] + np.diag([0.0] + [1e-3] * (p - 1))
            inv = np.linalg.inv(xtx)
            b = np.tensordot(inv, self._xty[c], axes=(1, 0))  # (P, X, Y, Z)
            # RSS = y'y - 2 b'X'y + b'X'X b, all per voxel.
            rss = self._yty[c] - 2 * np.sum(b * self._xty[c], axis=0) \
                + np.einsum("ixyz,ij,jxyz->xyz", b, self._xtx[c], b)
            var = np.clip(rss, 0, None) / (n - p)
            sigma = smooth_sigma if smooth_sigma is not None else (
                SMALL_SAMPLE_SD_SIGMA if n - p < MIN_RAW_SD_DOF else 0.0)
            var = smooth_in_mask(var, self.mask, sigma)
            s = np.sqrt(var)
            inside = s[self.mask]
            floor = float(np.quantile(inside, sd_floor_quantile)) if inside.size else 1.0
            floor = max(floor, 1e-6)
            s = np.where(self.mask, np.maximum(s, floor), 1.0)
            beta[:, c] = np.where(self.mask, b, 0.0)
            sd[c] = s
        return CalibrationMaps(beta=beta, sd=sd, n_subjects=self._count.copy(),
                               age_ref=self.age_ref, covariates=self.covariates)


#: Edge (mm) of the PET peak search of the voxelwise component (``pet_peak_search=None``):
#: about the residual misregistration of a registered cortex (4-7 mm) either side; 3D-SSP
#: searches 6 voxels of 2.25 mm (13.5 mm) along the cortical normal.
PET_PEAK_MM = 12.0


def peak_search_in_mask(values: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """Local maximum over a cube of ``size`` voxels, inside a mask; zero outside.

    The volumetric analogue of the peak search of 3D-SSP (Minoshima et al., J Nucl Med
    1995): every voxel takes the highest uptake within half a window, so that a cortical
    ribbon shifted by a few mm of residual misregistration, or thinned by atrophy, still
    shows its own uptake, and the controls' voxelwise SD no longer holds the
    misregistration. Hypometabolism wider than the window survives; a hypometabolic spot
    narrower than it is filled in by its neighbours (a structural lesion stays visible in
    MRI).

    Parameters
    ----------
    values : ndarray, shape (X, Y, Z)
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels outside it neither take nor give a maximum.
    size : int
        Edge of the cube (voxels); 1 or less returns the masked input.

    Returns
    -------
    ndarray, same dtype as ``values``
    """
    if size <= 1:
        return np.where(mask, values, 0.0).astype(values.dtype)
    below = np.where(mask, values, np.finfo(np.float32).min)
    peak = ndimage.maximum_filter(below, size=int(size), mode="nearest")
    return np.where(mask, peak, 0.0).astype(values.dtype)


def smooth_in_mask(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing restricted to a mask (normalised convolution); zero outside.

    Plain smoothing would blur the zeros outside the brain into its edge.
    """
    if sigma <= 0:
        return np.where(mask, values, 0.0).astype(values.dtype)
    maskf = mask.astype(np.float32)
    num = gaussian_smooth(values * maskf, sigma)  # scipy's gaussian_filter, as matrix products
    den = _smoothed_mask(mask, float(sigma))
    return np.where(mask, num / den, 0.0).astype(values.dtype)


_SMOOTHED_MASKS: dict[tuple, np.ndarray] = {}


def _smoothed_mask(mask: np.ndarray, sigma: float) -> np.ndarray:
    """``max(gaussian_filter(mask), 1e-6)``, cached: scoring smooths every channel of
    every subject inside the same brain mask."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    key = (mask.shape, sigma, hash(mask.tobytes()))
    den = _SMOOTHED_MASKS.get(key)
    if den is None:
        den = np.maximum(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 1e-6)
        den.setflags(write=False)
        if len(_SMOOTHED_MASKS) >= 8:
            _SMOOTHED_MASKS.clear()
        _SMOOTHED_MASKS[key] = den
    return den


def standardise(data: np.ndarray, present: np.ndarray, mean: np.ndarray, std: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
    """Per-channel ``(x - mean) / std`` inside the brain; zero outside and where absent.

    Lives here (numpy only) rather than in :mod:`anomaly.normative.data` so that scoring
    with a z-score model never imports torch.
    """
    out = (data - mean.reshape(-1, 1, 1, 1)) / std.reshape(-1, 1, 1, 1)
    out *= mask
    out[~np.asarray(present, bool)] = 0.0
    return out.astype(np.float32, copy=False)
