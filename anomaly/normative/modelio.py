"""Normative model folders, in the toolkit's one model-folder format.

Layout (see :mod:`anomaly.io.modelfolder` for the common schema and checks)::

    MODEL_DIR/metadata.json             kind "normative": versions, grid, modalities,
                                        settings, history, SHA-256s
    MODEL_DIR/calibration.safetensors   calibration maps, standardisation, mask, mean
    MODEL_DIR/weights.safetensors       U-Net weights (method "ae" only)

This module moves (metadata, tensors) between memory and disk and knows nothing of the
estimator: :class:`~anomaly.normative.model.NormativeModel` exports and restores its
own fitted state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly.io import read_model_folder, save_model_folder, save_tensors
from anomaly.io.modelfolder import FORMAT_VERSION, METADATA, sha256

__all__ = ["CALIBRATION", "FORMAT_VERSION", "KIND", "METADATA", "WEIGHTS", "NormativeFiles", "read_metadata",
           "read_normative_folder", "sha256", "write_normative_folder"]

KIND = "normative"
WEIGHTS = "weights.safetensors"
CALIBRATION = "calibration.safetensors"


@dataclass
class NormativeFiles:
    """The content of a normative model folder.

    Attributes
    ----------
    metadata : dict
        ``metadata.json``.
    calibration : dict of ndarray
        Calibration maps (beta, sd, n_subjects), mask, standardisation, control mean.
    weights : dict of torch.Tensor or None
        U-Net state dict (method "ae"), None otherwise.
    path : Path
    """

    metadata: dict[str, Any]
    calibration: dict[str, Any]
    weights: dict[str, Any] | None
    path: Path


def write_normative_folder(folder: str | Path, metadata: Mapping[str, Any],
                           calibration: Mapping[str, Any],
                           weights: Mapping[str, Any] | None = None) -> Path:
    """Write a normative model folder atomically (``metadata.json`` last)."""
    writers = {CALIBRATION: lambda path: save_tensors(calibration, path)}
    if weights is not None:
        writers[WEIGHTS] = lambda path: save_tensors(weights, path)
    return save_model_folder(folder, KIND, metadata, writers)


def read_normative_folder(folder: str | Path) -> NormativeFiles:
    """Read and verify a normative model folder (current or anomaly 0.1.0 layout).

    Raises
    ------
    anomaly.io.AnomalyModelError
        See :func:`anomaly.io.read_model_folder`; also an unreadable tensor file.
    """
    found = read_model_folder(folder, KIND, required=[CALIBRATION])
    method = found.metadata.get("method")
    has_network = method in ("ae", "hybrid", "auto")  # anomaly.normative.hybrid.NETWORK_METHODS
    if has_network:
        found.verify([WEIGHTS])
    calibration = found.tensors(CALIBRATION)
    # torch and MONAI take seconds to import: only autoencoder models need them.
    weights = found.tensors(WEIGHTS, framework="pt") if has_network else None
    return NormativeFiles(metadata=found.metadata, calibration=calibration, weights=weights,
                          path=found.path)


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """Return a model folder's metadata.json (no validation)."""
    import json

    return json.loads((Path(folder) / METADATA).read_text())
