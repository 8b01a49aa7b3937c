"""CV+ prediction intervals (Barber, Candes, Ramdas and Tibshirani 2021), per missing modality.

Cross-validation leaves every training patient ``i`` out of exactly one fold ``k(i)``;
the model of that fold, ``mu_k``, never saw ``i``, so ``R_i = |y_i - mu_k(i)(x_i)|`` is an
honest residual. For a new patient ``x`` the CV+ interval is::

    [ q_lo{ mu_k(i)(x) - R_i },  q_hi{ mu_k(i)(x) + R_i } ]   over i = 1..n

with ``q_lo`` the ``floor(alpha (n + 1))``-th smallest and ``q_hi`` the
``ceil((1 - alpha)(n + 1))``-th smallest value. It covers the new label with
probability at least ``1 - 2 alpha`` whatever the model (about ``1 - alpha`` in
practice), unlike residuals of the CV models placed around a model refitted on
everyone, which has no guarantee. The fold models are kept in the model folder.

Missing modalities. A patient without PET is predicted from less, so the residuals
that describe their error are those of training patients predicted *without* their
PET: during cross-validation each held-out patient is also predicted with each
modality group hidden (exactly as a missing modality is presented: NaN values, the
subject-level values named after the modality too), and a new patient's interval uses
the residuals of their own missing pattern. If modalities are missing at random, the
coverage holds per pattern; the interval of a patient without PET is then wider, as
it should be. Several missing groups use the largest of their residuals (wider,
conservative).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly.constants import CRS_MAX, LESION_SIGN

from .features import RegionBags, feature_group

__all__ = ["CVPlusIntervals", "cv_plus_bounds", "hide_groups", "missing_groups", "modality_groups"]

#: Feature group present whatever modalities a subject has (the combined anomaly).
ALWAYS_PRESENT = "anomaly"
#: Residual pattern of a patient predicted from everything they have.
OBSERVED = ""


def modality_groups(bags: RegionBags) -> list[str]:
    """Modality groups a missing scan removes: the region-feature groups but ``anomaly``
    (``pet`` for ``pet_z_mean``...), and known modalities named in subject-level values
    (``pet`` for ``global_cortical_pet_percent``)."""
    groups = [g for g in dict.fromkeys(feature_group(n) for n in bags.feature_names) if g != ALWAYS_PRESENT]
    for name in bags.global_feature_names:
        groups += [t for t in name.split("_") if t in LESION_SIGN and t not in groups]
    return groups


def _columns(bags: RegionBags, group: str) -> tuple[list[int], list[int]]:
    """Region-feature and subject-level columns of a modality group."""
    region = [j for j, n in enumerate(bags.feature_names) if feature_group(n) == group]
    subject = [j for j, n in enumerate(bags.global_feature_names) if group in n.split("_")]
    return region, subject


def hide_groups(bags: RegionBags, groups: Iterable[str]) -> RegionBags:
    """A copy of ``bags`` in which the modality ``groups`` are missing for every subject.

    Region features of the group (``pet_z_mean``...) and subject-level values that name
    it (``global_cortical_pet_percent``) become NaN, as for a subject without the scan.
    (The combined ``anomaly_*`` columns cannot be recomputed from a table: they keep the
    modality's contribution, so a hidden modality is missing a little less than a scan
    that was never acquired.)
    """
    out = bags.subset(np.arange(len(bags)))
    for group in groups:
        region, subject = _columns(out, group)
        out.features[:, :, region] = np.nan
        out.missing[:, :, region] = True
        if out.global_features is not None and subject:
            out.global_features[:, subject] = np.nan
    return out


def missing_groups(bags: RegionBags, groups: Sequence[str]) -> list[frozenset[str]]:
    """For each subject, the modality groups of ``groups`` it lacks entirely."""
    out = []
    for n in range(len(bags)):
        lacking = set()
        for group in groups:
            region, subject = _columns(bags, group)
            gone = [bags.missing[n][:, region].all()] if region else []
            if subject and bags.global_features is not None:
                gone.append(bool(np.isnan(bags.global_features[n, subject]).all()))
            if gone and all(gone):
                lacking.add(group)
        out.append(frozenset(lacking))
    return out


def cv_plus_bounds(fold_predictions: np.ndarray, residuals: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """CV+ bounds from each training patient's fold-model prediction and residual.

    Parameters
    ----------
    fold_predictions : ndarray (n, M)
        ``mu_k(i)(x_m)``: the prediction for new subject ``m`` of the model that left
        training patient ``i`` out.
    residuals : ndarray (n, M) or (n,)
        ``R_i`` (per new subject when their missing patterns differ).
    alpha : float
        Miscoverage in (0, 1).

    Returns
    -------
    lower, upper : ndarray (M,)
        ``-inf`` / ``+inf`` where n is too small for the level (the caller clips).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    mu = np.asarray(fold_predictions, dtype=float)
    r = np.asarray(residuals, dtype=float)
    r = np.broadcast_to(r[:, None] if r.ndim == 1 else r, mu.shape)
    n = mu.shape[0]
    k_lo = math.floor(alpha * (n + 1))
    k_hi = math.ceil((1 - alpha) * (n + 1))
    low = np.sort(mu - r, axis=0)[k_lo - 1] if k_lo >= 1 else np.full(mu.shape[1], -np.inf)
    high = np.sort(mu + r, axis=0)[k_hi - 1] if k_hi <= n else np.full(mu.shape[1], np.inf)
    return low, high


@dataclass
class CVPlusIntervals:
    """What a CV+ interval needs: the fold models and the out-of-fold residuals.

    Attributes
    ----------
    fold_models : list
        Fitted estimators (``predict(bags) -> (M,)``), one per fold.
    fold_of : ndarray of int (n,)
        Index in ``fold_models`` of the model that left training patient ``i`` out.
    residuals : dict
        Missing pattern -> ``|y_i - mu_k(i)(x_i)|`` (n,): ``""`` with everything the
        patient has, ``"pet"`` with the PET group hidden, etc.
    alpha : float
        Miscoverage (0.1: 90% intervals).
    """

    fold_models: list[Any]
    fold_of: np.ndarray
    residuals: dict[str, np.ndarray]
    alpha: float

    def _residuals_for(self, lacking: frozenset[str]) -> np.ndarray:
        known = [self.residuals[g] for g in sorted(lacking) if g in self.residuals]
        return np.max(known, axis=0) if known else self.residuals[OBSERVED]

    def interval(self, bags: RegionBags) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds for each bag, clipped to 0..23."""
        per_fold = np.stack([np.asarray(m.predict(bags), dtype=float) for m in self.fold_models])  # (K, M)
        mu = per_fold[np.asarray(self.fold_of, dtype=int)]  # (n, M)
        patterns = missing_groups(bags, [g for g in self.residuals if g != OBSERVED])
        r = np.stack([self._residuals_for(p) for p in patterns], axis=1)  # (n, M)
        low, high = cv_plus_bounds(mu, r, self.alpha)
        return np.clip(low, 0, CRS_MAX), np.clip(high, 0, CRS_MAX)
