"""CRS-R model folders, in the toolkit's one model-folder format.

Layout (see :mod:`anomaly.io.modelfolder` for the common schema and checks)::

    CRS_DIR/metadata.json         kind "crs": estimator parameters, feature/region layout,
                                  standardisation, conformal radius, cross-validated
                                  metrics, SHA-256 of the weights
    CRS_DIR/weights.safetensors   one state dict per ensemble member (member000.<name>...),
                                  and per cross-validation fold model kept for CV+
                                  intervals (fold000.member000.<name>...)

The weights are loaded without unpickling (safetensors) and checked against the
SHA-256 recorded in the metadata, so a model folder from elsewhere can neither run code
nor be silently altered. Folders of anomaly 0.1.0 (``format: "anomaly-crs-model"``,
``"1.0"``, ``weights{file, sha256}``) still load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly.io import (
    AnomalyModelError,
    read_model_folder,
    save_model_folder,
    save_tensors,
)
from anomaly.io.modelfolder import FORMAT, FORMAT_VERSION, METADATA, sha256

from .conformal import CVPlusIntervals
from .coupling import coupling_from_dict, coupling_to_dict
from .losses import LossSpec
from .model import EnsembleMILNet, MILRegressor
from .validation import prediction_interval

__all__ = ["FORMAT", "FORMAT_VERSION", "KIND", "CRSModel", "load_crs_model", "save_crs_model", "sha256_file"]

KIND = "crs"
WEIGHTS = "weights.safetensors"
#: The one SHA-256 helper, under its earlier name here.
sha256_file = sha256

# Fitted estimator attributes stored in the metadata (arrays as lists).
_STATE = ("feature_names_", "region_index_", "region_names_", "global_feature_names_", "atlas_", "groups_",
          "feature_mean_", "feature_scale_", "global_mean_", "global_scale_", "y_mean_", "y_scale_",
          "calibration_", "n_features_in_", "region_descriptors_", "global_coupling_")
_ARRAYS = {"region_index_": np.int64, "feature_mean_": np.float64, "feature_scale_": np.float64,
           "global_mean_": np.float64, "global_scale_": np.float64, "calibration_": np.float64,
           "region_descriptors_": np.float32}
# State added after the first format: its value in folders written before.
_STATE_DEFAULTS = {"region_descriptors_": None, "global_coupling_": None}
# Parameters added after the first format: the value that reproduces older folders.
_PARAM_DEFAULTS = {"architecture": "gated", "standardise": "pooled", "region_prior": "geometry",
                   "modality_dropout": 0.0, "global_coupling": False}
# What differs between the fold models of one cross-validation (their layout is the
# final model's: same regions, features and groups).
_FOLD_STATE = ("feature_mean_", "feature_scale_", "global_mean_", "global_scale_", "y_mean_", "y_scale_",
               "calibration_", "global_coupling_")
# State kept as objects in the estimator and as plain JSON in the metadata.
_TO_JSON = {"global_coupling_": coupling_to_dict}
_FROM_JSON = {"global_coupling_": coupling_from_dict}


@dataclass
class CRSModel:
    """A loaded CRS-R model folder.

    Attributes
    ----------
    estimator : MILRegressor
        Fitted, ready to ``predict`` / ``attention``.
    conformal_quantile : float or None
        Half-width of the conformal prediction interval (None if not calibrated).
    alpha : float or None
        Its miscoverage level.
    mcs_cut : float
        CRS-R cut between "UWS-like" and "MCS-like" predictions.
    atlas : str or None
    metadata : dict
        The full metadata.json.
    path : Path or None
    cv_plus : CVPlusIntervals or None
        Fold models and residuals of the cross-validation (folders written by
        ``fit-crs`` since CV+ intervals; None in older folders, which keep the
        symmetric interval ``prediction +- conformal_quantile``).
    """

    estimator: MILRegressor
    conformal_quantile: float | None = None
    alpha: float | None = None
    mcs_cut: float = 8
    atlas: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    cv_plus: CVPlusIntervals | None = None

    def predict_interval(self, bags: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prediction, lower and upper bound (clipped to 0..23; NaN without calibration).

        With fold models the bounds are CV+ (:mod:`anomaly.crs.conformal`), widened if
        needed to contain the final model's prediction (widening keeps the coverage).
        """
        pred = self.estimator.predict(bags)
        if self.cv_plus is not None:
            lo, hi = self.cv_plus.interval(bags)
            return pred, np.minimum(lo, pred), np.maximum(hi, pred)
        if self.conformal_quantile is None:
            nan = np.full_like(pred, np.nan)
            return pred, nan, nan
        lo, hi = prediction_interval(pred, self.conformal_quantile)
        return pred, lo, hi


def save_crs_model(estimator: MILRegressor, folder: str | os.PathLike, *, conformal_quantile: float | None = None,
                   alpha: float | None = None, mcs_cut: float = 8, cv_metrics: Any = None,
                   extra: Mapping[str, Any] | None = None, cv_plus: CVPlusIntervals | None = None) -> Path:
    """Write a fitted :class:`MILRegressor` to a model folder.

    Parameters
    ----------
    estimator : MILRegressor
        Fitted.
    folder : path
        Created if needed; written atomically by :func:`anomaly.io.save_model_folder`
        (``metadata.json`` last, so a folder with metadata is complete).
    conformal_quantile, alpha : float, optional
        From :func:`anomaly.crs.validation.conformal_quantile`.
    mcs_cut : float, default=8
    cv_metrics : DataFrame or list of dict, optional
        Cross-validated metrics to keep with the model.
    extra : mapping, optional
        More JSON-serialisable metadata (e.g. training inputs).
    cv_plus : CVPlusIntervals, optional
        Fold models and residuals for CV+ intervals (:attr:`CVResult.cv_plus`).

    Returns
    -------
    Path
        The folder.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "net_")
    record, tensors = _estimator_record(estimator, "")
    if hasattr(cv_metrics, "to_dict"):
        cv_metrics = cv_metrics.to_dict(orient="records")
    meta = {
        "estimator": "MILRegressor",
        **record,
        "state": _state_record(estimator, _STATE),
        "atlas": estimator.atlas_,
        "feature_names": list(estimator.feature_names_),
        "regions": {"index": estimator.region_index_, "name": list(estimator.region_names_)},
        "standardisation": {"feature_mean": estimator.feature_mean_, "feature_scale": estimator.feature_scale_,
                            "global_mean": estimator.global_mean_, "global_scale": estimator.global_scale_},
        "conformal": {"quantile": conformal_quantile, "alpha": alpha,
                      "method": "cv+" if cv_plus is not None else "cv residuals around the final model"},
        "mcs_cut": mcs_cut,
        "cv_metrics": cv_metrics,
        **(dict(extra) if extra else {}),
    }
    if cv_plus is not None:
        meta["cv_plus"] = _cv_plus_record(cv_plus, tensors)
    header = {"format": FORMAT, "kind": KIND, "format_version": str(FORMAT_VERSION)}
    return save_model_folder(folder, KIND, meta,
                             {WEIGHTS: lambda path: save_tensors(tensors, path, header=header)})


def _estimator_record(estimator: MILRegressor, prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parameters and network description of a fitted estimator, and its member weights."""
    net = estimator.net_
    tensors = {}
    for name, param in net.named_parameters():
        for s in range(net.n_members):
            # One state dict per ensemble member, prefixed: member000.w_in, ...
            tensors[f"{prefix}member{s:03d}.{name}"] = param.detach()[s].cpu().contiguous().clone()
    n_inputs = len(estimator.feature_names_) + len(estimator.groups_)  # values + missing flags
    record = {"params": estimator.get_params(),
              "network": {"n_members": net.n_members, "n_inputs": n_inputs,
                          "n_regions": int(estimator.region_index_.size),
                          "n_globals": 2 * len(estimator.global_feature_names_),
                          "heads": list(net.heads), "parameters_per_member": estimator.n_parameters()}}
    return record, tensors


def _cv_plus_record(cv_plus: CVPlusIntervals, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Metadata of the CV+ fold models (their weights are added to ``tensors``)."""
    folds = []
    for k, model in enumerate(cv_plus.fold_models):
        record, fold_tensors = _estimator_record(model, f"fold{k:03d}.")
        record["state"] = _state_record(model, _FOLD_STATE)
        folds.append(record)
        tensors.update(fold_tensors)
    return {"alpha": cv_plus.alpha, "fold_of": [int(k) for k in cv_plus.fold_of],
            "residuals": {g: [float(v) for v in r] for g, r in cv_plus.residuals.items()}, "folds": folds}


def load_crs_model(folder: str | os.PathLike) -> CRSModel:
    """Load a model folder written by :func:`save_crs_model`.

    Raises
    ------
    anomaly.io.AnomalyModelError
        Missing/unreadable files, an unsupported format version, or weights whose
        SHA-256 differs from the one recorded (tampered or corrupted).
    """
    found = read_model_folder(folder, KIND, required=[WEIGHTS])
    meta, tensors = found.metadata, found.tensors(WEIGHTS, framework="pt")
    try:
        est = _estimator_from(meta)
        est.net_ = _network_from(meta, est, tensors, "").eval()
        cv_plus = _cv_plus_from(meta["cv_plus"], est, tensors) if "cv_plus" in meta else None
        if tensors:
            raise ValueError(f"unexpected tensors {sorted(tensors)[:3]}")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise AnomalyModelError(f"{found.path / METADATA}: inconsistent model folder ({exc})") from None
    conformal = meta.get("conformal") or {}
    return CRSModel(
        estimator=est,
        conformal_quantile=conformal.get("quantile"),
        alpha=conformal.get("alpha"),
        mcs_cut=float(meta.get("mcs_cut", 8)),
        atlas=meta.get("atlas"),
        metadata=meta,
        path=found.path,
        cv_plus=cv_plus,
    )


def _estimator_from(meta: Mapping[str, Any]) -> MILRegressor:
    """The estimator with its parameters and fitted state, network not yet attached."""
    est = MILRegressor(**{**_PARAM_DEFAULTS, **meta["params"]})
    _set_state(est, meta["state"], _STATE)
    return est


def _state_record(est: MILRegressor, keys: tuple[str, ...]) -> dict[str, Any]:
    """Fitted attributes ``keys`` of ``est`` as JSON-ready values."""
    return {k: _TO_JSON[k](getattr(est, k, None)) if k in _TO_JSON else getattr(est, k) for k in keys}


def _set_state(est: MILRegressor, state: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        v = state[k] if k in state or k not in _STATE_DEFAULTS else _STATE_DEFAULTS[k]
        if k in _FROM_JSON:
            v = _FROM_JSON[k](v)
            if k == "global_coupling_" and any(c.slope_.size != len(est.region_index_) for c in v.values()):
                raise ValueError("global coupling: one slope per region expected")
        if k in _ARRAYS and v is not None:
            v = np.asarray(v, dtype=_ARRAYS[k])
            if k in ("global_mean_", "global_scale_"):
                v = v.reshape(-1)
            elif k in ("feature_mean_", "feature_scale_"):
                v = v.reshape(-1, len(est.feature_names_))  # (1, F) pooled or (R, F) per region
            elif k == "region_descriptors_":
                v = v.reshape(len(est.region_index_), -1)
        setattr(est, k, v)
    est.calibration_ = np.asarray(state["calibration_"], dtype=np.float64).reshape(-1, 2)


def _cv_plus_from(record: Mapping[str, Any], final: MILRegressor,
                  tensors: dict[str, torch.Tensor]) -> CVPlusIntervals:
    """The fold models (the final model's layout, their own state and weights) and residuals."""
    models = []
    for k, fold in enumerate(record["folds"]):
        est = MILRegressor(**{**_PARAM_DEFAULTS, **fold["params"]})
        _set_state(est, _state_record(final, _STATE), _STATE)  # the shared layout
        _set_state(est, fold["state"], _FOLD_STATE)
        est.net_ = _network_from(fold, est, tensors, f"fold{k:03d}.").eval()
        models.append(est)
    fold_of = np.asarray(record["fold_of"], dtype=int)
    if fold_of.min(initial=0) < 0 or fold_of.max(initial=0) >= len(models):
        raise ValueError("cv_plus: fold_of refers to a missing fold")
    residuals = {g: np.asarray(r, dtype=float) for g, r in record["residuals"].items()}
    if any(r.shape != fold_of.shape for r in residuals.values()):
        raise ValueError("cv_plus: residuals and fold_of differ in length")
    return CVPlusIntervals(fold_models=models, fold_of=fold_of, residuals=residuals, alpha=float(record["alpha"]))


def _network_from(meta: Mapping[str, Any], est: MILRegressor, tensors: dict[str, torch.Tensor],
                  prefix: str) -> EnsembleMILNet:
    """The ensemble network described in ``meta``, with its member weights popped from ``tensors``."""
    netinfo = meta["network"]
    spec = LossSpec.parse(est.loss, est.loss_weights)
    if list(netinfo["heads"]) != spec.heads:
        raise ValueError("heads do not match the loss")
    n_members = int(netinfo["n_members"])
    net = est._build_network(n_members=n_members, n_inputs=int(netinfo["n_inputs"]),
                             n_regions=int(netinfo["n_regions"]), n_globals=int(netinfo["n_globals"]),
                             heads=netinfo["heads"], seeds=list(range(n_members)))
    with torch.no_grad():
        for name, param in net.named_parameters():
            stacked = torch.stack([tensors.pop(f"{prefix}member{s:03d}.{name}") for s in range(n_members)])
            if stacked.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(stacked.shape)} != {tuple(param.shape)}")
            param.copy_(stacked)
    return net
