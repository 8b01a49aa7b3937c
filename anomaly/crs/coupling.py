"""Region-specific coupling of the focal PET features to the global cortical level.

The focal PET log ratio (``pet_focal_logratio``: a region's PET over the subject's own
cortical mean, against the controls) removes the global level from cortical regions,
but a region that follows the cortex less (deep grey matter, brainstem, cerebellum)
gets a *higher* ratio as the cortex falls, which hides its own damage in the patients
with the lowest level. :class:`anomaly.atlas.petlevels.GlobalCoupling` estimates, per
region and robustly (Theil-Sen), how much the ratio moves with
``log(global_cortical_pet_percent / 100)`` across patients, and removes it.

Here that step belongs to the CRS-R regressor: :func:`fit_coupling` is called in
``MILRegressor.fit`` on the training bags only, :func:`apply_coupling` in fit and
predict (with the slopes of the training bags: predicting never refits), and the
slopes are saved in the model folder as plain JSON.

Which value is corrected
    Every region feature whose name starts with ``pet_focal_logratio`` gets its own
    slopes, fitted on that feature. For the default input, the z
    (``pet_focal_logratio_z``), this is the same as correcting the ratio before its
    z: the z is the ratio's deviation divided by a per-region constant (the
    controls' SD), and the Theil-Sen slope (a median of pairwise slopes) scales with
    it, so ``z - slope_z x`` equals ``(r - slope_r x) / sd`` exactly. Correcting
    the z directly needs neither the controls' SDs (they live in the normative
    model, which the regressor never sees) nor another column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from anomaly.atlas.petlevels import GlobalCoupling

from .features import RegionBags

__all__ = ["COUPLED_PREFIX", "LEVEL_NAME", "apply_coupling", "coupling_from_dict", "coupling_to_dict",
           "fit_coupling", "global_level"]

#: Region features corrected for the global level (names starting with this).
COUPLED_PREFIX = "pet_focal_logratio"
#: Subject-level value the coupling is fitted against.
LEVEL_NAME = "global_cortical_pet_percent"


def global_level(bags: RegionBags) -> np.ndarray:
    """Each bag's ``global_cortical_pet_percent`` (NaN where unknown or not among its values).

    Parameters
    ----------
    bags : RegionBags
        Bags with or without subject-level values.
    """
    if bags.global_features is None or LEVEL_NAME not in bags.global_feature_names:
        return np.full(len(bags), np.nan)
    return bags.global_features[:, bags.global_feature_names.index(LEVEL_NAME)].astype(np.float64)


def fit_coupling(bags: RegionBags, level: np.ndarray, *, min_subjects: int = 10) -> dict[str, GlobalCoupling]:
    """One fitted :class:`GlobalCoupling` per focal PET feature of the (training) bags.

    Parameters
    ----------
    bags : RegionBags
        Training bags (patients), regions in the estimator's order.
    level : ndarray, shape (N,)
        Their global cortical PET level in % (:func:`global_level`).
    min_subjects : int, default=10
        Fewest bags with both values that a region's slope needs (else slope 0).

    Returns
    -------
    dict
        Feature name -> fitted coupling; empty when the bags have no focal PET feature
        or no known level (nothing to correct, e.g. a cohort without PET).
    """
    if not np.isfinite(level).any():
        return {}
    return {name: GlobalCoupling(min_subjects=min_subjects).fit(bags.feature(name).astype(np.float64), level)
            for name in bags.feature_names if name.startswith(COUPLED_PREFIX)}


def apply_coupling(bags: RegionBags, level: np.ndarray, couplings: Mapping[str, GlobalCoupling]) -> RegionBags:
    """The bags with each coupled feature corrected by its fitted slopes.

    Parameters
    ----------
    bags : RegionBags
        Regions in the order the couplings were fitted on.
    level : ndarray, shape (N,)
        The bags' global level (NaN: unknown, left uncorrected).
    couplings : mapping
        From :func:`fit_coupling`; features the bags lack are skipped.

    Returns
    -------
    RegionBags
        A copy (the input is not modified); the same object when there is nothing to do.
    """
    names = [n for n in couplings if n in bags.feature_names]
    if not names:
        return bags
    features = bags.features.copy()
    for name in names:
        j = bags.feature_names.index(name)
        if couplings[name].slope_.shape != (features.shape[1],):
            raise ValueError(f"global coupling of {name}: {couplings[name].slope_.size} slopes for "
                             f"{features.shape[1]} regions")
        features[:, :, j] = couplings[name].transform(features[:, :, j], level)
    return RegionBags(participant_ids=list(bags.participant_ids), features=features, missing=bags.missing,
                      region_index=bags.region_index, region_names=list(bags.region_names),
                      feature_names=list(bags.feature_names), global_features=bags.global_features,
                      global_feature_names=list(bags.global_feature_names), atlas=bags.atlas)


def coupling_to_dict(couplings: Mapping[str, GlobalCoupling] | None) -> dict[str, Any]:
    """Plain JSON of fitted couplings (feature name -> slopes and counts)."""
    return {name: c.to_dict() for name, c in (couplings or {}).items()}


def coupling_from_dict(record: Mapping[str, Any] | None) -> dict[str, GlobalCoupling]:
    """Inverse of :func:`coupling_to_dict` (None: a model folder written before the coupling).

    Raises
    ------
    KeyError, TypeError, ValueError
        A malformed record.
    """
    return {str(name): GlobalCoupling.from_dict(d) for name, d in (record or {}).items()}
