"""Cross-fitted calibration of the autoencoder: K networks, every control out of sample.

With one network (``cross_fit=1``) the autoencoder trains on most controls and its
residuals are calibrated on the few it never saw (8 of 30), so its voxelwise SD maps
rest on few subjects. With ``cross_fit`` K >= 2 the controls fall into K folds
(:func:`anomaly.normative.controls.split_controls`); network k trains on every fold but
k, and each control's residual ``x - f_k(x)`` comes from the one network that did not
train on it. The calibration of the autoencoder then uses all controls, as the
voxelwise z-score does. K = 2 costs about one network trained on every control: each
of the two sees half the controls for the same epochs.

Scoring rule, and why the z maps stay honest. A new subject is out of sample for every
network, exactly as a fold-k control is for network k, so each network's z map
``z_k = (r_k - prediction) / sd`` under the shared calibration is a calibrated z: for a
healthy subject its SD is about 1. Their mean is more stable (the networks' own
errors partly cancel) but spreads less: with residuals ``r_k = c + e_k`` (``c`` what no
network reconstructs, ``e_k`` the network's own error) its variance is ``var(c) +
var(e) / K`` against ``var(c) + var(e)`` in the calibration (the plain mean's SD was
0.78 on three unseen simulated controls). Calibrating the mean directly would need subjects
unseen by two networks, which cross-fitting does not leave. So
:func:`ensemble_z` rescales the mean, per subject and channel, to the networks' own
average spread over the brain: ``mean_k z_k * sqrt(mean_k var(z_k) / var(mean_k z_k))``.
The voxels of a subject rank as in the plain mean, and a healthy subject's z has the
spread the out-of-sample calibration gives each network (``tests/test_crossfit.py``:
SD 0.90 on average on three unseen simulated controls, against 1.42 for the single
split calibrated on three). A lesion raises the maps' shared part, so a patient's
factor tends to be nearer 1 than a healthy subject's.

The self-check injects lesions into the controls of fold 0 and scores them with
network 0 alone (the only one that did not see them), against the leave-one-out
calibration; the ensemble that scores new subjects is, if anything, slightly better.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly.normative.controls import ControlSplit

__all__ = ["WEIGHT_PREFIX", "NetworkRun", "ensemble_z", "network_runs", "self_check_inputs", "split_weights",
           "stack_weights"]

#: Prefix of network k's tensors in ``weights.safetensors`` of a cross-fitted model.
WEIGHT_PREFIX = "network{k}."


@dataclass(frozen=True)
class NetworkRun:
    """One network to train: its index, controls, and names for files and progress.

    Attributes
    ----------
    index : int
    train, calibration : ndarray of int
        Control indices it trains on and validates on (its held-out fold).
    tag : str
        Names its checkpoint and log (:func:`anomaly.normative.trainer.run_files`):
        empty for the first, so that a single network keeps the historical names.
    label : str
        Progress-bar prefix ("network 2/3"; empty for a single network).
    """

    index: int
    train: np.ndarray
    calibration: np.ndarray
    tag: str
    label: str


def network_runs(split: ControlSplit) -> list[NetworkRun]:
    """The networks a split asks for: one (single split) or one per fold.

    Parameters
    ----------
    split : ControlSplit
        From :func:`~anomaly.normative.controls.split_controls`.
    """
    if not split.folds:
        return [NetworkRun(0, split.train, split.calibration, "", "")]
    k_total = len(split.folds)
    return [NetworkRun(k, split.fold_train(k), fold, "" if k == 0 else f"network{k + 1}",
                       f"network {k + 1}/{k_total}") for k, fold in enumerate(split.folds)]


def stack_weights(states: Sequence[dict]) -> dict:
    """One flat state dict for ``weights.safetensors``: unchanged for one network,
    keys prefixed ``network{k}.`` for several.

    Parameters
    ----------
    states : sequence of dict
        The networks' state dicts, in fold order.
    """
    if len(states) == 1:
        return dict(states[0])
    return {WEIGHT_PREFIX.format(k=k) + name: t for k, state in enumerate(states) for name, t in state.items()}


def split_weights(weights: dict, n_networks: int) -> list[dict]:
    """Inverse of :func:`stack_weights`.

    Parameters
    ----------
    weights : dict
        The flat state dict read from ``weights.safetensors``.
    n_networks : int
        ``cross_fit`` recorded in metadata.json (1 for folders written before it).

    Raises
    ------
    KeyError
        A network's tensors are missing (the caller names the file).
    """
    if n_networks == 1:
        return [weights]
    out = []
    for k in range(n_networks):
        prefix = WEIGHT_PREFIX.format(k=k)
        state = {name[len(prefix):]: t for name, t in weights.items() if name.startswith(prefix)}
        if not state:
            raise KeyError(f"no tensors for network {k + 1} of {n_networks}")
        out.append(state)
    if sum(len(s) for s in out) != len(weights):
        raise KeyError(f"tensors beyond the {n_networks} networks recorded")
    return out


def self_check_inputs(model: Any, cached: Sequence[Any], split: ControlSplit) -> tuple[Any, list]:
    """The model and held-out controls the self-check scores.

    Single split: the model itself and its calibration controls. Cross-fitted: a
    shallow copy that reconstructs with network 0 only, and the controls of fold 0
    (out of sample for network 0 alone).

    Parameters
    ----------
    model : NormativeModel
        Fitted up to its calibration.
    cached : sequence of CachedSubject
        Every control, in the split's indexing.
    split : ControlSplit
    """
    if not split.folds:
        return model, [cached[i] for i in split.calibration]
    view = copy.copy(model)
    view.networks_ = [model.networks_[0]]
    view.network_ = model.networks_[0]
    return view, [cached[i] for i in split.folds[0]]


def ensemble_z(z_networks: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Mean of the networks' calibrated z maps, rescaled to their own spread.

    Each network's z map of an unseen subject is calibrated out of sample, so its
    spread over the brain is what the calibration promises; their mean spreads less
    (the networks' own errors partly cancel). Per channel, the mean is multiplied by
    ``sqrt(mean_k var(z_k) / var(mean_k z_k))`` over the mask, which gives it the
    networks' average spread: a healthy subject keeps z maps of SD about 1, and the
    voxels rank as in the plain mean.

    Parameters
    ----------
    z_networks : sequence of ndarray, shape (C, X, Y, Z)
        One calibrated z map per network (zero outside the mask).
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    ndarray, shape (C, X, Y, Z), float32
    """
    stack = np.stack(z_networks)
    mean = stack.mean(axis=0)
    if len(z_networks) == 1:
        return mean.astype(np.float32)
    for c in range(mean.shape[0]):
        var_mean = float(np.var(mean[c][mask]))
        if var_mean > 0:  # an absent channel is all zero: nothing to rescale
            mean[c] *= np.sqrt(float(np.mean([np.var(z[c][mask]) for z in stack])) / var_mean)
    return mean.astype(np.float32)
