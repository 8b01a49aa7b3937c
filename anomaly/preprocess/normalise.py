"""Intensity normalisation: MRI by a robust z-score in the brain, PET as SUVR to a reference region.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomaly.io import AnomalyInputError

# -------------------------------------------------------------- normalisation


def _check_mask(data: np.ndarray, mask: np.ndarray | None, what: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != data.shape:
        raise AnomalyInputError(
            f"{what}: shape {mask.shape} does not match the data shape {data.shape}"
        )
    return mask.astype(bool)


def _valid_voxels(
    data: np.ndarray, brain_mask: np.ndarray, valid: np.ndarray | None
) -> np.ndarray:
    # Zeros inside the brain are voxels the image does not cover (outside its field
    # of view, or removed by skull stripping): they carry no intensity information.
    covered = np.isfinite(data) & (data != 0)
    return brain_mask & covered if valid is None else brain_mask & valid & covered


def normalise_mri(
    data: np.ndarray,
    brain_mask: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    name: str = "data",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Robust standardisation of an MRI volume inside the brain.

    Parameters
    ----------
    data : numpy.ndarray
        Intensities on the grid.
    brain_mask : numpy.ndarray of bool
        Brain mask, same shape.
    valid : numpy.ndarray of bool, optional
        Voxels that the image covers. Default: finite, non-zero voxels.
    name : str, default="data"
        Name used in error messages (e.g. the image file).

    Returns
    -------
    array : numpy.ndarray
        float32 ``(data - median) / (IQR / 1.349)`` over the valid brain voxels
        (for a normal distribution the scale is its standard deviation); 0
        outside the brain and at uncovered voxels (0 is the typical value, so gaps
        do not look abnormal).
    info : dict
        ``median``, ``scale`` and ``n_voxels`` (valid brain voxels).

    Raises
    ------
    AnomalyInputError
        If no brain voxel is valid or the intensities have no spread.
    """
    data = np.asarray(data, dtype=np.float32)
    brain = _check_mask(data, brain_mask, "brain_mask")
    good = _valid_voxels(data, brain, _check_mask(data, valid, "valid"))
    values = data[good].astype(np.float64)
    if values.size == 0:
        raise AnomalyInputError(f"{name}: no non-zero voxel inside the brain mask")
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        raise AnomalyInputError(
            f"{name}: intensities inside the brain have no spread (interquartile range 0)"
        )
    out = np.zeros_like(data)
    out[good] = ((values - median) / scale).astype(np.float32)
    return out, {"median": float(median), "scale": float(scale), "n_voxels": int(values.size)}


def normalise_pet(
    data: np.ndarray,
    brain_mask: np.ndarray,
    reference_mask: np.ndarray | None = None,
    *,
    valid: np.ndarray | None = None,
    name: str = "data",
) -> tuple[np.ndarray, dict[str, Any]]:
    """PET standardised uptake value ratio (SUVR) inside the brain.

    Parameters
    ----------
    data : numpy.ndarray
        PET uptake on the grid.
    brain_mask : numpy.ndarray of bool
        Brain mask, same shape.
    reference_mask : numpy.ndarray of bool, optional
        Reference region (e.g. cerebellum), same shape; it is intersected with the
        brain and the valid voxels. None: the whole brain ("global" normalisation).
    valid : numpy.ndarray of bool, optional
        Voxels that the image covers. Default: finite, non-zero voxels.
    name : str, default="data"
        Name used in error messages (e.g. the image file).

    Returns
    -------
    array : numpy.ndarray
        float32 ``data / mean(data in the reference)`` on valid brain voxels, 0
        elsewhere.
    info : dict
        ``reference_value`` (the mean) and ``reference_voxels`` (its voxel count).

    Raises
    ------
    AnomalyInputError
        If the reference region has no valid voxel or a non-positive mean.
    """
    data = np.asarray(data, dtype=np.float32)
    brain = _check_mask(data, brain_mask, "brain_mask")
    good = _valid_voxels(data, brain, _check_mask(data, valid, "valid"))
    reference = good if reference_mask is None else good & _check_mask(
        data, reference_mask, "reference_mask"
    )
    region = "the brain" if reference_mask is None else "the PET reference region"
    n_ref = int(reference.sum())
    if n_ref == 0:
        raise AnomalyInputError(f"{name}: the image covers no voxel of {region}")
    value = float(data[reference].astype(np.float64).mean())
    if not value > 0:
        raise AnomalyInputError(
            f"{name}: mean uptake in {region} is {value:g}; expected a positive value"
        )
    out = np.zeros_like(data)
    out[good] = data[good] / np.float32(value)
    return out, {"reference_value": value, "reference_voxels": n_ref}
