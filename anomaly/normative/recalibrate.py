"""Local recalibration: new z statistics from a few controls of the user's scanner.

A model trained on an open dataset sees a different scanner in the clinic: other
resolution, noise, contrast and bias shift the residuals of healthy brains, and the
z maps of every patient then carry that shift. :func:`recalibrate` re-estimates the
z statistics on a few local controls and leaves the network and the channel
standardisation unchanged:

- the **intercept** of each voxelwise calibration becomes the old one plus the mean
  local offset ``r - prediction`` (the old age and sex slopes are kept: a handful of
  controls cannot estimate them), smoothed like the residuals;
- the **SD** is a weighted mean of the old and the local variance,
  ``(n sd_local^2 + k sd_old^2) / (n + k)`` with ``k = prior_weight`` (8): with few
  local controls the old SD keeps the map stable, with many the local one dominates.

Both components of a network model (``ae`` and ``zscore``) are recalibrated. A
cross-fitted model (:mod:`anomaly.normative.crossfit`) scores each network's residual
against the shared calibration, so its ``ae`` part is re-estimated from the local
controls' residuals under every network: the offset is their mean over controls and
networks, the local variance the mean of the networks' variances across controls
(``n`` stays the number of controls: the networks' residuals of one control are not
independent). The result is a new model (written to a new folder by ``anomaly calibrate``); the input
model is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly.io import AnomalyInputError, Subject
from anomaly.normative.calibration import CalibrationMaps, smooth_in_mask, standardise

__all__ = ["MIN_LOCAL_CONTROLS", "recalibrate"]

#: Fewer local controls give no usable variance.
MIN_LOCAL_CONTROLS = 3


def recalibrate(model: Any, controls: Sequence[Subject], *, prior_weight: float = 8.0,
                progress: bool = False) -> Any:
    """A copy of a fitted model with z statistics from local controls.

    Parameters
    ----------
    model : NormativeModel
        Fitted (or loaded) model; not modified.
    controls : sequence of Subject
        Local healthy controls (group "control"), at least :data:`MIN_LOCAL_CONTROLS`,
        with the model's modalities.
    prior_weight : float, default=8.0
        Weight, in subjects, of the old variance in the new one.
    progress : bool, default=False
        Show a progress bar.

    Returns
    -------
    NormativeModel
        With new ``calibration_`` (and ``voxel_calibration_``) and ``recalibration_``
        (what was done); network and standardisation shared with ``model``.

    Raises
    ------
    AnomalyInputError
        Too few controls, or controls without the model's modalities.
    """
    from tqdm.auto import tqdm

    model._check_fitted()
    controls = [s for s in controls if s.group == "control"]
    if len(controls) < MIN_LOCAL_CONTROLS:
        raise AnomalyInputError(f"calibrate needs at least {MIN_LOCAL_CONTROLS} local controls "
                                f"(group 'control' in participants.tsv); found {len(controls)}")
    kinds = {"ae": "calibration_", "zscore": "voxel_calibration_"} if model.network_ is not None \
        else {"zscore": "calibration_"}
    n_networks = len(getattr(model, "networks_", None) or [0])
    # kind -> per network -> per control: the offsets "r - prediction" ("zscore": one list)
    residuals: dict[str, list[list[np.ndarray]]] = {
        k: [[] for _ in range(n_networks if k == "ae" else 1)] for k in kinds}
    rows = []
    for subject in tqdm(controls, desc="recalibrating", unit="subject", disable=not progress):
        prep = model.preprocess(subject.images)
        if not np.all(prep.present):
            missing = [m for m, p in zip(model.modalities_, prep.present) if not p]
            raise AnomalyInputError(f"sub-{subject.label}: local control lacks {', '.join(missing)}")
        std = standardise(prep.data, prep.present, model.channel_mean_, model.channel_std_, model.mask_)
        for kind, attr in kinds.items():
            prediction = getattr(model, attr).predict(subject.age, subject.sex)
            for j, per_network in enumerate(residuals[kind]):
                network = j if len(residuals[kind]) > 1 else None  # None: the only network, or no network
                per_network.append(model._residual(std, prep.present, kind=kind, network=network) - prediction)
        rows.append(subject.label)
    new = copy.copy(model)
    for kind, attr in kinds.items():
        setattr(new, attr, _updated(getattr(model, attr), np.stack(residuals[kind]), model.mask_,
                                    float(prior_weight), float(model.smooth_sigma)))
    new.recalibration_ = {"n_local_controls": len(rows), "local_labels": rows,
                          "prior_weight": float(prior_weight), "components": list(kinds),
                          "rule": "intercept + mean local offset; SD^2 = (n local + k old) / (n + k)"}
    return new


def _updated(cal: CalibrationMaps, offsets: np.ndarray, mask: np.ndarray, prior_weight: float,
             sigma: float) -> CalibrationMaps:
    """New intercept and pooled SD from local offsets ``r - prediction``, shape (K, N, C, X, Y, Z)
    (K networks, 1 without cross-fitting)."""
    k_networks, n = offsets.shape[:2]
    beta = cal.beta.copy()
    sd = cal.sd.copy()
    for c in range(offsets.shape[2]):
        shift = smooth_in_mask(offsets[:, :, c].mean((0, 1)), mask, sigma)
        beta[0, c] = np.where(mask, beta[0, c] + shift, 0.0)
        local_var = smooth_in_mask(((offsets[:, :, c] - shift) ** 2).sum((0, 1)) / (k_networks * max(n - 1, 1)),
                                   mask, 1.5)
        pooled = (n * local_var + prior_weight * cal.sd[c] ** 2) / (n + prior_weight)
        floor = float(np.quantile(np.sqrt(pooled[mask]), 0.05)) if mask.any() else 1.0
        sd[c] = np.where(mask, np.maximum(np.sqrt(pooled), max(floor, 1e-6)), 1.0)
    return CalibrationMaps(beta=beta.astype(np.float32), sd=sd.astype(np.float32),
                           n_subjects=cal.n_subjects + n, age_ref=cal.age_ref, covariates=cal.covariates)
