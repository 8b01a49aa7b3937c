"""A hypothesis-driven CRS-R baseline: arousal x awareness, seven parameters.

Consciousness needs both arousal and awareness (Laureys 2005). Arousal depends on the
brainstem's ascending reticular activating system and its thalamic relays; awareness on
the cortex: its global metabolic level (Stender et al. 2016) and the fronto-parietal and
posteromedial networks (mesocircuit, Schiff 2010). The baseline writes that down::

    arousal   = a0 - a1 * brainstem - a2 * thalamus
    awareness = b0 + b1 * cortical_level - b2 * posteromedial - b3 * frontal
    CRS-R     = 23 * sigmoid(arousal) * sigmoid(awareness)

where each family term is the subject's mean regional deficit over the family's atlas
regions (``anomaly_mean`` of the region tables, standardised over the training
patients) and ``cortical_level`` the global cortical PET level (``% of normal``). The
slopes are constrained to be non-negative, so more damage never raises the estimate.
With seven parameters it cannot overfit 40-50 patients, and each parameter is a
statement about physiology that a reader can check: it is the reference that a
data-driven regressor has to beat to be worth its parameters.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit
from sklearn.base import BaseEstimator, RegressorMixin

from anomaly.constants import CRS_MAX

from .features import RegionBags, as_region_bags, damage_sign

__all__ = ["FAMILY_PATTERNS", "HypothesisBaseline", "family_deficits"]

#: Region-name patterns (case-insensitive) of each family, for the Neuromorphometrics,
#: AAL and Harvard-Oxford spellings. A family that an atlas lacks (AAL has no
#: brainstem) is imputed with the training mean, i.e. it drops out of the model.
FAMILY_PATTERNS: dict[str, str] = {
    "brainstem": r"brain.?stem|\bpons\b|medulla|midbrain",
    "thalamus": r"thalam",
    "posteromedial": r"precuneus|PCu_|posterior.?cingul|PCgG_|Cingulum_Post|cingulate gyrus, posterior",
    "frontal": r"SFG_|MFG_|MSFG_|superior.?frontal|middle.?frontal|Frontal_Sup|Frontal_Mid",
}
#: Subject-level value used as the cortical level.
CORTICAL_LEVEL = "global_cortical_pet_percent"
#: Names of the seven parameters, in the order of :attr:`HypothesisBaseline.params_`.
PARAMETERS = ("arousal_intercept", "brainstem", "thalamus",
              "awareness_intercept", "cortical_level", "posteromedial", "frontal")


def family_deficits(bags: RegionBags) -> np.ndarray:
    """Per-subject inputs of the model: (N, 5) brainstem, thalamus, posteromedial,
    frontal deficits and the cortical level; NaN where unavailable.

    A region's deficit is its ``anomaly_mean`` (non-negative, higher = more abnormal);
    without that column, the mean of the region's features turned in their damage
    direction (:func:`anomaly.crs.features.damage_sign`: ``-pet_z_mean``,
    ``+FLAIR_z_mean``...; ``|value|`` for a feature without a known direction).
    """
    if "anomaly_mean" in bags.feature_names:
        deficit = bags.features[:, :, bags.feature_names.index("anomaly_mean")].astype(np.float64)
    else:
        signs = np.array([damage_sign(n) for n in bags.feature_names])
        values = bags.features.astype(np.float64)
        oriented = np.where(signs == 0, np.abs(values), values * signs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN regions stay NaN
            deficit = np.nanmean(oriented, axis=2)
    columns = []
    for pattern in FAMILY_PATTERNS.values():
        members = np.array([re.search(pattern, name, re.IGNORECASE) is not None for name in bags.region_names])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            columns.append(np.nanmean(deficit[:, members], axis=1) if members.any()
                           else np.full(len(bags), np.nan))
    level = np.full(len(bags), np.nan)
    if bags.global_features is not None and CORTICAL_LEVEL in bags.global_feature_names:
        level = bags.global_features[:, bags.global_feature_names.index(CORTICAL_LEVEL)].astype(np.float64)
    return np.column_stack([*columns, level])


def _predict(params: np.ndarray, X: np.ndarray) -> np.ndarray:
    a0, a1, a2, b0, b1, b2, b3 = params
    arousal = a0 - a1 * X[:, 0] - a2 * X[:, 1]
    awareness = b0 + b1 * X[:, 4] - b2 * X[:, 2] - b3 * X[:, 3]
    return CRS_MAX * expit(arousal) * expit(awareness)


class HypothesisBaseline(RegressorMixin, BaseEstimator):
    """Arousal x awareness model of the CRS-R with sign-constrained slopes.

    Parameters
    ----------
    loss : str, default="soft_l1"
        Robust loss of :func:`scipy.optimize.least_squares`; "soft_l1" behaves like the
        absolute error (what the MAE scores) beyond ``f_scale`` points and is smooth
        below, so a few mislabelled patients do not pull the fit.
    f_scale : float, default=2.0
        CRS-R points where the loss turns from squared to linear (about the rater's
        measurement error).

    Attributes
    ----------
    params_ : ndarray, shape (7,)
        In the order of :data:`PARAMETERS`; the five slopes are >= 0.
    mean_, scale_ : ndarray, shape (5,)
        Standardisation of the inputs (training patients).
    """

    def __init__(self, loss: str = "soft_l1", f_scale: float = 2.0) -> None:
        self.loss = loss
        self.f_scale = f_scale

    def _design(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        z = (family_deficits(as_region_bags(bags)) - self.mean_) / self.scale_
        return np.where(np.isfinite(z), z, 0.0)  # missing -> training mean

    def fit(self, bags: RegionBags | np.ndarray, y: Sequence[float], y_sd: Any = None) -> HypothesisBaseline:
        """Fit the seven parameters by robust least squares (``y_sd`` is ignored)."""
        raw = family_deficits(as_region_bags(bags))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a family absent from the atlas
            mean, std = np.nanmean(raw, 0), np.nanstd(raw, 0)
        self.mean_ = np.where(np.isfinite(mean), mean, 0.0)
        self.scale_ = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        X = self._design(bags)
        y = np.asarray(y, dtype=float)
        # Start from "everyone at the mean score" with mild effects of the right sign.
        p_mean = np.clip(y.mean() / CRS_MAX, 0.05, 0.95)
        start = np.array([2.0, 0.5, 0.5, np.log(p_mean / (1.02 - p_mean)), 0.5, 0.5, 0.5])
        lower = np.array([-np.inf, 0, 0, -np.inf, 0, 0, 0])
        fit = least_squares(lambda p: _predict(p, X) - y, start, bounds=(lower, np.inf), loss=self.loss,
                            f_scale=self.f_scale)
        self.params_ = fit.x
        return self

    def predict(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        """CRS-R estimates in [0, 23]."""
        return _predict(self.params_, self._design(bags))

    def coefficients(self) -> dict[str, float]:
        """The fitted parameters by name (slopes per training-SD of their input)."""
        return {name: float(v) for name, v in zip(PARAMETERS, self.params_)}
