"""CRS-R model folders, in the toolkit's one model-folder format.

Layout (see :mod:`anomaly.io.modelfolder` for the common schema and checks)::

    CRS_DIR/metadata.json         kind "crs": estimator parameters, feature/region layout,
                                  standardisation, conformal radius, cross-validated
                                  metrics, SHA-256 of the weights
    CRS_DIR/weights.safetensors   one state dict per ensemble member (member000.<name>...)

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
          "calibration_", "n_features_in_")
_ARRAYS = {"region_index_": np.int64, "feature_mean_": np.float64, "feature_scale_": np.float64,
           "global_mean_": np.float64, "global_scale_": np.float64, "calibration_": np.float64}


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
    """

    estimator: MILRegressor
    conformal_quantile: float | None = None
    alpha: float | None = None
    mcs_cut: float = 8
    atlas: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def predict_interval(self, bags: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prediction, lower and upper bound (clipped to 0..23; NaN without calibration)."""
        pred = self.estimator.predict(bags)
        if self.conformal_quantile is None:
            nan = np.full_like(pred, np.nan)
            return pred, nan, nan
        lo, hi = prediction_interval(pred, self.conformal_quantile)
        return pred, lo, hi


def save_crs_model(estimator: MILRegressor, folder: str | os.PathLike, *, conformal_quantile: float | None = None,
                   alpha: float | None = None, mcs_cut: float = 8, cv_metrics: Any = None,
                   extra: Mapping[str, Any] | None = None) -> Path:
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

    Returns
    -------
    Path
        The folder.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "net_")
    net = estimator.net_
    tensors = {}
    for name, param in net.named_parameters():
        for s in range(net.n_members):
            # One state dict per ensemble member, prefixed: member000.w_in, ...
            tensors[f"member{s:03d}.{name}"] = param.detach()[s].cpu().contiguous().clone()
    if hasattr(cv_metrics, "to_dict"):
        cv_metrics = cv_metrics.to_dict(orient="records")
    meta = {
        "estimator": "MILRegressor",
        "params": estimator.get_params(),
        "network": {"n_members": net.n_members, "n_inputs": int(net.w_in.shape[1]),
                    "n_regions": int(estimator.region_index_.size), "n_globals": int(net.n_globals),
                    "heads": list(net.heads), "parameters_per_member": estimator.n_parameters()},
        "state": {k: getattr(estimator, k) for k in _STATE},
        "atlas": estimator.atlas_,
        "feature_names": list(estimator.feature_names_),
        "regions": {"index": estimator.region_index_, "name": list(estimator.region_names_)},
        "standardisation": {"feature_mean": estimator.feature_mean_, "feature_scale": estimator.feature_scale_,
                            "global_mean": estimator.global_mean_, "global_scale": estimator.global_scale_},
        "conformal": {"quantile": conformal_quantile, "alpha": alpha},
        "mcs_cut": mcs_cut,
        "cv_metrics": cv_metrics,
        **(dict(extra) if extra else {}),
    }
    header = {"format": FORMAT, "kind": KIND, "format_version": str(FORMAT_VERSION)}
    return save_model_folder(folder, KIND, meta,
                             {WEIGHTS: lambda path: save_tensors(tensors, path, header=header)})


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
        est.net_ = _network_from(meta, est, tensors).eval()
    except (KeyError, TypeError, ValueError) as exc:
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
    )


def _estimator_from(meta: Mapping[str, Any]) -> MILRegressor:
    """The estimator with its parameters and fitted state, network not yet attached."""
    est = MILRegressor(**meta["params"])
    state = meta["state"]
    for k in _STATE:
        v = state[k]
        if k in _ARRAYS:
            v = np.asarray(v, dtype=_ARRAYS[k])
            if k in ("global_mean_", "global_scale_", "feature_mean_", "feature_scale_"):
                v = v.reshape(-1)
        setattr(est, k, v)
    est.calibration_ = np.asarray(state["calibration_"], dtype=np.float64).reshape(-1, 2)
    return est


def _network_from(meta: Mapping[str, Any], est: MILRegressor, tensors: dict[str, torch.Tensor]) -> EnsembleMILNet:
    """The ensemble network described in the metadata, with the saved member weights."""
    netinfo = meta["network"]
    spec = LossSpec.parse(est.loss, est.loss_weights)
    if list(netinfo["heads"]) != spec.heads:
        raise ValueError("heads do not match the loss")
    n_members = int(netinfo["n_members"])
    net = EnsembleMILNet(
        n_members=n_members, n_inputs=int(netinfo["n_inputs"]), n_regions=int(netinfo["n_regions"]),
        n_globals=int(netinfo["n_globals"]), hidden=int(est.hidden), region_embedding=int(est.region_embedding),
        attention_dim=int(est.attention_dim), dropout=float(est.dropout), heads=netinfo["heads"],
        seeds=list(range(n_members)),
    )
    with torch.no_grad():
        for name, param in net.named_parameters():
            stacked = torch.stack([tensors.pop(f"member{s:03d}.{name}") for s in range(n_members)])
            if stacked.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(stacked.shape)} != {tuple(param.shape)}")
            param.copy_(stacked)
    if tensors:
        raise ValueError(f"unexpected tensors {sorted(tensors)[:3]}")
    return net
