"""CRS-R model folders: ``metadata.json`` + ``weights.safetensors``.

The weights are loaded without unpickling (safetensors) and checked against the
SHA-256 recorded in the metadata, so a model folder from elsewhere can neither run code
nor be silently altered. The metadata holds everything else needed to predict: the
estimator parameters, the feature/region layout, standardisation statistics, the
conformal radius and the cross-validated metrics it was reported with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from anomaly.io import AnomalyModelError, atomic_path, write_json
from .losses import LossSpec
from .model import EnsembleMILNet, MILRegressor
from .validation import prediction_interval

__all__ = ["FORMAT", "FORMAT_VERSION", "CRSModel", "save_crs_model", "load_crs_model", "sha256_file"]

FORMAT = "anomaly-crs-model"
FORMAT_VERSION = "1.0"
METADATA = "metadata.json"
WEIGHTS = "weights.safetensors"

# Fitted estimator attributes stored in the metadata (arrays as lists).
_STATE = ("feature_names_", "region_index_", "region_names_", "global_feature_names_", "atlas_", "groups_",
          "feature_mean_", "feature_scale_", "global_mean_", "global_scale_", "y_mean_", "y_scale_",
          "calibration_", "n_features_in_")
_ARRAYS = {"region_index_": np.int64, "feature_mean_": np.float64, "feature_scale_": np.float64,
           "global_mean_": np.float64, "global_scale_": np.float64, "calibration_": np.float64}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats -> None (JSON has no NaN/inf)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


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
        Created if needed; ``weights.safetensors`` and ``metadata.json`` are each
        written atomically (metadata last, so a folder with metadata is complete).
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
    from safetensors.torch import save_file

    import anomaly

    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "net_")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = estimator.net_
    tensors = {}
    for name, param in net.named_parameters():
        for s in range(net.n_members):
            # One state dict per ensemble member, prefixed: member000.w_in, ...
            tensors[f"member{s:03d}.{name}"] = param.detach()[s].cpu().contiguous().clone()
    weights = folder / WEIGHTS
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "format_version": FORMAT_VERSION})
    if hasattr(cv_metrics, "to_dict"):
        cv_metrics = cv_metrics.to_dict(orient="records")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anomaly_version": getattr(anomaly, "__version__", "unknown"),
        "torch_version": torch.__version__,
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
        "weights": {"file": WEIGHTS, "sha256": sha256_file(weights)},
        **(dict(extra) if extra else {}),
    }
    write_json(_jsonable(meta), folder / METADATA)
    return folder


def _read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA
    if not path.is_file():
        raise AnomalyModelError(f"{path}: not a CRS model folder (metadata.json missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AnomalyModelError(f"{path}: unreadable model metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AnomalyModelError(f"{path}: not a CRS-R model (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = str(meta.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise AnomalyModelError(f"{path}: model format version {version!r} is not supported (expected {FORMAT_VERSION})")
    return meta


def load_crs_model(folder: str | os.PathLike) -> CRSModel:
    """Load a model folder written by :func:`save_crs_model`.

    Raises
    ------
    anomaly.io.AnomalyModelError
        Missing/unreadable files, an unsupported format version, or weights whose
        SHA-256 differs from the one recorded (tampered or corrupted).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = _read_metadata(folder)
    weights = folder / meta.get("weights", {}).get("file", WEIGHTS)
    if not weights.is_file():
        raise AnomalyModelError(f"{weights}: model weights missing")
    if sha256_file(weights) != meta["weights"].get("sha256"):
        raise AnomalyModelError(f"{weights}: SHA-256 does not match metadata.json (modified or corrupted weights)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError):
        raise AnomalyModelError(f"{weights}: unreadable safetensors file") from None

    try:
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
    except (KeyError, TypeError, ValueError) as exc:
        raise AnomalyModelError(f"{folder / METADATA}: inconsistent model folder ({exc})") from None
    net.eval()
    est.net_ = net
    conformal = meta.get("conformal") or {}
    return CRSModel(
        estimator=est,
        conformal_quantile=conformal.get("quantile"),
        alpha=conformal.get("alpha"),
        mcs_cut=float(meta.get("mcs_cut", 8)),
        atlas=meta.get("atlas"),
        metadata=meta,
        path=folder,
    )
