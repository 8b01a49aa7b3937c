"""Normative model folders: metadata.json + safetensors, loaded without unpickling.

Layout::

    MODEL_DIR/metadata.json             versions, grid, modalities, settings, SHA-256s
    MODEL_DIR/calibration.safetensors   calibration maps, standardisation, mask, mean
    MODEL_DIR/weights.safetensors       U-Net weights (method "ae" only)

safetensors files hold raw tensors and a JSON header, nothing executable; the SHA-256
recorded in metadata.json is checked before a file is parsed, so a tampered or truncated
file is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np

from anomaly import __version__
from anomaly.io import AnomalyModelError, atomic_path, write_json

#: Bumped when the folder layout changes incompatibly.
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
CALIBRATION = "calibration.safetensors"
METADATA = "metadata.json"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model, folder: Path) -> Path:
    """Write a fitted :class:`~anomaly.normative.model.NormativeModel` to ``folder``."""
    import monai
    import torch
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    folder.mkdir(parents=True, exist_ok=True)
    cal = model.calibration_
    arrays = {
        "beta": cal.beta, "sd": cal.sd, "n_subjects": cal.n_subjects.astype(np.int64),
        "mask": model.mask_.astype(np.uint8), "channel_mean": model.channel_mean_,
        "channel_std": model.channel_std_, "control_mean": model.control_mean_,
    }
    with atomic_path(folder / CALIBRATION) as tmp:
        save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    files = [CALIBRATION]
    if model.network_ is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.network_.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_torch(state, str(tmp))
        files.append(WEIGHTS)
    params = model.get_params()
    params["modalities"] = list(model.modalities_)
    params["channels"] = list(params["channels"])
    metadata = {
        "format_version": FORMAT_VERSION,
        "toolkit": "anomaly", "toolkit_version": __version__,
        "torch_version": torch.__version__, "monai_version": monai.__version__,
        "python_version": platform.python_version(),
        "method": model.method,
        "modalities": list(model.modalities_),
        "grid": {"shape": list(model.grid_.shape), "affine": np.asarray(model.grid_.affine).tolist(),
                 "resolution": float(model.grid_.resolution), "space": "MNI152NLin2009cAsym"},
        "normalisation": {"mri": "robust z (median, IQR/1.349) in the template brain mask",
                          "pet": f"SUVR, reference {model.pet_reference}",
                          "channel_mean": model.channel_mean_.tolist(),
                          "channel_std": model.channel_std_.tolist()},
        "calibration": {"covariates": ["age", "sex"] if cal.covariates else [],
                        "age_ref": cal.age_ref, "n_subjects": cal.n_subjects.tolist(),
                        "smooth_sigma_voxels": model.smooth_sigma},
        "training": params,
        "history": model.history_,
        "data": model.train_summary_,
        "files": {name: sha256(folder / name) for name in files},
    }
    write_json(metadata, folder / METADATA)
    return folder


def load_model(folder: Path, *, device: str = "cpu"):
    """Load and verify a model folder; see the module docstring for what is checked."""
    from safetensors.numpy import load_file as load_numpy

    from anomaly.normative.calibration import CalibrationMaps
    from anomaly.normative.model import NormativeModel
    from anomaly.preprocess import Grid

    if not folder.is_dir():
        problem = "is a file; expected a model folder" if folder.exists() else "model folder not found"
        raise AnomalyModelError(f"{folder}: {problem}")
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise AnomalyModelError(f"{meta_path}: missing; not an anomaly model folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnomalyModelError(f"{meta_path}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(meta, dict) or meta.get("toolkit") != "anomaly":
        raise AnomalyModelError(f"{meta_path}: not an anomaly normative model")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise AnomalyModelError(
            f"{meta_path}: model format version {version!r} is not supported by anomaly "
            f"{__version__} (expects {FORMAT_VERSION}); refit the model with this version")
    files = meta.get("files", {})
    required = [CALIBRATION] + ([WEIGHTS] if meta.get("method") == "ae" else [])
    for name in required:
        path = folder / name
        if not path.is_file():
            raise AnomalyModelError(f"{path}: missing from the model folder")
        expected = files.get(name)
        if expected is None or sha256(path) != expected:
            raise AnomalyModelError(
                f"{path}: SHA-256 does not match metadata.json; the file is corrupt or was modified")
    try:
        arrays = load_numpy(str(folder / CALIBRATION))
    except Exception as exc:  # safetensors raises its own error types
        raise AnomalyModelError(f"{folder / CALIBRATION}: unreadable ({exc})") from None

    params = dict(meta["training"])
    params["device"] = device
    model = NormativeModel(**params)
    grid = meta["grid"]
    model.grid_ = Grid(shape=tuple(grid["shape"]), affine=np.asarray(grid["affine"]),
                       resolution=float(grid["resolution"]))
    model.modalities_ = list(meta["modalities"])
    model.mask_ = arrays["mask"].astype(bool)
    model.channel_mean_ = arrays["channel_mean"]
    model.channel_std_ = arrays["channel_std"]
    model.control_mean_ = arrays["control_mean"]
    cal = meta["calibration"]
    model.calibration_ = CalibrationMaps(beta=arrays["beta"], sd=arrays["sd"],
                                         n_subjects=arrays["n_subjects"], age_ref=float(cal["age_ref"]),
                                         covariates=bool(cal["covariates"]))
    model.covariates_ = bool(cal["covariates"])
    model.history_ = meta.get("history", [])
    model.train_summary_ = meta.get("data", {})
    model.n_train_ = model.train_summary_.get("n_train", 0)
    model.n_calibration_ = model.train_summary_.get("n_calibration", 0)
    model.network_ = None
    if model.method == "ae":
        # torch and MONAI take seconds to import: only autoencoder models need them.
        from safetensors.torch import load_file as load_torch

        from anomaly.normative.network import build_network

        try:
            state = load_torch(str(folder / WEIGHTS))
        except Exception as exc:
            raise AnomalyModelError(f"{folder / WEIGHTS}: unreadable ({exc})") from None
        network = build_network(len(model.modalities_), params["channels"])
        try:
            network.load_state_dict(state)
        except RuntimeError:
            raise AnomalyModelError(
                f"{folder / WEIGHTS}: weights do not fit the network described in metadata.json") from None
        from anomaly.normative.trainer import resolve_device

        model.device_ = resolve_device(device)
        model.network_ = network.eval().to(model.device_)
    return model
